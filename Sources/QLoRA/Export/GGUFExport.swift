import Foundation
import Quant

/// `qlora export --format gguf`: the 4-bit base with a LoRA adapter merged in, written as a
/// GGUF file llama.cpp loads. Legend: out/in a linear's rows/columns, H/Hkv heads, D head dim.
///
///   linear      W'[out, in] = dequant(W) + s·B·A (the values MergedExport writes), stored as
///               --type: F32, F16 (round to nearest) or Q8_0 (ggml's reference quantizer)
///   token_embd, output   the same type; `output` only when the model does not tie it
///   norms, biases        F32 in every type, as llama.cpp's converter keeps them
///   attn_q, attn_k       rows permuted within each head (H for q, Hkv for k) into llama.cpp's
///               rotary order for the llama architecture, as convert_hf_to_gguf does:
///               GGUF row h·D + 2i + j = Hugging Face row h·D + j·D/2 + i (TensorNames)
///
/// Metadata: from a GGUF source every key is carried over with `general.file_type` set to the
/// new type; from a folder it is built as convert_hf_to_gguf builds it — `general.*`, the
/// `<arch>.*` hyperparameters from config.json (and the family's own keys) and the tokenizer (TokenizerExport).
/// Tensors stream one at a time (peak ≈ the 4-bit model plus one fp32 tensor) into
/// `FILE.tmp-<pid>`, renamed to FILE when complete.
public enum GGUFExport {
    /// The tensor type of an exported GGUF's weights.
    public enum OutputType: String, CaseIterable, Sendable {
        case f32, f16, q8_0

        var ggml: GGMLType {
            switch self {
            case .f32: .f32
            case .f16: .f16
            case .q8_0: .q8_0
            }
        }
    }

    /// Exports `model` with `options.adapter` merged into the GGUF file `output`.
    public static func run(model path: String, output: String, type: OutputType, options: MergedExport.Options = .init(),
                           progress: (MergedExport.Progress) -> Void) throws -> MergedExport.Report {
        let start = Date()
        StagedOutput.removeStale(for: output).forEach { progress(.note($0)) }
        if !options.overwrite, FileManager.default.fileExists(atPath: output) { throw MergedExportError.outputExists(path: output) }
        let model = try QuantizedModel(path: path)
        let adapter = try options.adapter.map { try AdapterTensors(directory: $0, model: model) }
        if adapter?.score != nil { throw MergedExportError.rewardModelFormat(adapter: options.adapter!, format: "a GGUF file") }
        let plan = try tensorPlan(model, linearType: type.ggml, tokenType: type.ggml)
        try write(plan, model: model, adapter: adapter, fileType: fileType(type.ggml), output: output,
                  note: { progress(.note($0)) }) { i in
            let t = plan[i]
            progress(.tensor(index: i, count: plan.count, name: t.gguf, storage: t.storage, merged: adapter?.touches(t.hf.name) ?? false,
                             to: t.kept == nil ? t.type.name : t.type.name + " (kept)", elapsed: Date().timeIntervalSince(start)))
        }
        return MergedExport.Report(output: output, tensors: plan.count, merged: adapter?.mergedCount ?? 0, shards: 1,
                                   outputBytes: MergedExport.fileSize(output), seconds: Date().timeIntervalSince(start),
                                   peakRSSBytes: Quantizer.peakRSS())
    }

    /// One tensor of the output: both names, ggml shape (ne[0] = columns), the type written,
    /// how the base stores it, and the heads its rows are permuted by (attn_q/attn_k).
    struct PlannedTensor {
        let hf: MergedExport.PlannedTensor
        let gguf: String
        let ne: [Int]
        let type: GGMLType
        let ropeHeads: Int?
        /// The source's tensor, copied byte for byte when the type is kept and nothing merges into it.
        let kept: GGUFTensor?
        var storage: String { hf.storage }
        var rows: Int { hf.shape.count == 2 ? hf.shape[0] : hf.count }
        var cols: Int { hf.shape.count == 2 ? hf.shape[1] : 1 }
        let role: TensorRole
        var isLinear: Bool { role.isLinear && hf.shape.count == 2 }
    }

    /// The output's tensors: linears as `linearType`, embedding and LM head as `tokenType`
    /// (nil: as the source stores them, where GGUF can), everything else F32.
    static func tensorPlan(_ model: QuantizedModel, linearType: GGMLType, tokenType: GGMLType?) throws -> [PlannedTensor] {
        let family = model.config.family
        return try MergedExport.tensorPlan(model).map { t in
            guard let name = TensorNames.gguf(fromHuggingFace: t.name, family: family) else {
                throw ModelSourceError.unknownTensor(path: model.path, name: t.name, family: family.name)
            }
            let role = TensorNames.role(of: t.name, family: family)
            let source = model.source.tensors.first { $0.name == t.name }?.gguf
            let type: GGMLType
            if role.isLinear, t.shape.count == 2 {
                type = linearType
            } else if role == .embedding || role == .lmHead {
                type = tokenType ?? source?.type ?? [.f16, .bf16].first { $0.name == t.storage } ?? .f32
            } else {
                type = .f32
            }
            let ne = Array(t.shape.reversed())
            if type.blockSize > 1, ne[0] % type.blockSize != 0 {
                throw GGUFExportError.columnsNotMultipleOfBlock(tensor: name, columns: ne[0], type: type.name, blockSize: type.blockSize)
            }
            return PlannedTensor(hf: t, gguf: name, ne: ne, type: type,
                                 ropeHeads: ModelSource.ropeHeads(of: t.name, config: model.config),
                                 kept: source?.type == type ? source : nil, role: role)
        }
    }

    /// Writes the file through `FILE.tmp-<pid>`, calling `starting(i)` before tensor i.
    /// `encodeLinear(i, W')` may return a non-F32 linear's bytes itself (Hugging Face row order; merge
    /// uses it to measure the rounding); nil encodes by the plan.
    static func write(_ plan: [PlannedTensor], model: QuantizedModel, adapter: AdapterTensors?, fileType: UInt32, output: String,
                      note: (String) -> Void, encodeLinear: (Int, [Float]) throws -> [UInt8]? = { _, _ in nil },
                      starting: (Int) -> Void) throws {
        var writer = GGUFWriter()
        writer.alignment = model.source.gguf?.alignment ?? 32
        writer.metadata = try metadata(model.source, fileType: fileType, note: note)
        writer.tensors = plan.map { .init(name: $0.gguf, ne: $0.ne, type: $0.type) }
        let tmp = StagedOutput.path(for: output)
        do {
            try writer.write(to: tmp) { i in
                let t = plan[i]
                starting(i)
                if let kept = t.kept, let g = model.source.gguf, !(adapter?.touches(t.hf.name) ?? false) {
                    defer { g.file.release(offset: kept.offset, count: kept.byteCount) }
                    return Array(g.data(of: kept))
                }
                var bytes: [UInt8]
                let family = model.config.family
                if t.role == .norm, family.huggingFaceNormOffset != 0 {  // GGUF stores Gemma's norms as 1 + w
                    bytes = family.effectiveNorm(fromHuggingFace: try MergedExport.fp32Values(of: t.hf, model: model, adapter: adapter))
                        .withUnsafeBytes { Array($0) }
                } else if t.type == .f32 {  // straight into the output buffer: no second fp32 copy
                    bytes = try MergedExport.fp32Bytes(of: t.hf, model: model, adapter: adapter)
                } else {
                    let values = try MergedExport.fp32Values(of: t.hf, model: model, adapter: adapter)
                    if t.isLinear, let own = try encodeLinear(i, values) {
                        bytes = own
                    } else {
                        bytes = try encode(values, as: t.type, rows: t.rows, cols: t.cols)
                    }
                }
                if let heads = t.ropeHeads { bytes = ModelSource.permuteRows(bytes, rows: t.rows, heads: heads) }
                return bytes
            }
            try MergedExport.swapIn(tmp, as: output)
        } catch {
            StagedOutput.paths(for: output).forEach { try? FileManager.default.removeItem(atPath: $0) }
            throw error
        }
    }

    /// fp32 values [rows, cols] as `type`'s bytes, rows kept whole (so they can be permuted).
    static func encode(_ values: [Float], as type: GGMLType, rows: Int, cols: Int) throws -> [UInt8] {
        switch type {
        case .f32: return values.withUnsafeBytes { Array($0) }
        case .f16:
            return FP16.bytes(from: values)
        case .bf16: return Quantizer.encode(values, as: .BF16)
        default:
            guard let format = QuantFormat(ggml: type) else { throw GGUFExportError.cannotWrite(type: type.name) }
            return try QuantizedMatrix(quantizing: values, rows: rows, cols: cols, format: format).data.array(of: UInt8.self)
        }
    }

    /// llama.cpp's general.file_type (llama_ftype) for the type of the linears.
    static func fileType(_ type: GGMLType) -> UInt32 {
        switch type {
        case .f32: 0
        case .f16: 1
        case .q4_0: 2
        case .q4_1: 3
        case .q8_0: 7
        case .bf16: 32
        default: 0
        }
    }

    /// The architecture the file declares: the source GGUF's, or the family's for a folder.
    static func architecture(_ source: ModelSource) -> String {
        if let arch = source.gguf?.metadata["general.architecture"]?.string { return arch }
        return source.config.family.ggufArchitecture
    }

    // MARK: metadata

    /// A GGUF source's keys with file_type replaced, or keys built from a folder.
    static func metadata(_ source: ModelSource, fileType: UInt32, note: (String) -> Void) throws -> [(key: String, value: GGUFValue)] {
        if let g = source.gguf {
            var meta = g.metadataKeys.map { (key: $0, value: g.metadata[$0]!) }
            if let i = meta.firstIndex(where: { $0.key == "general.file_type" }) {
                meta[i].value = .uint32(fileType)
            } else {
                meta.append(("general.file_type", .uint32(fileType)))
            }
            return meta
        }
        guard let folder = source.folder else { return [] }
        let c = source.config, arch = architecture(source)
        var meta: [(key: String, value: GGUFValue)] = [
            ("general.architecture", .string(arch)),
            ("general.type", .string("model")),
            ("general.name", .string(URL(fileURLWithPath: folder.path).standardized.lastPathComponent)),
            ("\(arch).vocab_size", .uint32(UInt32(c.vocabSize))),
            ("\(arch).context_length", .uint32(UInt32(c.maxPositionEmbeddings))),
            ("\(arch).embedding_length", .uint32(UInt32(c.hiddenSize))),
            ("\(arch).block_count", .uint32(UInt32(c.numLayers))),
            ("\(arch).feed_forward_length", .uint32(UInt32(c.intermediateSize))),
            ("\(arch).rope.dimension_count", .uint32(UInt32(c.headDim))),
            ("\(arch).attention.head_count", .uint32(UInt32(c.numHeads))),
            ("\(arch).attention.head_count_kv", .uint32(UInt32(c.numKVHeads))),
            ("\(arch).attention.layer_norm_rms_epsilon", .float32(c.rmsNormEps)),
            ("\(arch).rope.freq_base", .float32(c.ropeTheta)),
        ]
        if c.headDim * c.numHeads != c.hiddenSize {
            meta += [("\(arch).attention.key_length", .uint32(UInt32(c.headDim))), ("\(arch).attention.value_length", .uint32(UInt32(c.headDim)))]
        }
        if let s = c.ropeScaling {
            // linear scaling is two keys; llama3's frequency factors are a rope_freqs tensor
            // convert_hf_to_gguf computes, and yarn needs keys qlora does not model.
            guard s.type == "linear" else { throw GGUFExportError.inexpressible(source: folder.path, what: "rope_scaling '\(s.type)'") }
            meta += [("\(arch).rope.scaling.type", .string("linear")), ("\(arch).rope.scaling.factor", .float32(s.factor))]
        }
        // The family's own keys (its window, soft-capping, …), and notes on what GGUF cannot hold.
        meta += c.family.ggufKeys(c, arch, note)
        meta.append(("general.file_type", .uint32(fileType)))
        meta.append(("general.quantization_version", .uint32(2)))
        if folder.tokenizerJSON == nil {
            note("\(folder.path) has no tokenizer.json: the GGUF has no tokenizer metadata, which llama.cpp needs to load it")
        } else {
            meta += try TokenizerExport.ggufMetadata(from: folder, vocabSize: c.vocabSize)
        }
        return meta
    }
}

public enum GGUFExportError: Error, Equatable, CustomStringConvertible {
    case columnsNotMultipleOfBlock(tensor: String, columns: Int, type: String, blockSize: Int)
    case cannotWrite(type: String)
    case inexpressible(source: String, what: String)

    public var description: String {
        switch self {
        case let .columnsNotMultipleOfBlock(tensor, columns, type, blockSize):
            "tensor '\(tensor)' has \(columns) columns, not a multiple of \(type)'s block of \(blockSize)\n---> HINT: --type f32 or f16 writes any shape"
        case let .cannotWrite(type): "qlora cannot write GGUF tensors of type \(type) (F32, F16, BF16, Q4_0, Q4_1, Q8_0 it can)"
        case let .inexpressible(source, what): "\(source): \(what) cannot be written as GGUF metadata yet"
        }
    }
}
