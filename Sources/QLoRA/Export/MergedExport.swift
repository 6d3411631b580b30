import Foundation
import Quant

/// `qlora export`: the frozen 4-bit base with a LoRA adapter merged in, written as a plain fp32
/// Hugging Face folder that `AutoModelForCausalLM.from_pretrained` loads.
/// Legend: out/in a linear's rows/columns, r rank, V vocab, C hidden.
///
///   linear    W'[out, in] = dequant(W) + s·B·A        A [r, in], B [out, r], s = alpha/r (√r rsLoRA)
///             dequant(W) is exactly what training multiplied by (the same QuantizedMatrix,
///             K-quants requantized as at load); linears without an adapter are dequant(W).
///   norms     the adapter's trained values where it has them, else the base's fp32 values.
///   embedding / LM head   fp32, dequantized from the GGUF's blocks (Q8_0) where stored so.
///             A tied model writes only model.embed_tokens.weight, as transformers does.
///
/// The folder (written into `DIR.tmp-<pid>`, renamed to DIR when complete):
///   config.json                 LlamaForCausalLM, torch_dtype float32, no quantization_config
///   generation_config.json      the source's, or bos/eos ids
///   model.safetensors           F32; above `maxShardBytes` model-0000k-of-0000n.safetensors
///                               and model.safetensors.index.json, as save_pretrained shards
///   tokenizer.json, tokenizer_config.json (chat template)   from the GGUF's metadata or
///                               copied from the folder; skipped with a note when there are none
/// Tensors stream one at a time: peak memory ≈ the 4-bit model plus one fp32 tensor.
public enum MergedExport {
    public struct Options: Sendable {
        /// A PEFT-layout adapter directory; nil exports the dequantized base.
        public var adapter: String?
        /// Replace a non-empty output folder.
        public var overwrite: Bool
        /// Largest shard, in bytes (transformers' max_shard_size "5GB" = 5·10⁹).
        public var maxShardBytes: Int

        public init(adapter: String? = nil, overwrite: Bool = false, maxShardBytes: Int = 5_000_000_000) {
            self.adapter = adapter
            self.overwrite = overwrite
            self.maxShardBytes = maxShardBytes
        }
    }

    public enum Progress: Sendable {
        /// Tensor `index` of `count` is being computed: `storage` is how the base stores it,
        /// `merged` whether an adapter's B·A (or trained norm) goes into it, `to` the type written.
        case tensor(index: Int, count: Int, name: String, storage: String, merged: Bool, to: String, elapsed: Double)
        /// Something the user should know that does not stop the export.
        case note(String)
    }

    public struct Report: Sendable {
        public var output: String
        public var tensors: Int
        /// Linears with B·A added, plus norms replaced by trained ones.
        public var merged: Int
        public var shards: Int
        public var outputBytes: Int
        public var seconds: Double
        public var peakRSSBytes: Int
    }

    static let weightsFile = "model.safetensors"
    static let indexFile = "model.safetensors.index.json"

    /// Exports `model` (a GGUF file or quantized folder qlora trains on) with `options.adapter`
    /// merged into `output`.
    public static func run(model path: String, output: String, options: Options = .init(),
                           progress: (Progress) -> Void) throws -> Report {
        let start = Date()
        if !options.overwrite, !isEmptyOrAbsent(output) { throw MergedExportError.outputExists(path: output) }
        StagedOutput.removeStale(for: output).forEach { progress(.note($0)) }
        let model = try QuantizedModel(path: path)
        let adapter = try options.adapter.map { try AdapterTensors(directory: $0, model: model) }
        let plan = tensorPlan(model, sequenceClassifier: adapter?.score != nil)
        let fm = FileManager.default
        let tmp = StagedOutput.path(for: output)
        try? fm.removeItem(atPath: tmp)
        try fm.createDirectory(atPath: tmp, withIntermediateDirectories: true)
        do {
            let shards = try writeWeights(plan, model: model, adapter: adapter, into: tmp, options: options, start: start,
                                          progress: progress)
            try writeConfig(model.source, into: tmp, sequenceClassifier: adapter?.score != nil)
            try writeGenerationConfig(model.source, into: tmp)
            try writeTokenizer(model.source, into: tmp, progress: progress)
            try swapIn(tmp, as: output)
            let bytes = shards.reduce(0) { $0 + fileSize((output as NSString).appendingPathComponent($1)) }
            return Report(output: output, tensors: plan.count, merged: adapter?.mergedCount ?? 0, shards: shards.count,
                          outputBytes: bytes, seconds: Date().timeIntervalSince(start), peakRSSBytes: Quantizer.peakRSS())
        } catch {
            try? fm.removeItem(atPath: tmp)
            throw error
        }
    }

    // MARK: weights

    /// One tensor of the export: its name, fp32 shape, and how the base holds it.
    struct PlannedTensor {
        let name: String
        let shape: [Int]
        let storage: String
        var count: Int { shape.reduce(1, *) }
    }

    /// The base's tensors in source order with their unpacked shapes (a bitsandbytes folder
    /// stores a linear as packed bytes); the LM head left out when tied. A reward model
    /// (`sequenceClassifier`) has no LM head at all but the adapter's score head, last.
    static func tensorPlan(_ model: QuantizedModel, sequenceClassifier: Bool = false) -> [PlannedTensor] {
        let plan = model.source.tensors.filter { !((model.config.tieWordEmbeddings || sequenceClassifier) && $0.role == .lmHead) }.map { t in
            if let m = model.linears[t.name] ?? model.tokenMatrices[t.name] {
                return PlannedTensor(name: t.name, shape: [m.rows, m.cols], storage: m.format.rawValue)
            }
            return PlannedTensor(name: t.name, shape: t.shape, storage: t.storage)
        }
        return plan + (sequenceClassifier ? [PlannedTensor(name: ModelAdapters.scoreHeadName, shape: [1, model.config.hiddenSize], storage: "adapter")] : [])
    }

    /// Writes the safetensors file(s); returns their names.
    static func writeWeights(_ plan: [PlannedTensor], model: QuantizedModel, adapter: AdapterTensors?, into dir: String,
                             options: Options, start: Date, progress: (Progress) -> Void) throws -> [String] {
        let specs = plan.map { SafetensorsWriter.TensorSpec(name: $0.name, dtype: .F32, shape: $0.shape) }
        let groups = shardGroups(specs.map(\.byteCount), maxBytes: options.maxShardBytes)
        let names = groups.count == 1 ? [weightsFile]
            : groups.indices.map { String(format: "model-%05d-of-%05d.safetensors", $0 + 1, groups.count) }
        for (shard, range) in groups.enumerated() {
            var writer = SafetensorsWriter()
            writer.tensors = Array(specs[range])
            try writer.write(to: (dir as NSString).appendingPathComponent(names[shard])) { i in
                let t = plan[range.lowerBound + i]
                progress(.tensor(index: range.lowerBound + i, count: plan.count, name: t.name, storage: t.storage,
                                 merged: adapter?.touches(t.name) ?? false, to: "F32", elapsed: Date().timeIntervalSince(start)))
                return try fp32Bytes(of: t, model: model, adapter: adapter)
            }
        }
        if groups.count > 1 {
            var map: [String: String] = [:]
            for (shard, range) in groups.enumerated() { for s in specs[range] { map[s.name] = names[shard] } }
            let index: [String: Any] = [
                "metadata": ["total_size": specs.reduce(0) { $0 + $1.byteCount }, "total_parameters": plan.reduce(0) { $0 + $1.count }],
                "weight_map": map,
            ]
            try writeJSON(index, to: (dir as NSString).appendingPathComponent(indexFile))
        }
        return names
    }

    /// Consecutive tensors per shard: a new shard starts where the next tensor would pass
    /// `maxBytes` (a tensor larger than that gets a shard of its own), as save_pretrained does.
    static func shardGroups(_ sizes: [Int], maxBytes: Int) -> [Range<Int>] {
        var groups: [Range<Int>] = []
        var first = 0, bytes = 0
        for (i, size) in sizes.enumerated() {
            if i > first, bytes + size > maxBytes {
                groups.append(first..<i)
                first = i
                bytes = 0
            }
            bytes += size
        }
        groups.append(first..<sizes.count)
        return groups
    }

    /// One tensor of the export as little-endian fp32 bytes, the only full-size buffer made.
    static func fp32Bytes(of t: PlannedTensor, model: QuantizedModel, adapter: AdapterTensors?) throws -> [UInt8] {
        if model.linears[t.name] != nil || model.tokenMatrices[t.name] != nil {
            var out = [UInt8](repeating: 0, count: t.count * MemoryLayout<Float>.size)
            try out.withUnsafeMutableBytes { try fillMatrix(t, model: model, adapter: adapter, into: $0.bindMemory(to: Float.self)) }
            return out
        }
        return try vectorValues(of: t, model: model, adapter: adapter).withUnsafeBytes { Array($0) }
    }

    /// One tensor of the export in fp32, Hugging Face layout: W' = dequant(W) + s·B·A for a
    /// linear, the same values `fp32Bytes` writes.
    static func fp32Values(of t: PlannedTensor, model: QuantizedModel, adapter: AdapterTensors?) throws -> [Float] {
        if model.linears[t.name] != nil || model.tokenMatrices[t.name] != nil {
            var out = [Float](repeating: 0, count: t.count)
            try out.withUnsafeMutableBufferPointer { try fillMatrix(t, model: model, adapter: adapter, into: $0) }
            return out
        }
        return try vectorValues(of: t, model: model, adapter: adapter)
    }

    /// A linear (merged) or a block-stored token matrix, dequantized a band of rows at a time.
    private static func fillMatrix(_ t: PlannedTensor, model: QuantizedModel, adapter: AdapterTensors?,
                                   into out: UnsafeMutableBufferPointer<Float>) throws {
        if let w = model.linears[t.name] {
            try fillRows(rows: w.rows, cols: w.cols, into: out) { rows, band in
                w.dequantize(rows: rows, into: &band)
                if let f = adapter?.factors[t.name] { try f.apply(rows: rows, into: &band, cols: w.cols) }
            }
        } else if let m = model.tokenMatrices[t.name] {
            fillRows(rows: m.rows, cols: m.cols, into: out) { rows, band in m.dequantize(rows: rows, into: &band) }
        }
    }

    /// Norms, biases and fp32 embeddings: the adapter's trained values or the base's, as
    /// Hugging Face files hold them (a Gemma norm's w of x̂·(1 + w): a GGUF source's 1 + w less one).
    private static func vectorValues(of t: PlannedTensor, model: QuantizedModel, adapter: AdapterTensors?) throws -> [Float] {
        let family = model.config.family
        if let trained = adapter?.norms[t.name] { return trained }
        if t.name == ModelAdapters.scoreHeadName, let score = adapter?.score { return score }
        guard let values = model.dense[t.name] else { throw ModelSourceError.unknownTensor(path: model.path, name: t.name, family: family.name) }
        guard model.source.gguf != nil, TensorNames.role(of: t.name, family: family) == .norm else { return values }
        return family.huggingFaceNorm(fromEffective: values)
    }

    /// Fills an [rows, cols] fp32 tensor a band of rows at a time through a small scratch.
    static func fillRows(rows: Int, cols: Int, into out: UnsafeMutableBufferPointer<Float>,
                         fill: (Range<Int>, inout [Float]) throws -> Void) rethrows {
        precondition(out.count == rows * cols)
        let band = max(1, (1 << 20) / cols)
        var scratch = [Float](repeating: 0, count: min(band, rows) * cols)
        for first in stride(from: 0, to: rows, by: band) {
            let range = first..<min(first + band, rows)
            try fill(range, &scratch)
            scratch.withUnsafeBufferPointer { src in
                (out.baseAddress! + first * cols).update(from: src.baseAddress!, count: range.count * cols)
            }
        }
    }

    // MARK: config, generation config, tokenizer

    /// config.json of the export; a reward model's (`sequenceClassifier`) names the family's
    /// sequence-classification class with one label, as transformers' AutoModelForSequenceClassification
    /// with num_labels=1 writes it.
    static func writeConfig(_ source: ModelSource, into dir: String, sequenceClassifier: Bool = false) throws {
        var config = Quantizer.huggingFaceConfig(source)
        config["quantization_config"] = nil
        config["qlora_block_size"] = nil
        config["architectures"] = [sequenceClassifier ? source.config.family.huggingFaceSequenceClassifier : source.config.family.huggingFaceArchitecture]
        if sequenceClassifier {
            config["num_labels"] = 1
            config["id2label"] = ["0": "LABEL_0"]
            config["label2id"] = ["LABEL_0": 0]
        }
        config["torch_dtype"] = "float32"  // transformers < 5
        config["dtype"] = "float32"        // transformers ≥ 5
        try writeJSON(config, to: (dir as NSString).appendingPathComponent("config.json"))
    }

    static func writeGenerationConfig(_ source: ModelSource, into dir: String) throws {
        let to = (dir as NSString).appendingPathComponent("generation_config.json")
        if let folder = source.folder,
           let data = FileManager.default.contents(atPath: (folder.path as NSString).appendingPathComponent("generation_config.json")) {
            return try AtomicFile.write(to: to, bytes: Array(data))
        }
        var config: [String: Any] = [:]
        let raw = Quantizer.huggingFaceConfig(source)
        for key in ["bos_token_id", "eos_token_id", "pad_token_id"] where raw[key] != nil && !(raw[key] is NSNull) { config[key] = raw[key] }
        try writeJSON(config, to: to)
    }

    static func writeTokenizer(_ source: ModelSource, into dir: String, progress: (Progress) -> Void) throws {
        if let folder = source.folder {
            var copied = 0
            for name in ["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja"] {
                guard let data = FileManager.default.contents(atPath: (folder.path as NSString).appendingPathComponent(name)) else { continue }
                try AtomicFile.write(to: (dir as NSString).appendingPathComponent(name), bytes: Array(data))
                copied += 1
            }
            if folder.tokenizerJSON == nil {
                progress(.note("\(folder.path) has no tokenizer.json: the export has no tokenizer files (copy them in before loading with a tokenizer)"))
            } else if copied > 0, folder.tokenizerConfigJSON == nil {
                progress(.note("\(folder.path) has no tokenizer_config.json: the export has no chat template"))
            }
        } else if let gguf = source.gguf {
            do {
                for (name, bytes) in try TokenizerExport.huggingFaceFiles(from: gguf) {
                    try AtomicFile.write(to: (dir as NSString).appendingPathComponent(name), bytes: bytes)
                }
            } catch let error as TokenizerExportError {
                progress(.note("\(error): the export has no tokenizer files"))
            }
        }
    }

    static func writeJSON(_ object: Any, to path: String) throws {
        try AtomicFile.write(to: path, bytes: Array(try ConfigJSON.data(object)) + [0x0A])
    }

    // MARK: the folder as a whole

    static func isEmptyOrAbsent(_ path: String) -> Bool {
        var isDir: ObjCBool = false
        guard FileManager.default.fileExists(atPath: path, isDirectory: &isDir) else { return true }
        return isDir.boolValue && ((try? FileManager.default.contentsOfDirectory(atPath: path).isEmpty) ?? false)
    }

    /// Renames the finished `tmp` to `output`; an existing `output` is moved aside first and
    /// removed only once the new folder is in place.
    /// The staged output made `output`, fsynced (StagedOutput.commit).
    static func swapIn(_ tmp: String, as output: String) throws { try StagedOutput.commit(tmp, to: output) }

    static func fileSize(_ path: String) -> Int {
        (try? FileManager.default.attributesOfItem(atPath: path)[.size] as? Int) ?? 0
    }
}

public enum MergedExportError: Error, Equatable, CustomStringConvertible {
    case outputExists(path: String)
    case rewardModelFormat(adapter: String, format: String)

    public var description: String {
        switch self {
        case let .outputExists(path): "\(path) exists and is not empty\n---> HINT: pass --overwrite to replace it, or pick another -o"
        case let .rewardModelFormat(adapter, format):
            "\(adapter) is a reward model's adapter (a score head, no LM head): \(format) has no place for it\n---> HINT: export it as a Hugging Face folder (--format hf), which transformers loads as *ForSequenceClassification"
        }
    }
}
