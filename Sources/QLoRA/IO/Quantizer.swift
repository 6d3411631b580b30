import Foundation
import Quant

/// `qlora quantize`: turns a GGUF file or a Hugging Face folder into qlora's frozen 4-bit
/// base, streaming tensor by tensor (peak memory ≈ one fp32 tensor and its quantized bytes;
/// the source's pages are released as it goes).
///
/// - nf4 / fp4 → a folder as transformers + bitsandbytes save a 4-bit model: config.json with
///   `quantization_config`, model.safetensors with bitsandbytes' quant-state tensors, and the
///   tokenizer files. Names and q/k row order are Hugging Face's.
/// - q4_0 / q4_1 / q8_0 → a GGUF file (from a GGUF source): ggml's names and layout, all
///   metadata (tokenizer, chat template) carried over; tensors already in the target type are
///   copied as they are, never requantized.
/// Linear weights are quantized. In a GGUF output norms and biases stay F32 and embeddings and
/// the LM head are stored as `embeddings` says; in a bitsandbytes folder every unquantized
/// tensor (embeddings, LM head, norms, biases) takes the dtype `embeddings` resolves to, since
/// transformers needs them to agree (qlora computes norms in fp32 whatever their storage).
public enum Quantizer {
    public struct Options: Sendable {
        public var format: QuantFormat
        public var blockSize: Int?
        public var doubleQuant: Bool
        public var embeddings: EmbeddingStorage

        public init(format: QuantFormat, blockSize: Int? = nil, doubleQuant: Bool = true, embeddings: EmbeddingStorage = .keep) {
            self.format = format
            self.blockSize = blockSize
            self.doubleQuant = doubleQuant
            self.embeddings = embeddings
        }
    }

    /// How the token embeddings and the LM head (and, in a bitsandbytes folder, every other
    /// unquantized tensor) are stored. `keep`: as the source stores the embeddings where the
    /// output container can hold that (bitsandbytes folders hold F32, F16 and BF16; other types
    /// become F32).
    public enum EmbeddingStorage: String, CaseIterable, Sendable {
        case keep, f32, f16, bf16
    }

    public enum Progress: Sendable {
        case tensor(index: Int, count: Int, name: String, from: String, to: String, elapsed: Double)
    }

    public struct Report: Sendable {
        public var output: String
        public var tensors: Int
        public var outputBytes: Int
        public var seconds: Double
        public var peakRSSBytes: Int
    }

    public static func run(source path: String, output: String, options: Options, progress: (Progress) -> Void) throws -> Report {
        let start = Date()
        let source = try ModelSource(path: path)
        let bytes: Int
        if options.format.isGGML {
            guard let gguf = source.gguf else { throw QuantizerError.ggmlNeedsGGUFSource(format: options.format) }
            bytes = try writeGGUF(gguf, source: source, output: output, options: options, start: start, progress: progress)
        } else {
            // Staged and renamed in whole: a full disk or a kill never leaves a folder that looks finished.
            var written = 0
            try StagedOutput.Directory(for: output).write { tmp in
                written = try writeBitsandbytesFolder(source, output: tmp, options: options, start: start, progress: progress)
            }
            bytes = written
        }
        return Report(output: output, tensors: source.tensors.count, outputBytes: bytes,
                      seconds: Date().timeIntervalSince(start), peakRSSBytes: RuntimeMemory.peakRSS())
    }

    // MARK: bitsandbytes folder

    /// `tensors` (the source's by default) with values from `load` (the source's); `quantized`
    /// sees each linear's values and what they became.
    static func writeBitsandbytesFolder(_ source: ModelSource, tensors: [ModelSource.Tensor]? = nil, output: String, options: Options,
                                        start: Date, load: ((ModelSource.Tensor) throws -> [Float])? = nil,
                                        quantized: (ModelSource.Tensor, [Float], QuantizedMatrix) throws -> Void = { _, _, _ in },
                                        progress: (Progress) -> Void) throws -> Int {
        let blockSize = options.blockSize ?? options.format.defaultBlockSize
        let load = load ?? source.load
        try FileManager.default.createDirectory(atPath: output, withIntermediateDirectories: true)
        // Plan every tensor's entries first: the safetensors header needs all sizes up front.
        let plain = plainDType(source, options: options)
        var plan: [(tensor: ModelSource.Tensor, specs: [SafetensorsWriter.TensorSpec], to: String)] = []
        for t in tensors ?? source.tensors {
            if t.role.isLinear, t.shape.count == 2 {
                try options.format.validate(blockSize: blockSize, cols: t.shape[1])
                plan.append((t, BitsandbytesWeights.specs(name: t.name, rows: t.shape[0], cols: t.shape[1], format: options.format,
                                                          blockSize: blockSize, doubleQuant: options.doubleQuant, dtype: plain.torchName),
                             options.format.rawValue + (options.doubleQuant ? "+dq" : "")))
            } else {
                plan.append((t, [.init(name: t.name, dtype: plain, shape: t.shape)], plain.rawValue))
            }
        }
        var writer = SafetensorsWriter()
        writer.tensors = plan.flatMap(\.specs)
        var pending: [[UInt8]] = []
        var next = 0
        try writer.write(to: (output as NSString).appendingPathComponent("model.safetensors")) { _ in
            if pending.isEmpty {
                let (t, _, to) = plan[next]
                progress(.tensor(index: next, count: plan.count, name: t.name, from: t.storage, to: to, elapsed: Date().timeIntervalSince(start)))
                let values = try load(t)
                if t.role.isLinear, t.shape.count == 2 {
                    let m = try QuantizedMatrix(quantizing: values, rows: t.shape[0], cols: t.shape[1], format: options.format,
                                                blockSize: blockSize, doubleQuant: options.doubleQuant)
                    try quantized(t, values, m)
                    pending = BitsandbytesWeights.entries(name: t.name, matrix: m, dtype: plain.torchName).map(\.1)
                } else {
                    pending = [encode(values, as: plan[next].specs[0].dtype)]
                }
                next += 1
            }
            return pending.removeFirst()
        }
        try writeConfig(source, output: output, options: options, blockSize: blockSize, dtype: plain)
        try copyTokenizer(source, output: output)
        return try FileManager.default.attributesOfItem(atPath: (output as NSString).appendingPathComponent("model.safetensors"))[.size] as? Int ?? 0
    }

    /// The one dtype of a bitsandbytes folder's unquantized tensors.
    static func plainDType(_ source: ModelSource, options: Options) -> SafetensorsDType {
        switch options.embeddings {
        case .f32: return .F32
        case .f16: return .F16
        case .bf16: return .BF16
        case .keep:
            let storage = source.tensors.first { $0.role == .embedding }?.storage ?? "F32"
            return SafetensorsDType(rawValue: storage).flatMap { [.F32, .F16, .BF16].contains($0) ? $0 : nil } ?? .F32
        }
    }

    static func encode(_ values: [Float], as dtype: SafetensorsDType) -> [UInt8] {
        switch dtype {
        case .F16: return FP16.bytes(from: values)
        case .BF16: return values.map { BF16.bits(from: $0) }.withUnsafeBytes { Array($0) }
        default: return values.withUnsafeBytes { Array($0) }
        }
    }

    static func writeConfig(_ source: ModelSource, output: String, options: Options, blockSize: Int, dtype: SafetensorsDType) throws {
        try writeConfig(huggingFaceConfig(source), output: output, options: options, blockSize: blockSize, dtype: dtype)
    }

    /// config.json of a bitsandbytes folder: `config` (transformers' keys) with the dtype and
    /// `quantization_config` added.
    static func writeConfig(_ config: [String: Any], output: String, options: Options, blockSize: Int, dtype: SafetensorsDType) throws {
        var config = config
        config["torch_dtype"] = dtype.torchName  // transformers < 5
        config["dtype"] = dtype.torchName        // transformers ≥ 5
        config["quantization_config"] = [
            "quant_method": "bitsandbytes", "load_in_4bit": true, "load_in_8bit": false,
            "_load_in_4bit": true, "_load_in_8bit": false,
            "bnb_4bit_quant_type": options.format.rawValue, "bnb_4bit_use_double_quant": options.doubleQuant,
            "bnb_4bit_compute_dtype": "float32", "bnb_4bit_quant_storage": "uint8",
            "llm_int8_enable_fp32_cpu_offload": false, "llm_int8_has_fp16_weight": false,
            "llm_int8_skip_modules": NSNull(), "llm_int8_threshold": 6.0,
        ] as [String: Any]
        if blockSize != 64 { config["qlora_block_size"] = blockSize }
        // transformers insists that float fields (llm_int8_threshold, …) hold floats: 6.0, not 6.
        try AtomicFile.write(to: (output as NSString).appendingPathComponent("config.json"), bytes: Array(try ConfigJSON.data(config)))
    }

    /// The source's config.json as transformers reads it: a folder's own, or one built from
    /// the GGUF's metadata.
    static func huggingFaceConfig(_ source: ModelSource) -> [String: Any] {
        if let folder = source.folder { return folder.rawConfig }
        return huggingFaceConfig(source.config, bos: source.gguf?.metadata["tokenizer.ggml.bos_token_id"]?.int,
                                 eos: source.gguf?.metadata["tokenizer.ggml.eos_token_id"]?.int,
                                 pad: source.gguf?.metadata["tokenizer.ggml.padding_token_id"]?.int)
    }

    /// transformers' LlamaForCausalLM config.json keys for `c`.
    /// pad_token_id is always written (null without one): a class's default can lie outside
    /// the vocabulary (Phi3Config's 32000), which transformers then refuses to build.
    static func huggingFaceConfig(_ c: ModelConfig, bos: Int?, eos: Int?, pad: Int? = nil) -> [String: Any] {
        // Floats by their shortest decimal (1e-05, not 9.99999974737875e-06 widened from fp32).
        var config: [String: Any] = [
            "architectures": [c.family.huggingFaceArchitecture], "model_type": c.family.huggingFaceModelType,
            "hidden_act": c.family.activation == .geluTanh ? "gelu_pytorch_tanh" : "silu",  // Gemma reads hidden_activation: both say the same
            "hidden_size": c.hiddenSize, "intermediate_size": c.intermediateSize, "num_hidden_layers": c.numLayers,
            "num_attention_heads": c.numHeads, "num_key_value_heads": c.numKVHeads, "head_dim": c.headDim,
            "vocab_size": c.vocabSize, "rms_norm_eps": Double("\(c.rmsNormEps)")!, "rope_theta": Double("\(c.ropeTheta)")!,
            "max_position_embeddings": c.maxPositionEmbeddings, "tie_word_embeddings": c.tieWordEmbeddings,
            "attention_bias": c.attentionBias, "mlp_bias": false,
        ]
        config.merge(c.family.huggingFaceKeys(c)) { _, new in new }
        if let bos { config["bos_token_id"] = bos }
        if let eos { config["eos_token_id"] = eos }
        config["pad_token_id"] = pad.map { $0 as Any } ?? NSNull()
        return config
    }

    static func copyTokenizer(_ source: ModelSource, output: String) throws {
        if let folder = source.folder {
            for name in ["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "generation_config.json", "chat_template.jinja"] {
                let from = (folder.path as NSString).appendingPathComponent(name)
                guard let data = FileManager.default.contents(atPath: from) else { continue }
                try AtomicFile.write(to: (output as NSString).appendingPathComponent(name), bytes: Array(data))
            }
        } else if let gguf = source.gguf {
            for (name, bytes) in try TokenizerExport.huggingFaceFiles(from: gguf) {
                try AtomicFile.write(to: (output as NSString).appendingPathComponent(name), bytes: bytes)
            }
        }
    }

    // MARK: GGUF

    static func writeGGUF(_ gguf: GGUFFile, source: ModelSource, output: String, options: Options, start: Date,
                          progress: (Progress) -> Void) throws -> Int {
        guard let target = options.format.ggmlType else { throw QuantizerError.ggmlNeedsGGUFSource(format: options.format) }
        guard options.format.canQuantize else { throw QuantError.noQuantizer(format: options.format) }
        var writer = GGUFWriter()
        writer.alignment = gguf.alignment
        writer.metadata = gguf.metadataKeys.map { ($0, gguf.metadata[$0]!) }
        var types: [GGMLType] = []
        for t in gguf.tensors {
            let role = TensorNames.role(of: t.name, family: source.config.family)
            var type = t.type
            if role.isLinear, t.ne.count == 2 {
                type = target
            } else if role == .embedding || role == .lmHead {
                switch options.embeddings {
                case .keep: type = t.type
                case .f32: type = .f32
                case .f16: type = .f16
                case .bf16: type = .bf16
                }
            } else if t.type != .f32 {
                type = .f32
            }
            if type.blockSize > 1, t.ne[0] % type.blockSize != 0 { throw QuantError.columnsNotMultipleOfBlock(format: options.format, columns: t.ne[0], blockSize: type.blockSize) }
            types.append(type)
            writer.tensors.append(.init(name: t.name, ne: t.ne, type: type))
        }
        try writer.write(to: output) { i in
            let t = gguf.tensors[i], type = types[i]
            progress(.tensor(index: i, count: types.count, name: t.name, from: t.type.name,
                             to: type == t.type ? "\(type.name) (kept)" : type.name, elapsed: Date().timeIntervalSince(start)))
            defer { gguf.file.release(offset: t.offset, count: t.byteCount) }
            if type == t.type { return Array(gguf.data(of: t)) }
            let values = try gguf.dequantize(t)
            switch type {
            case .f32: return values.withUnsafeBytes { Array($0) }
            case .f16: return encode(values, as: .F16)
            case .bf16: return encode(values, as: .BF16)
            default:
                let format = QuantFormat(ggml: type)!
                return try QuantizedMatrix(quantizing: values, rows: t.rows, cols: t.columns, format: format).data.array(of: UInt8.self)
            }
        }
        return try FileManager.default.attributesOfItem(atPath: output)[.size] as? Int ?? 0
    }
}

extension SafetensorsDType {
    /// torch's name of the dtype, as config.json and bitsandbytes' quant state write it.
    var torchName: String {
        switch self {
        case .F64: "float64"
        case .F32: "float32"
        case .F16: "float16"
        case .BF16: "bfloat16"
        case .I64: "int64"
        case .I32: "int32"
        case .I16: "int16"
        case .I8: "int8"
        case .U8: "uint8"
        case .BOOL: "bool"
        }
    }
}

public enum QuantizerError: Error, Equatable, CustomStringConvertible {
    case ggmlNeedsGGUFSource(format: QuantFormat)

    public var description: String {
        switch self {
        case let .ggmlNeedsGGUFSource(format):
            "--format \(format.rawValue) writes a GGUF file and needs a GGUF source (its tokenizer metadata is carried over); for a Hugging Face folder use --format nf4 or fp4"
        }
    }
}
