import Foundation
import QuantKernels

/// The shape of a decoder of one of the families `ModelFamily.all` lists (`architecture` names
/// it). Legend: C hidden, F intermediate, H heads, Hkv KV heads, D head dim, V vocab, L layers.
public struct ModelConfig: Codable, Equatable, Sendable {
    public var architecture: String
    public var hiddenSize: Int            // C
    public var intermediateSize: Int      // F
    public var numLayers: Int             // L
    public var numHeads: Int              // H
    public var numKVHeads: Int            // Hkv
    public var headDim: Int               // D
    public var vocabSize: Int             // V
    public var rmsNormEps: Float
    public var ropeTheta: Float
    public var ropeScaling: RopeScaling?
    public var maxPositionEmbeddings: Int
    public var tieWordEmbeddings: Bool
    public var attentionBias: Bool
    /// Keys a query sees at most, itself included (Mistral's sliding_window); nil: all.
    public var slidingWindow: Int?
    /// Which layers the window applies to (Gemma's local layers, true); nil: every layer.
    public var slidingLayers: [Bool]?
    /// RoPE base of the sliding layers when it differs from `ropeTheta` (Gemma 3: 10,000).
    public var localRopeTheta: Float?
    /// Attention scores' scale when it is not 1/√D (Gemma: query_pre_attn_scalar^−½).
    public var attentionScale: Float?
    /// What the embedding rows are multiplied by (Gemma: √hidden, rounded to fp32).
    public var embeddingScale: Float?
    /// Gemma 2's soft-capping: attention scores and final logits become cap·tanh(x / cap).
    public var attentionSoftcap: Float?
    public var finalLogitSoftcap: Float?

    /// Whether layer `l` attends through the sliding window.
    public func isSliding(layer l: Int) -> Bool {
        guard slidingWindow != nil else { return false }
        guard let slidingLayers else { return true }
        return l < slidingLayers.count && slidingLayers[l]
    }

    /// The family `architecture` names (validated when the config was read).
    public var family: ModelFamily {
        guard let f = ModelFamily.named(architecture) else { preconditionFailure("architecture '\(architecture)' has no family") }
        return f
    }

    /// Score scale and window of layer `l`'s attention.
    func attentionOptions(layer l: Int) -> qk_attention_options {
        var o = qk_attention_defaults(Int64(headDim))
        if let attentionScale { o.scale = attentionScale }
        o.softcap = attentionSoftcap ?? 0
        o.window = isSliding(layer: l) ? Int64(slidingWindow ?? 0) : 0
        return o
    }

    /// rope_scaling as transformers writes it; `llama3` uses all four factors.
    public struct RopeScaling: Codable, Equatable, Sendable {
        public var type: String
        public var factor: Float
        public var lowFreqFactor: Float?
        public var highFreqFactor: Float?
        public var originalMaxPositionEmbeddings: Int?
    }

    /// Parameter count of the decoder (embeddings once when tied).
    public var parameterCount: Int {
        let attention = hiddenSize * numHeads * headDim * 2 + hiddenSize * numKVHeads * headDim * 2
            + (attentionBias ? numHeads * headDim + 2 * numKVHeads * headDim : 0)
        let mlp = 3 * hiddenSize * intermediateSize
        let perLayer = attention + mlp + 2 * hiddenSize
        return numLayers * perLayer + hiddenSize + vocabSize * hiddenSize * (tieWordEmbeddings ? 1 : 2)
    }

    /// Checks the numbers fit together, the family's own (window, layer pattern, scales, caps)
    /// included; throws naming the field at fault.
    public func validate(source: String) throws(ModelConfigError) {
        try validateDimensions(source: source)
        if let w = slidingWindow, w <= 0 || w > 1 << 30 { throw .invalid(source: source, field: "sliding_window", detail: "\(w) is out of range") }
        if let layers = slidingLayers, layers.count != numLayers {
            throw .invalid(source: source, field: "layer_types", detail: "\(layers.count) entries for \(numLayers) layers")
        }
        for (name, v) in [("local rope_theta", localRopeTheta), ("attention scale", attentionScale), ("embedding scale", embeddingScale),
                          ("attn_logit_softcapping", attentionSoftcap), ("final_logit_softcapping", finalLogitSoftcap)] {
            if let v, !(v > 0 && v.isFinite) { throw .invalid(source: source, field: name, detail: "gives \(v), not a positive finite number") }
        }
        if let s = ropeScaling, !(s.factor > 0 && s.factor.isFinite) {
            throw .invalid(source: source, field: "rope_scaling.factor", detail: "\(s.factor) is not a positive finite number")
        }
    }

    /// The checks every family's own keys rely on (the hooks index layers and divide by the
    /// head dim): run before them, so that a config with −2 layers is refused, not crashed on.
    func validateDimensions(source: String) throws(ModelConfigError) {
        guard ModelFamily.named(architecture) != nil else { throw .unsupportedArchitecture(source: source, architecture: architecture) }
        for (name, v) in [("hidden_size", hiddenSize), ("intermediate_size", intermediateSize), ("num_hidden_layers", numLayers),
                          ("num_attention_heads", numHeads), ("num_key_value_heads", numKVHeads), ("head_dim", headDim),
                          ("vocab_size", vocabSize), ("max_position_embeddings", maxPositionEmbeddings)] where v <= 0 || v > 1 << 24 {
            throw .invalid(source: source, field: name, detail: "\(v) is out of range")
        }
        guard numHeads % numKVHeads == 0 else {
            throw .invalid(source: source, field: "num_key_value_heads", detail: "\(numKVHeads) does not divide num_attention_heads \(numHeads)")
        }
        guard rmsNormEps > 0, rmsNormEps.isFinite else { throw .invalid(source: source, field: "rms_norm_eps", detail: "\(rmsNormEps)") }
        guard ropeTheta > 0, ropeTheta.isFinite else { throw .invalid(source: source, field: "rope_theta", detail: "\(ropeTheta)") }
    }
}

public enum ModelConfigError: Error, Equatable, CustomStringConvertible {
    case invalid(source: String, field: String, detail: String)
    case missing(source: String, field: String)
    case unsupportedArchitecture(source: String, architecture: String)

    public var description: String {
        switch self {
        case let .invalid(source, field, detail): "\(source): \(field): \(detail)"
        case let .missing(source, field): "\(source): \(field) is missing"
        case let .unsupportedArchitecture(source, architecture):
            "\(source): architecture '\(architecture)' is not supported; qlora runs these families: \(ModelFamily.supportedNames)"
        }
    }
}

extension ModelConfig {
    /// From a Hugging Face config.json.
    public init(huggingFaceConfig data: Data, source: String) throws {
        try self.init(huggingFaceJSON: data, source: source)
        try validate(source: source)
    }

    private init(huggingFaceJSON data: Data, source: String) throws {
        let any = try JSONSerialization.jsonObject(with: data)
        guard let j = any as? [String: Any] else { throw ModelConfigError.invalid(source: source, field: "(root)", detail: "not a JSON object") }
        func int(_ key: String) throws -> Int? {
            guard let v = j[key], !(v is NSNull) else { return nil }
            guard let n = v as? Int else { throw ModelConfigError.invalid(source: source, field: key, detail: "\(v) is not an integer") }
            return n
        }
        func float(_ key: String) throws -> Float? {
            guard let v = j[key], !(v is NSNull) else { return nil }
            guard let n = v as? Double else { throw ModelConfigError.invalid(source: source, field: key, detail: "\(v) is not a number") }
            return Float(n)
        }
        func required(_ key: String) throws -> Int {
            guard let v = try int(key) else { throw ModelConfigError.missing(source: source, field: key) }
            return v
        }
        let modelType = (j["model_type"] as? String) ?? "llama"
        guard let family = ModelFamily.named(modelType) else {
            throw ModelConfigError.unsupportedArchitecture(source: source, architecture: modelType)
        }
        let hidden = try required("hidden_size"), heads = try required("num_attention_heads")
        // transformers ≥ 5 nests rope_theta and the scaling under rope_parameters; older
        // configs have rope_theta and rope_scaling at the top level.
        let ropeParameters = j["rope_parameters"] as? [String: Any]
        var scaling: RopeScaling?
        if let rs = (j["rope_scaling"] as? [String: Any]) ?? ropeParameters {
            let type = (rs["rope_type"] as? String) ?? (rs["type"] as? String) ?? "default"
            if type != "default" {
                scaling = RopeScaling(type: type, factor: Float((rs["factor"] as? Double) ?? 1),
                                      lowFreqFactor: (rs["low_freq_factor"] as? Double).map(Float.init),
                                      highFreqFactor: (rs["high_freq_factor"] as? Double).map(Float.init),
                                      originalMaxPositionEmbeddings: rs["original_max_position_embeddings"] as? Int)
            }
        }
        let ropeTheta = try float("rope_theta") ?? (ropeParameters?["rope_theta"] as? Double).map(Float.init) ?? 10000
        self.init(architecture: modelType, hiddenSize: hidden, intermediateSize: try required("intermediate_size"),
                  numLayers: try required("num_hidden_layers"), numHeads: heads,
                  numKVHeads: try int("num_key_value_heads") ?? heads, headDim: try int("head_dim") ?? (heads > 0 ? hidden / heads : 0),
                  vocabSize: try required("vocab_size"), rmsNormEps: try float("rms_norm_eps") ?? 1e-6,
                  ropeTheta: ropeTheta, ropeScaling: scaling,
                  maxPositionEmbeddings: try int("max_position_embeddings") ?? 2048,
                  tieWordEmbeddings: (j["tie_word_embeddings"] as? Bool) ?? false, attentionBias: (j["attention_bias"] as? Bool) ?? false)
        try validateDimensions(source: source)
        try family.readHuggingFaceConfig(&self, j, source)
    }

    /// From GGUF metadata (`general.architecture` and its `<arch>.*` keys), as llama.cpp writes them.
    public init(gguf: GGUFFile) throws {
        let source = gguf.file.path
        guard let arch = gguf.metadata["general.architecture"]?.string else {
            throw ModelConfigError.missing(source: source, field: "general.architecture")
        }
        guard let family = ModelFamily.named(arch) else { throw ModelConfigError.unsupportedArchitecture(source: source, architecture: arch) }
        func int(_ key: String) -> Int? { gguf.metadata["\(arch).\(key)"]?.int }
        func required(_ key: String) throws -> Int {
            guard let v = int(key) else { throw ModelConfigError.missing(source: source, field: "\(arch).\(key)") }
            return v
        }
        func float(_ key: String) -> Float? { gguf.metadata["\(arch).\(key)"]?.double.map(Float.init) }
        let hidden = try required("embedding_length"), heads = try required("attention.head_count")
        let vocab = int("vocab_size") ?? gguf.metadata["tokenizer.ggml.tokens"]?.array?.count
            ?? gguf.tensor("token_embd.weight")?.ne.last
        guard let vocab else { throw ModelConfigError.missing(source: source, field: "\(arch).vocab_size") }
        var scaling: RopeScaling?
        if let type = gguf.metadata["\(arch).rope.scaling.type"]?.string, type != "none" {
            scaling = RopeScaling(type: type, factor: float("rope.scaling.factor") ?? 1, lowFreqFactor: nil, highFreqFactor: nil,
                                  originalMaxPositionEmbeddings: int("rope.scaling.original_context_length"))
        }
        self.init(architecture: arch, hiddenSize: hidden, intermediateSize: try required("feed_forward_length"),
                  numLayers: try required("block_count"), numHeads: heads, numKVHeads: int("attention.head_count_kv") ?? heads,
                  headDim: int("attention.key_length") ?? (heads > 0 ? hidden / heads : 0), vocabSize: vocab,
                  rmsNormEps: float("attention.layer_norm_rms_epsilon") ?? 1e-5, ropeTheta: float("rope.freq_base") ?? 10000,
                  ropeScaling: scaling, maxPositionEmbeddings: int("context_length") ?? 2048,
                  tieWordEmbeddings: gguf.tensor("output.weight") == nil,
                  attentionBias: gguf.tensor("blk.0.attn_q.bias") != nil)
        architecture = family.modelTypes[0]
        try validateDimensions(source: source)
        try family.readGGUF(&self, gguf, arch, source)
        try validate(source: source)
    }
}
