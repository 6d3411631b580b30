import Foundation
import Quant

/// The trainable part of a Llama model: LoRA adapters on the target linears of the adapted
/// layers, and with `trainNorms` every RMSNorm weight (fp32 copies of the frozen values).
/// Embeddings and base linears stay frozen and have no gradient buffers.
public final class LlamaLoRA: @unchecked Sendable {
    public let config: LoRAConfig
    public let trainsNorms: Bool
    /// One per decoder layer (empty where nothing trains).
    public let layers: [LlamaLayerLoRA]
    /// model.norm.weight with `trainNorms`.
    public let finalNorm: Parameter?
    /// Every trainable tensor, in a fixed order: per layer its adapters (q … down; A then B),
    /// then its two norms; the final norm last.
    public let parameters: [Parameter]

    /// Adapters initialized as PEFT does (A Kaiming-uniform from one SplitMix64 seeded with
    /// `seed`, drawn layer by layer in the order of `parameters`; B zero).
    public init(model: LlamaModel, config: LoRAConfig, trainNorms: Bool = false, seed: UInt64) throws(LoRAConfigError) {
        let c = model.config
        try config.validate(layers: c.numLayers)
        self.config = config
        trainsNorms = trainNorms
        var rng = SplitMix64(seed: seed)
        let adapted = config.adaptedLayers(of: c.numLayers)
        var layers: [LlamaLayerLoRA] = []
        var parameters: [Parameter] = []
        for (l, w) in model.weights.layers.enumerated() {
            var layer = LlamaLayerLoRA()
            if adapted.contains(l) {
                for m in LlamaLinear.allCases where config.targets.matches(m, layer: l) {
                    let base = w.linear(m)
                    let adapter = LoRAAdapter(name: m.moduleName(layer: l), rows: base.rows, cols: base.cols, config: config, rng: &rng)
                    layer.adapters[m] = adapter
                    parameters += [adapter.a, adapter.b]
                }
            }
            if trainNorms {
                layer.attentionNorm = Parameter(name: "model.layers.\(l).input_layernorm.weight", shape: [c.hiddenSize],
                                                values: w.attentionNorm)
                layer.mlpNorm = Parameter(name: "model.layers.\(l).post_attention_layernorm.weight", shape: [c.hiddenSize],
                                          values: w.mlpNorm)
                parameters += [layer.attentionNorm!, layer.mlpNorm!]
            }
            layers.append(layer)
        }
        guard parameters.contains(where: { $0.name.contains(".lora_") }) || trainNorms else {
            throw .nothingAdapted(config.targets.description)
        }
        finalNorm = trainNorms ? Parameter(name: "model.norm.weight", shape: [c.hiddenSize], values: model.weights.finalNorm) : nil
        if let finalNorm { parameters.append(finalNorm) }
        self.layers = layers
        self.parameters = parameters
    }

    /// One adapter per linear that has one in any layer: room in shared activations.
    var everyAdaptedLinear: LlamaLayerLoRA {
        var all = LlamaLayerLoRA()
        for layer in layers { all.adapters.merge(layer.adapters) { a, _ in a } }
        return all
    }

    /// Elements that train.
    public var trainableCount: Int { parameters.reduce(0) { $0 + $1.count } }

    /// Every adapter with its layer and linear.
    public var adapters: [(layer: Int, linear: LlamaLinear, adapter: LoRAAdapter)] {
        layers.enumerated().flatMap { l, layer in
            LlamaLinear.allCases.compactMap { m in layer.adapters[m].map { (l, m, $0) } }
        }
    }

    /// PEFT's `print_trainable_parameters` line. `baseCount`: the frozen model's elements
    /// (every linear, embedding, head and norm, counted once when tied).
    public func summaryLine(baseCount: Int) -> String {
        let trainable = trainableCount
        // Trainable norms replace frozen ones of the same size: count them once, as PEFT does.
        let all = baseCount + parameters.filter { $0.name.contains(".lora_") }.reduce(0) { $0 + $1.count }
        return "trainable params: \(Self.grouped(trainable)) || all params: \(Self.grouped(all)) || trainable%: "
            + String(format: "%.4f", 100 * Double(trainable) / Double(all))
    }

    static func grouped(_ n: Int) -> String {
        let digits = Array(String(n))
        var out = ""
        for (i, d) in digits.enumerated() {
            if i > 0, (digits.count - i) % 3 == 0 { out.append(",") }
            out.append(d)
        }
        return out
    }
}

extension LlamaLayerWeights {
    /// The frozen weight of linear `m`.
    public func linear(_ m: LlamaLinear) -> QuantizedMatrix {
        switch m {
        case .q: q
        case .k: k
        case .v: v
        case .o: o
        case .gate: gate
        case .up: up
        case .down: down
        }
    }
}

extension LlamaModel {
    /// Bytes of the frozen weights as held: 4-bit linears, token matrices, norms.
    public var frozenBytes: Int {
        var n = weights.embedding.byteCount + weights.finalNorm.count * 4
        if !config.tieWordEmbeddings { n += weights.lmHead.byteCount }
        for w in weights.layers {
            n += LlamaLinear.allCases.reduce(0) { $0 + w.linear($1).byteCount } + (w.attentionNorm.count + w.mlpNorm.count) * 4
        }
        return n
    }

    /// Elements of the frozen model, as PEFT counts "all params" (a tied head counted once).
    public var parameterCount: Int {
        let c = config
        var n = c.vocabSize * c.hiddenSize * (c.tieWordEmbeddings ? 1 : 2) + c.hiddenSize
        for w in weights.layers {
            n += LlamaLinear.allCases.reduce(0) { $0 + w.linear($1).count }
            n += w.attentionNorm.count + w.mlpNorm.count
            n += (w.qBias?.count ?? 0) + (w.kBias?.count ?? 0) + (w.vBias?.count ?? 0)
        }
        return n
    }
}
