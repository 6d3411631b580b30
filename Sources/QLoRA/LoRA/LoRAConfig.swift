import Foundation

/// Which linears get adapters, as PEFT's `target_modules` reads.
public enum LoRATargets: Equatable, Sendable, CustomStringConvertible {
    /// Module names: PEFT's suffix match (`q_proj` matches `model.layers.0.self_attn.q_proj`),
    /// GGUF names (`attn_q`) accepted too. Each must be a linear of some family; which of them
    /// a model has is its family's business (a name it lacks adapts nothing there).
    case names([String])
    /// Every linear of every block (PEFT's `all-linear`, which leaves out the LM head).
    case allLinear
    /// A regular expression that must match the whole module name (PEFT's `re.fullmatch`).
    case regex(String)

    /// Parses `--lora-targets`: `all-linear`, a comma-separated list of names, or `re:PATTERN`.
    public init(parsing text: String) throws(LoRAConfigError) {
        let t = text.trimmingCharacters(in: .whitespaces)
        if t == "all-linear" { self = .allLinear; return }
        if t.hasPrefix("re:") {
            let pattern = String(t.dropFirst(3))
            guard (try? NSRegularExpression(pattern: pattern)) != nil else { throw .badRegex(pattern) }
            self = .regex(pattern)
            return
        }
        var found: [String] = []
        for part in t.split(separator: ",").map({ $0.trimmingCharacters(in: .whitespaces) }) where !part.isEmpty {
            guard let m = ModelFamily.all.lazy.compactMap({ $0.linear(named: part) }).first else { throw .unknownTarget(part) }
            if !found.contains(m.name) { found.append(m.name) }
        }
        guard !found.isEmpty else { throw .noTargets(text) }
        self = .names(found)
    }

    /// q, k, v, o, gate, up and down of a Llama-style block (Phi-3's fused qkv_proj and
    /// gate_up_proj take their own names).
    public static let attentionAndMLP = LoRATargets.names(LinearSpec.llamaBlock.map(\.name))

    public func matches(_ m: LinearSpec, layer: Int) -> Bool {
        switch self {
        case .allLinear: return true
        case let .names(list): return list.contains(m.name)
        case let .regex(pattern):
            let name = m.moduleName(layer: layer)
            guard let re = try? NSRegularExpression(pattern: "^(?:\(pattern))$") else { return false }
            return re.firstMatch(in: name, range: NSRange(name.startIndex..., in: name)) != nil
        }
    }

    /// PEFT's `target_modules` value for adapter_config.json.
    public var peftValue: String {
        switch self {
        case .allLinear: "all-linear"
        case let .names(list): list.joined(separator: ",")
        case let .regex(p): p
        }
    }

    public var description: String {
        switch self {
        case .allLinear: "all-linear"
        case let .names(list): list.joined(separator: ",")
        case let .regex(p): "re:\(p)"
        }
    }
}

/// A LoRA configuration as PEFT's LoraConfig holds it: W' = W + scale · B·A with A [r, in],
/// B [out, r], scale = alpha / r (or alpha / √r with rsLoRA), dropout on the adapter's input,
/// no bias; with `useDoRA` PEFT's DoRA, W' = m ⊙ (W + scale·B·A) / ‖W + scale·B·A‖ per output row.
public struct LoRAConfig: Equatable, Sendable {
    public var rank: Int
    public var alpha: Float
    public var dropout: Float
    public var targets: LoRATargets
    /// Adapt only the last N blocks (`--lora-layers`); nil adapts all.
    public var lastLayers: Int?
    /// Adapt only these blocks, in increasing order (PEFT's `layers_to_transform` when it is not
    /// the last N); nil adapts all. At most one of `lastLayers` and `layerIndices` is set.
    public var layerIndices: [Int]?
    public var useRSLoRA: Bool
    /// DoRA (PEFT's `use_dora`): a trained magnitude per output row (`LoRAAdapter.magnitude`).
    public var useDoRA: Bool
    /// How a new adapter's A is drawn: PEFT's default or `gaussian` (the initializations that
    /// take A and B from W are prepared beforehand: `LoRAInitialization.prepare`).
    public var initialization: LoRAInitialization = .kaiming

    public init(rank: Int = 16, alpha: Float = 32, dropout: Float = 0, targets: LoRATargets = .attentionAndMLP,
                lastLayers: Int? = nil, layerIndices: [Int]? = nil, useRSLoRA: Bool = false, useDoRA: Bool = false) {
        self.rank = rank
        self.alpha = alpha
        self.dropout = dropout
        self.targets = targets
        self.lastLayers = lastLayers
        self.layerIndices = layerIndices
        self.useRSLoRA = useRSLoRA
        self.useDoRA = useDoRA
    }

    /// alpha / r, or alpha / √r with rsLoRA (PEFT computes it in Python floats, then uses it
    /// as an fp32 multiplier).
    public var scale: Float {
        useRSLoRA ? Float(Double(alpha) / Double(rank).squareRoot()) : Float(Double(alpha) / Double(rank))
    }

    public func validate(layers: Int) throws(LoRAConfigError) {
        guard rank > 0 else { throw .badRank(rank) }
        guard alpha.isFinite, alpha > 0 else { throw .badAlpha(alpha) }
        guard dropout >= 0, dropout < 1 else { throw .badDropout(dropout) }
        if let n = lastLayers { guard n > 0, n <= layers else { throw .badLayers(n, layers) } }
        if let list = layerIndices {
            guard lastLayers == nil else { throw .lastLayersAndIndices }
            guard !list.isEmpty else { throw .noLayerIndices }
            for (i, l) in list.enumerated() {
                guard (0..<layers).contains(l) else { throw .badLayerIndex(l, layers) }
                guard i == 0 || list[i - 1] < l else { throw .unsortedLayerIndices(list) }
            }
        }
    }

    /// The block indices that get adapters, in increasing order.
    public func adaptedLayers(of count: Int) -> [Int] {
        if let layerIndices { return layerIndices.filter { (0..<count).contains($0) } }
        return Array((count - min(lastLayers ?? count, count))..<count)
    }
}

public enum LoRAConfigError: Error, Equatable, CustomStringConvertible {
    /// Every family's linear names, sorted.
    static var linearNames: String { Array(Set(ModelFamily.all.flatMap { $0.linears.map(\.name) })).sorted().joined(separator: ", ") }

    case badRank(Int), badAlpha(Float), badDropout(Float), badLayers(Int, Int)
    case badLayerIndex(Int, Int), unsortedLayerIndices([Int]), noLayerIndices, lastLayersAndIndices
    case unknownTarget(String), noTargets(String), badRegex(String)
    case nothingAdapted(String)

    public var description: String {
        switch self {
        case let .badRank(r): "--lora-r must be a positive integer, got \(r)"
        case let .badAlpha(a): "--lora-alpha must be positive, got \(a)"
        case let .badDropout(p): "--lora-dropout must be in [0, 1), got \(p)"
        case let .badLayers(n, l): "--lora-layers \(n): the model has \(l) blocks"
        case let .badLayerIndex(i, l): "layers_to_transform names block \(i): the model has \(l) blocks (0 ..< \(l))"
        case let .unsortedLayerIndices(list): "layers_to_transform \(list) must be increasing, without repeats"
        case .noLayerIndices: "layers_to_transform is an empty list: no block would be adapted"
        case .lastLayersAndIndices: "a LoRA configuration takes the last N blocks or a list of blocks, not both"
        case let .unknownTarget(t): "unknown LoRA target '\(t)': use a linear's name (" + Self.linearNames
            + ", or llama.cpp's attn_q … ffn_down), all-linear, or re:PATTERN"
        case let .noTargets(t): "no LoRA targets in '\(t)'"
        case let .badRegex(p): "LoRA target pattern '\(p)' is not a valid regular expression"
        case let .nothingAdapted(t): "LoRA targets '\(t)' match no linear of the model"
        }
    }
}
