import Foundation

/// What `qlora info` reports about a model file or folder: architecture and shapes,
/// parameter counts, bytes per component and storage format, tokenizer and chat template.
public struct ModelSummary: Codable, Sendable {
    public var source: String
    public var container: String          // "gguf", "huggingface", "bitsandbytes-4bit"
    public var config: ModelConfig
    public var parameterCount: Int
    public var fileBytes: Int
    public var components: [Component]
    public var tokenizer: String?
    public var chatTemplate: Bool
    public var loadSeconds: Double
    /// GGUF linear types requantized when the file is opened as a frozen base ("F16 → q8_0").
    public var requantizedAtLoad: [String] = []

    public struct Component: Codable, Sendable {
        public var name: String           // embeddings, attention, mlp, norms, lm_head, other
        public var format: String         // Q4_1, F32, nf4, BF16, ...
        public var tensors: Int
        public var parameters: Int
        public var bytes: Int
    }

    /// Opens a GGUF file, or a Hugging Face folder (plain or bitsandbytes 4-bit).
    public static func load(path: String) throws -> ModelSummary {
        let start = Date()
        var isDir: ObjCBool = false
        guard FileManager.default.fileExists(atPath: path, isDirectory: &isDir) else { throw FileError.cannotOpen(path: path, reason: "no such file or folder") }
        var s = isDir.boolValue ? try summarize(HuggingFaceFolder(path: path)) : try summarize(GGUFFile(path: path))
        s.loadSeconds = Date().timeIntervalSince(start)
        return s
    }

    static func summarize(_ g: GGUFFile) throws -> ModelSummary {
        let config = try ModelConfig(gguf: g)
        var groups: [String: Component] = [:]
        for t in g.tensors {
            add(&groups, component: component(ofGGUF: t.name), format: t.type.name, parameters: t.count, bytes: t.byteCount)
        }
        let model = g.metadata["tokenizer.ggml.model"]?.string
        let pre = g.metadata["tokenizer.ggml.pre"]?.string
        let vocab = g.metadata["tokenizer.ggml.tokens"]?.array?.count
        let tokenizer = model.map { m in
            "\(m == "gpt2" ? "byte-level BPE" : m == "llama" ? "SentencePiece" : m)"
                + (pre.map { " (pre-tokenizer \($0))" } ?? "") + (vocab.map { ", \($0) tokens" } ?? "")
        }
        var s = ModelSummary(source: g.file.path, container: "gguf v\(g.version)", config: config,
                             parameterCount: g.tensors.reduce(0) { $0 + $1.count }, fileBytes: g.file.count,
                             components: sorted(groups), tokenizer: tokenizer,
                             chatTemplate: g.metadata["tokenizer.chat_template"] != nil, loadSeconds: 0)
        let linearTypes = Set(g.tensors.filter { TensorNames.role(of: $0.name, family: config.family).isLinear }.map(\.type))
        s.requantizedAtLoad = linearTypes.sorted { $0.rawValue < $1.rawValue }.compactMap { type in
            let (format, requantized) = QuantizedModel.loadFormat(for: type)
            return requantized ? "\(type.name) → \(format.rawValue)" : nil
        }
        return s
    }

    static func summarize(_ f: HuggingFaceFolder) throws -> ModelSummary {
        var groups: [String: Component] = [:]
        var parameters = 0
        let quantFormat = ((f.rawConfig["quantization_config"] as? [String: Any])?["bnb_4bit_quant_type"] as? String) ?? "nf4"
        for (_, t) in f.tensors {
            // bitsandbytes keeps each 4-bit weight as packed bytes beside its quant-state tensors.
            if t.name.contains(".weight.") { continue }
            let packed = f.isBitsandbytes4Bit && t.dtype == .U8 && f.tensor(t.name + ".absmax") != nil
            let count = packed ? t.count * 2 : t.count
            var bytes = t.byteCount
            if packed {
                for suffix in [".absmax", ".quant_map", ".nested_absmax", ".nested_quant_map", ".quant_state.bitsandbytes__\(quantFormat)"] {
                    bytes += f.tensor(t.name + suffix)?.tensor.byteCount ?? 0
                }
            }
            parameters += count
            add(&groups, component: component(ofHF: t.name), format: packed ? quantFormat : t.dtype.rawValue, parameters: count, bytes: bytes)
        }
        var tokenizer: String?
        if let path = f.tokenizerJSON, let data = FileManager.default.contents(atPath: path),
           let json = try? JSONSerialization.jsonObject(with: data) as? [String: Any],
           let model = json["model"] as? [String: Any] {
            let type = (model["type"] as? String) ?? "?"
            let vocab = (model["vocab"] as? [String: Any])?.count
            tokenizer = "tokenizer.json \(type)" + (vocab.map { ", \($0) tokens" } ?? "")
        }
        var template = false
        if let path = f.tokenizerConfigJSON, let data = FileManager.default.contents(atPath: path),
           let json = try? JSONSerialization.jsonObject(with: data) as? [String: Any] {
            template = json["chat_template"] != nil
        }
        let bytes = f.shards.reduce(0) { $0 + $1.file.count }
        return ModelSummary(source: f.path, container: f.isBitsandbytes4Bit ? "bitsandbytes-4bit" : "huggingface",
                            config: f.config, parameterCount: parameters, fileBytes: bytes, components: sorted(groups),
                            tokenizer: tokenizer, chatTemplate: template, loadSeconds: 0)
    }

    private static func add(_ groups: inout [String: Component], component: String, format: String, parameters: Int, bytes: Int) {
        groups["\(component)/\(format)", default: Component(name: component, format: format, tensors: 0, parameters: 0, bytes: 0)]
            .tensors += 1
        groups["\(component)/\(format)"]!.parameters += parameters
        groups["\(component)/\(format)"]!.bytes += bytes
    }

    private static func sorted(_ groups: [String: Component]) -> [Component] {
        let order = ["embeddings", "attention", "mlp", "norms", "lm_head", "other"]
        return groups.values.sorted { (order.firstIndex(of: $0.name) ?? 9, $0.format) < (order.firstIndex(of: $1.name) ?? 9, $1.format) }
    }

    static func component(ofGGUF name: String) -> String {
        if name.hasPrefix("token_embd") { return "embeddings" }
        if name.hasPrefix("output_norm") || name.contains("_norm") { return "norms" }
        if name.hasPrefix("output.") { return "lm_head" }
        if name.contains(".attn_") { return "attention" }
        if name.contains(".ffn_") { return "mlp" }
        return "other"
    }

    static func component(ofHF name: String) -> String {
        if name.contains("embed_tokens") { return "embeddings" }
        if name.contains("norm") { return "norms" }
        if name.hasPrefix("lm_head") { return "lm_head" }
        if name.contains("self_attn") { return "attention" }
        if name.contains(".mlp.") { return "mlp" }
        return "other"
    }

    /// Lines for people.
    public var lines: [String] {
        let c = config
        func mb(_ b: Int) -> String { String(format: "%.1f MB", Double(b) / 1e6) }
        func millions(_ n: Int) -> String { String(format: "%.1fM", Double(n) / 1e6) }
        var out = [
            "\(source) (\(container), \(mb(fileBytes)), opened in \(String(format: "%.3f", loadSeconds)) s)",
            "architecture: \(c.architecture), \(c.numLayers) layers, hidden \(c.hiddenSize), intermediate \(c.intermediateSize)",
            "attention: \(c.numHeads) heads, \(c.numKVHeads) KV heads, head dim \(c.headDim), RoPE base \(c.ropeTheta)"
                + (c.ropeScaling.map { ", scaling \($0.type) ×\($0.factor)" } ?? "") + ", RMSNorm eps \(c.rmsNormEps)",
            "vocab \(c.vocabSize), context \(c.maxPositionEmbeddings), embeddings \(c.tieWordEmbeddings ? "tied" : "untied")",
            "parameters: \(millions(parameterCount))",
            "components:",
        ]
        for comp in components {
            out.append("  \(comp.name.padding(toLength: 11, withPad: " ", startingAt: 0)) \(comp.format.padding(toLength: 6, withPad: " ", startingAt: 0)) "
                + "\(String(comp.tensors).leftPad(4)) tensors  \(millions(comp.parameters).leftPad(8)) params  \(mb(comp.bytes).leftPad(10))  "
                + String(format: "%.2f bits/param", Double(comp.bytes * 8) / Double(max(comp.parameters, 1))))
        }
        if !requantizedAtLoad.isEmpty {
            out.append("frozen base: linear weights requantized at load: \(requantizedAtLoad.joined(separator: ", ")) (qlora quantize makes it once)")
        }
        out.append("tokenizer: \(tokenizer ?? "none")")
        out.append("chat template: \(chatTemplate ? "yes" : "no")")
        return out
    }
}

extension String {
    func leftPad(_ n: Int) -> String { count >= n ? self : String(repeating: " ", count: n - count) + self }
}
