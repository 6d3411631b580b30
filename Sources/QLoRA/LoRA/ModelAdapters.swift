import Foundation
import Quant

/// The trainable part of a model: LoRA adapters on the target linears of the adapted layers,
/// and with `trainNorms` every RMSNorm weight of its family (fp32 copies of the frozen values).
/// Embeddings and base linears stay frozen and have no gradient buffers.
public final class ModelAdapters: @unchecked Sendable {
    public let config: LoRAConfig
    public let trainsNorms: Bool
    /// One per decoder layer (empty where nothing trains).
    public let layers: [LayerAdapters]
    /// model.norm.weight with `trainNorms`.
    public let finalNorm: Parameter?
    /// A reward model's score head, `score.weight` [1, hidden] (PEFT's modules_to_save `score`
    /// of a sequence-classification model), when these adapters train one.
    public let scoreHead: Parameter?
    /// Every trainable tensor, in a fixed order: per layer its adapters (in the family's order
    /// of linears; A, B, then DoRA's magnitude), then its norms (the family's order); the final norm, then the
    /// score head last. Stacked adapters are not among them.
    public let parameters: [Parameter]
    /// Adapters stacked frozen on these (`stacking`), by name, in the order they apply.
    public let stacked: [(name: String, adapters: ModelAdapters)]

    /// Adapters initialized as PEFT does (A Kaiming-uniform from one SplitMix64 seeded with
    /// `seed`, drawn layer by layer in the order of `parameters`; B zero; DoRA's magnitude
    /// ‖W_j‖, PEFT's too). With `scoreHead`, a
    /// score head too, N(0, 0.02²) as transformers initializes `score` (from a stream of its
    /// own, so the adapters' values do not depend on it).
    public init(model: DecoderModel, config: LoRAConfig, trainNorms: Bool = false, scoreHead: Bool = false, seed: UInt64) throws(LoRAConfigError) {
        let c = model.config
        try config.validate(layers: c.numLayers)
        self.config = config
        trainsNorms = trainNorms
        family = c.family
        var rng = SplitMix64(seed: seed)
        let adapted = config.adaptedLayers(of: c.numLayers)
        var layers: [LayerAdapters] = []
        var parameters: [Parameter] = []
        let family = c.family
        for (l, w) in model.weights.layers.enumerated() {
            var layer = LayerAdapters()
            if adapted.contains(l) {
                for m in family.linears where config.targets.matches(m, layer: l) {
                    let base = w.matrix(m)
                    let adapter = LoRAAdapter(name: m.moduleName(layer: l), rows: base.rows, cols: base.cols, config: config, rng: &rng,
                                              base: base)
                    layer.adapters[m] = adapter
                    parameters += [adapter.a, adapter.b] + (adapter.magnitude.map { [$0] } ?? [])
                }
            }
            if trainNorms {
                for s in family.norms {
                    let p = Parameter(name: "model.layers.\(l).\(s.path).weight", shape: [s.size.size(in: c)], values: w[s].weight)
                    layer.norms[s.path] = p
                    parameters.append(p)
                }
            }
            layers.append(layer)
        }
        guard parameters.contains(where: { $0.name.contains(".lora_") }) || trainNorms else {
            throw .nothingAdapted(config.targets.description)
        }
        finalNorm = trainNorms ? Parameter(name: "model.norm.weight", shape: [c.hiddenSize], values: model.weights.finalNorm) : nil
        if let finalNorm { parameters.append(finalNorm) }
        if scoreHead {
            var g = SplitMix64(seed: seed ^ 0x5C0E_4EAD_0000_0001)
            let head = Parameter(name: Self.scoreHeadName, shape: [1, c.hiddenSize], values: (0..<c.hiddenSize).map { _ in
                // Box–Muller: one normal from two uniforms (u1 in (0, 1]).
                let u1 = 1 - g.nextUnitDouble(), u2 = g.nextUnitDouble()
                return Float(0.02 * (-2 * log(u1)).squareRoot() * cos(2 * Double.pi * u2))
            })
            self.scoreHead = head
            parameters.append(head)
        } else {
            self.scoreHead = nil
        }
        self.layers = layers
        self.parameters = parameters
        stacked = []
    }

    /// These adapters with `others` stacked on them frozen, PEFT's several active adapters:
    ///   y = W·x + s·B·A·x + Σ_i s_i·B_i·A_i·x
    /// The result shares this value's parameters (training it trains them; saving it saves
    /// only them); the others add their deltas in every forward and pass the input gradient in
    /// the backward, without dropout or gradients. They must come from the same base; trained
    /// norms replace the base's rather than add to it, so only this value may carry them.
    public func stacking(_ others: [(name: String, adapters: ModelAdapters)]) throws(AdapterStackError) -> ModelAdapters {
        var layers = self.layers
        for (name, other) in others {
            guard other.layers.count == layers.count else {
                throw .differentBase(name: name, blocks: other.layers.count, expected: layers.count)
            }
            guard !other.trainsNorms else { throw .trainedNorms(name: name) }
            guard !other.config.useDoRA else { throw .dora(name: name) }
            for (l, layer) in other.layers.enumerated() {
                for (m, a) in layer.adapters { layers[l].frozen[m, default: []].append(a) }
                for (m, list) in layer.frozen { layers[l].frozen[m, default: []] += list }
            }
        }
        return ModelAdapters(config: config, trainsNorms: trainsNorms, layers: layers, finalNorm: finalNorm, scoreHead: scoreHead,
                             parameters: parameters, stacked: stacked + others.flatMap { [$0] + $0.adapters.stacked }, family: family)
    }

    /// No adapters at all: the base model as it is (the reference of DPO with the adapter off,
    /// as PEFT's `disable_adapter`).
    public static func disabled(for model: DecoderModel) -> ModelAdapters {
        ModelAdapters(config: LoRAConfig(rank: 1, alpha: 1, targets: .names([])), trainsNorms: false,
                      layers: [LayerAdapters](repeating: LayerAdapters(), count: model.config.numLayers), finalNorm: nil, scoreHead: nil,
                      parameters: [], stacked: [], family: model.config.family)
    }

    /// The score head's parameter name, as PEFT saves it (after `base_model.model.`).
    public static let scoreHeadName = "score.weight"

    private init(config: LoRAConfig, trainsNorms: Bool, layers: [LayerAdapters], finalNorm: Parameter?, scoreHead: Parameter?,
                 parameters: [Parameter], stacked: [(name: String, adapters: ModelAdapters)], family: ModelFamily) {
        self.family = family
        self.config = config
        self.trainsNorms = trainsNorms
        self.layers = layers
        self.finalNorm = finalNorm
        self.scoreHead = scoreHead
        self.parameters = parameters
        self.stacked = stacked
    }

    /// One adapter per linear that has one in any layer: room in shared activations.
    var everyAdaptedLinear: LayerAdapters {
        var all = LayerAdapters()
        for layer in layers { all.adapters.merge(layer.adapters) { a, _ in a } }
        return all
    }

    /// Elements that train.
    public var trainableCount: Int { parameters.reduce(0) { $0 + $1.count } }

    /// Every adapter with its layer and linear.
    public var adapters: [(layer: Int, linear: LinearSpec, adapter: LoRAAdapter)] {
        layers.enumerated().flatMap { l, layer in
            order.compactMap { m in layer.adapters[m].map { (l, m, $0) } }
        }
    }

    /// The linears adapters may sit on, in the family's order.
    public var order: [LinearSpec] { family.linears }
    /// The family of the model these adapters were made for.
    public let family: ModelFamily

    /// PEFT's `print_trainable_parameters` line. `baseCount`: the frozen model's elements
    /// (every linear, embedding, head and norm, counted once when tied).
    public func summaryLine(baseCount: Int) -> String {
        let trainable = trainableCount
        // Trainable norms replace frozen ones of the same size: count them once, as PEFT does.
        let all = baseCount + parameters.filter { $0.name.contains(".lora_") || $0 === scoreHead }.reduce(0) { $0 + $1.count }
        return "trainable params: \(Self.grouped(trainable)) || all params: \(Self.grouped(all)) || trainable%: "
            + String(format: "%.4f", 100 * Double(trainable) / Double(all))
    }

    public static func grouped(_ n: Int) -> String {
        let digits = Array(String(n))
        var out = ""
        for (i, d) in digits.enumerated() {
            if i > 0, (digits.count - i) % 3 == 0 { out.append(",") }
            out.append(d)
        }
        return out
    }
}

public enum AdapterStackError: Error, Equatable, CustomStringConvertible {
    case differentBase(name: String, blocks: Int, expected: Int)
    case trainedNorms(name: String)
    case dora(name: String)
    case duplicateName(String, first: String, second: String)
    case unknownName(String, loaded: [String])
    case listedTwice(String)

    public var description: String {
        switch self {
        case let .differentBase(name, blocks, expected): "adapter '\(name)' was built for a model of \(blocks) blocks, this one has \(expected)"
        case let .trainedNorms(name): "adapter '\(name)' trains RMSNorm weights (modules_to_save), which replace the base's "
            + "rather than add to it: only the first adapter of a stack may carry them; list it first"
        case let .dora(name): "adapter '\(name)' is a DoRA adapter, which rescales the base's rows rather than adding to them: "
            + "it cannot be stacked frozen under another; merge it into the base first (qlora merge) and train on the merged model"
        case let .duplicateName(name, first, second): "two adapters are named '\(name)' (\(first) and \(second)); "
            + "name them apart with NAME=DIR"
        case let .listedTwice(name): "adapter '\(name)' is listed twice in one stack"
        case let .unknownName(name, loaded): "no adapter named '\(name)' is loaded (loaded: \(loaded.joined(separator: ", ")))"
        }
    }
}

extension DecoderModel {
    /// Bytes of the frozen weights as held: 4-bit linears, token matrices, norms.
    public var frozenBytes: Int {
        var n = weights.embedding.byteCount + weights.finalNorm.count * 4
        if !config.tieWordEmbeddings { n += weights.lmHead.byteCount }
        for w in weights.layers {
            n += w.linears.values.reduce(0) { $0 + $1.weight.byteCount + ($1.bias?.count ?? 0) * 4 }
            n += w.norms.values.reduce(0) { $0 + $1.weight.count * 4 }
        }
        return n
    }

    /// Elements of the frozen model, as PEFT counts "all params" (a tied head counted once).
    public var parameterCount: Int {
        let c = config
        var n = c.vocabSize * c.hiddenSize * (c.tieWordEmbeddings ? 1 : 2) + c.hiddenSize
        for w in weights.layers {
            n += w.linears.values.reduce(0) { $0 + $1.weight.count + ($1.bias?.count ?? 0) }
            n += w.norms.values.reduce(0) { $0 + $1.weight.count }
        }
        return n
    }
}
