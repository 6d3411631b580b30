import Foundation

/// A model family: everything qlora knows of one architecture, in one value, declared in the
/// family's own file (Llama.swift, Mistral.swift, Qwen2.swift, Qwen3.swift, …) and found by
/// `ModelFamily.named(_:)` from a Hugging Face `model_type` or a GGUF `general.architecture`.
///
/// What the rest of the package asks a family:
///   - its names: the HF `model_type`s and GGUF architectures it reads, what export writes;
///   - its tensors: one table of block tensors (HF suffix ↔ GGUF suffix ↔ role) and the
///     globals; its linears (the PEFT target names, `all-linear`), their shapes; its norms;
///   - its block: the forward/backward it runs (`block`), composed from the shared ops;
///   - its GGUF quirks: whether llama.cpp's converter permuted q/k rows for rotary order.
/// Adding a family is its file, a line in `all`, a fixture and the README.
public struct ModelFamily: Sendable {
    /// Short name, as errors and `qlora info` print it.
    public let name: String
    /// Hugging Face `model_type` values read as this family.
    public let modelTypes: [String]
    /// GGUF `general.architecture` values read as this family.
    public let ggufArchitectures: [String]
    /// What a merged Hugging Face export declares: `architectures` and `model_type`.
    public let huggingFaceArchitecture: String
    /// transformers' sequence-classification class of the family (a reward model's export):
    /// `<Family>ForSequenceClassification`, Gemma 3's text model's `Gemma3TextForSequenceClassification`.
    public var huggingFaceSequenceClassifier: String {
        huggingFaceModelType == "gemma3_text" ? "Gemma3TextForSequenceClassification"
            : huggingFaceArchitecture.replacingOccurrences(of: "ForCausalLM", with: "ForSequenceClassification")
    }
    public let huggingFaceModelType: String
    /// What a GGUF export declares as `general.architecture` (its `<arch>.*` keys follow).
    public let ggufArchitecture: String
    /// The linears of one block in a fixed order (the order of adapters in files and of
    /// dropout streams): PEFT's target names are their last path components, and `all-linear`
    /// is all of them.
    public let linears: [LinearSpec]
    /// The RMSNorms of one block (HF path below `model.layers.N.`, GGUF suffix, size).
    public let norms: [NormSpec]
    /// Other per-block tensors (biases), fp32.
    public let extras: [TensorSpec]
    /// Whether llama.cpp's converter reorders q/k rows within heads for this architecture.
    public let ggufPermutesQK: Bool
    /// The decoder block this family runs.
    let block: any DecoderBlock.Type
    /// Reads the family's own config.json keys into a config whose common fields are read
    /// (throws `ModelConfigError` naming the field).
    let readHuggingFaceConfig: @Sendable (_ config: inout ModelConfig, _ json: [String: Any], _ source: String) throws -> Void
    /// The same from GGUF metadata (`<arch>.*` keys).
    let readGGUF: @Sendable (_ config: inout ModelConfig, _ gguf: GGUFFile, _ arch: String, _ source: String) throws -> Void
    /// config.json keys of the family that a merged export writes beside the common ones.
    let huggingFaceKeys: @Sendable (_ config: ModelConfig) -> [String: Any]

    /// What Hugging Face files store of every RMSNorm weight w when the model computes with
    /// x̂·(offset + w): Gemma stores w and computes x̂·(1 + w); GGUF files store 1 + w. qlora
    /// computes with the effective weight (the file's plus this offset for Hugging Face files).
    var huggingFaceNormOffset: Float = 0

    /// A norm weight as the model computes with it, from the value a Hugging Face file or PEFT
    /// adapter holds (Gemma: 1 + w; the value itself elsewhere).
    func effectiveNorm(fromHuggingFace w: [Float]) -> [Float] {
        huggingFaceNormOffset == 0 ? w : w.map { $0 + huggingFaceNormOffset }
    }

    /// The inverse: what a Hugging Face file or PEFT adapter holds for a norm the model
    /// computes with (what a GGUF stores).
    func huggingFaceNorm(fromEffective w: [Float]) -> [Float] {
        huggingFaceNormOffset == 0 ? w : w.map { $0 - huggingFaceNormOffset }
    }
    /// The gated MLP's activation: SwiGLU (silu) or GeGLU (tanh-GELU, Gemma).
    var activation: GatedActivation = .silu

    /// The `<arch>.*` GGUF keys beyond the common ones that a GGUF export built from a folder
    /// writes, as convert_hf_to_gguf writes them; notes what llama.cpp's architecture cannot hold.
    var ggufKeys: @Sendable (_ config: ModelConfig, _ arch: String, _ note: (String) -> Void) -> [(key: String, value: GGUFValue)] = { _, _, _ in [] }

    /// Nothing to read or write beyond the common keys.
    static let noExtraHuggingFaceKeys: @Sendable (inout ModelConfig, [String: Any], String) throws -> Void = { _, _, _ in }
    static let noExtraGGUFKeys: @Sendable (inout ModelConfig, GGUFFile, String, String) throws -> Void = { _, _, _, _ in }
    static let noHuggingFaceKeys: @Sendable (ModelConfig) -> [String: Any] = { _ in [:] }

    /// Every family qlora runs. A new family is one more line here.
    public static let all: [ModelFamily] = [.llama, .mistral, .qwen2, .qwen3, .gemma2, .gemma3, .phi3]

    /// The family of a `model_type` or GGUF architecture, or nil.
    public static func named(_ name: String) -> ModelFamily? {
        all.first { $0.modelTypes.contains(name) || $0.ggufArchitectures.contains(name) }
    }

    /// The names `named(_:)` knows, for error messages.
    public static var supportedNames: String {
        all.map { "\($0.name) (\(Set($0.modelTypes + $0.ggufArchitectures).sorted().joined(separator: ", ")))" }
            .joined(separator: "; ")
    }

    /// Every per-block tensor with its HF and GGUF suffixes and role.
    var blockTensors: [(gguf: String, hf: String, role: TensorRole)] {
        norms.map { ($0.gguf + ".weight", $0.path + ".weight", .norm) }
            + linears.map { ($0.gguf + ".weight", $0.path + ".weight", $0.role) }
            + extras.map { ($0.gguf, $0.hf, $0.role) }
    }

    /// The linear named `name`: its PEFT target name (`q_proj`), block path (`self_attn.q_proj`)
    /// or GGUF name (`attn_q`).
    public func linear(named name: String) -> LinearSpec? {
        linears.first { $0.name == name || $0.path == name || $0.gguf == name }
    }

    /// The widest output of the family's fused linears, whose outputs are split after the
    /// product (Phi-3's qkv_proj and gate_up_proj); nil when it has none.
    func fusedWidth(_ c: ModelConfig) -> Int? {
        linears.filter { $0.rows == .fusedQKV || $0.rows == .fusedGateUp }.map { $0.rows.size(in: c) }.max()
    }

    /// Whether q and k have per-head RMSNorms (Qwen3, Gemma 3): the blocks keep q and k
    /// before them and their rstd.
    var hasQKNorms: Bool { norm(NormSpec.qNorm.path) != nil }

    /// Whether each sublayer's output is normed before the residual add (Gemma's sandwich).
    var hasSandwichNorms: Bool { norm(NormSpec.postFeedforward.path) != nil }

    /// The norm at `path` below the block (`input_layernorm`).
    public func norm(_ path: String) -> NormSpec? { norms.first { $0.path == path } }
}

/// The activation of a gated MLP, act(gate) ⊙ up.
public enum GatedActivation: String, Sendable {
    case silu, geluTanh
}

/// The shared tensors of every family: embedding, final norm, LM head.
let globalTensors: [(gguf: String, hf: String, role: TensorRole)] = [
    ("token_embd.weight", "model.embed_tokens.weight", .embedding),
    ("output_norm.weight", "model.norm.weight", .norm),
    ("output.weight", "lm_head.weight", .lmHead),
]

/// A size in a model of some configuration, for shapes declared before a config is at hand.
public enum Dimension: Sendable, Hashable {
    case hidden, intermediate, queries, keyValues, headDim
    /// q, k and v rows stacked (Phi-3's qkv_proj); gate and up stacked (gate_up_proj).
    case fusedQKV, fusedGateUp

    public func size(in c: ModelConfig) -> Int {
        switch self {
        case .hidden: c.hiddenSize
        case .intermediate: c.intermediateSize
        case .queries: c.numHeads * c.headDim
        case .keyValues: c.numKVHeads * c.headDim
        case .headDim: c.headDim
        case .fusedQKV: (c.numHeads + 2 * c.numKVHeads) * c.headDim
        case .fusedGateUp: 2 * c.intermediateSize
        }
    }
}

/// One linear of a block, named by its module path below `model.layers.N.` as transformers
/// names it; PEFT targets it by its last component. Its weight is [rows, cols] = [out, in].
public struct LinearSpec: Sendable, Hashable, CustomStringConvertible {
    /// `self_attn.q_proj`
    public let path: String
    /// llama.cpp's name: `attn_q`
    public let gguf: String
    public let rows: Dimension
    public let cols: Dimension
    /// Attention or MLP (what `qlora info` groups by).
    public let role: TensorRole

    public init(_ path: String, gguf: String, rows: Dimension, cols: Dimension, role: TensorRole) {
        self.path = path
        self.gguf = gguf
        self.rows = rows
        self.cols = cols
        self.role = role
    }

    /// PEFT's target name: `q_proj`.
    public var name: String { String(path.split(separator: ".").last!) }
    public var description: String { name }

    /// [out, in] of this linear's weight in a model of shape `c`.
    public func shape(in c: ModelConfig) -> (rows: Int, cols: Int) { (rows.size(in: c), cols.size(in: c)) }

    /// The module's full name as PEFT matches it: `model.layers.3.self_attn.q_proj`.
    public func moduleName(layer: Int) -> String { "model.layers.\(layer).\(path)" }
}

/// An RMSNorm of a block: its path below `model.layers.N.` and its size.
public struct NormSpec: Sendable, Hashable {
    /// `input_layernorm`, `self_attn.q_norm`
    public let path: String
    public let gguf: String
    public let size: Dimension

    public init(_ path: String, gguf: String, size: Dimension = .hidden) {
        self.path = path
        self.gguf = gguf
        self.size = size
    }

    /// The PEFT modules_to_save entry and tensor stem: `input_layernorm`, `q_norm`.
    public var name: String { String(path.split(separator: ".").last!) }
}

/// Any other block tensor (a bias), by full suffix.
public struct TensorSpec: Sendable, Hashable {
    public let hf: String
    public let gguf: String
    public let role: TensorRole
    public let size: Dimension
}

extension TensorSpec {
    /// The q/k/v biases of Qwen2 (and of Llama configs with attention_bias).
    static let qkvBiases: [TensorSpec] = [
        TensorSpec(hf: "self_attn.q_proj.bias", gguf: "attn_q.bias", role: .bias, size: .queries),
        TensorSpec(hf: "self_attn.k_proj.bias", gguf: "attn_k.bias", role: .bias, size: .keyValues),
        TensorSpec(hf: "self_attn.v_proj.bias", gguf: "attn_v.bias", role: .bias, size: .keyValues),
    ]
}

extension LinearSpec {
    /// The seven linears of a Llama block, in the order every file and stream uses.
    public static let q = LinearSpec("self_attn.q_proj", gguf: "attn_q", rows: .queries, cols: .hidden, role: .attentionProjection)
    public static let k = LinearSpec("self_attn.k_proj", gguf: "attn_k", rows: .keyValues, cols: .hidden, role: .attentionProjection)
    public static let v = LinearSpec("self_attn.v_proj", gguf: "attn_v", rows: .keyValues, cols: .hidden, role: .attentionProjection)
    public static let o = LinearSpec("self_attn.o_proj", gguf: "attn_output", rows: .hidden, cols: .queries, role: .attentionProjection)
    public static let gate = LinearSpec("mlp.gate_proj", gguf: "ffn_gate", rows: .intermediate, cols: .hidden, role: .mlpProjection)
    public static let up = LinearSpec("mlp.up_proj", gguf: "ffn_up", rows: .intermediate, cols: .hidden, role: .mlpProjection)
    public static let down = LinearSpec("mlp.down_proj", gguf: "ffn_down", rows: .hidden, cols: .intermediate, role: .mlpProjection)
    public static let llamaBlock: [LinearSpec] = [.q, .k, .v, .o, .gate, .up, .down]
    /// Phi-3's fused projections: rows [q; k; v] and [gate; up].
    public static let qkv = LinearSpec("self_attn.qkv_proj", gguf: "attn_qkv", rows: .fusedQKV, cols: .hidden, role: .attentionProjection)
    public static let gateUp = LinearSpec("mlp.gate_up_proj", gguf: "ffn_up", rows: .fusedGateUp, cols: .hidden, role: .mlpProjection)
}

extension NormSpec {
    public static let input = NormSpec("input_layernorm", gguf: "attn_norm")
    public static let postAttention = NormSpec("post_attention_layernorm", gguf: "ffn_norm")
    /// Per-head RMSNorms of q and k (Qwen3, Gemma 3), D values each.
    public static let qNorm = NormSpec("self_attn.q_norm", gguf: "attn_q_norm", size: .headDim)
    public static let kNorm = NormSpec("self_attn.k_norm", gguf: "attn_k_norm", size: .headDim)
    /// Gemma's sandwich norms: after attention, and before and after the MLP.
    public static let preFeedforward = NormSpec("pre_feedforward_layernorm", gguf: "ffn_norm")
    public static let postFeedforward = NormSpec("post_feedforward_layernorm", gguf: "post_ffw_norm")
    public static let gemmaPostAttention = NormSpec("post_attention_layernorm", gguf: "post_attention_norm")
}
