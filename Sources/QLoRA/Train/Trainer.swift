import Foundation
import Quant
import QuantKernels

/// A batch for the loss: B sequences of T tokens, row-major [B, T], and Hugging Face labels
/// (aligned with the inputs; the loss shifts them: position t predicts labels[t + 1]; −100 is
/// not scored). Preference batches say which rows pair up (`pairs`).
public struct TokenBatch: Sendable {
    public var inputIds: [Int32]
    public var labels: [Int32]
    public var sequences: Int
    public var length: Int
    /// [B]: each row's real length (its last real token is at length − 1; padding follows).
    public var lengths: [Int]
    /// Rows 0..<P are the chosen sides of P pairs and rows P..<2P their rejected sides; nil for
    /// a batch of independent sequences.
    public var pairs: PairRows?

    /// What a preference batch carries besides its rows. Legend: P pairs.
    public struct PairRows: Sendable, Equatable {
        /// P.
        public var count: Int
        /// [P]: each pair's margin (0 where it has none).
        public var margins: [Float]
        /// [2P]: the reference model's log-probability of each row's completion (chosen sides,
        /// then rejected), where the objective needs one (DPO); nil before they are computed.
        public var reference: [Double]?

        public init(count: Int, margins: [Float]? = nil, reference: [Double]? = nil) {
            precondition(count > 0 && (margins?.count ?? count) == count && (reference?.count ?? 2 * count) == 2 * count,
                         "\(count) pairs need \(count) margins and \(2 * count) reference log-probabilities")
            self.count = count
            self.margins = margins ?? [Float](repeating: 0, count: count)
            self.reference = reference
        }
    }

    public init(inputIds: [Int32], labels: [Int32], sequences: Int, length: Int, lengths: [Int]? = nil, pairs: PairRows? = nil) {
        precondition(inputIds.count == sequences * length && labels.count == inputIds.count,
                     "a batch of \(sequences) × \(length) needs \(sequences * length) ids and labels")
        precondition(lengths.map { $0.count == sequences && $0.allSatisfy { (1...length).contains($0) } } ?? true,
                     "a batch of \(sequences) × \(length) needs \(sequences) lengths in 1...\(length)")
        precondition(pairs.map { 2 * $0.count == sequences } ?? true, "\(pairs?.count ?? 0) pairs need \(2 * (pairs?.count ?? 0)) rows, not \(sequences)")
        self.inputIds = inputIds
        self.labels = labels
        self.sequences = sequences
        self.length = length
        self.lengths = lengths ?? [Int](repeating: length, count: sequences)
        self.pairs = pairs
    }

    /// Targets per position after the shift: labels[b, t + 1], −100 at each sequence's end.
    public var shiftedTargets: [Int32] {
        var out = [Int32](repeating: -100, count: labels.count)
        for b in 0..<sequences {
            for t in 0..<(length - 1) { out[b * length + t] = labels[b * length + t + 1] }
        }
        return out
    }

    /// Positions the loss scores.
    public var scoredTokens: Int {
        (0..<sequences).reduce(0) { n, b in
            n + labels[(b * length + 1)..<((b + 1) * length)].reduce(0) { $1 == -100 ? $0 : $0 + 1 }
        }
    }

    /// Tokens of the rows, padding not counted.
    public var realTokens: Int { lengths.reduce(0, +) }
}

/// The summed loss of a batch, what it is summed over (scored tokens for the causal LM, pairs
/// for preference objectives), and the objective's own metrics summed the same way (their
/// means are `metric(_:)`), except extremes: a metric named `min_…` or `max_…` holds the
/// smallest or largest value seen, combined by min or max and reported as it is.
public struct LossSum: Sendable, Equatable {
    public var sum: Double
    public var tokens: Int
    /// Sums over the same `tokens` (pairs): "rewards/chosen", "rewards/accuracies", …; and
    /// extremes "min_…", "max_…".
    public var metrics: [String: Double]

    public init(sum: Double = 0, tokens: Int = 0, metrics: [String: Double] = [:]) {
        self.sum = sum
        self.tokens = tokens
        self.metrics = metrics
    }
    public var mean: Double { tokens > 0 ? sum / Double(tokens) : .nan }

    static func isExtreme(_ name: String) -> Bool { name.hasPrefix("min_") || name.hasPrefix("max_") }

    /// The mean of a metric (an extreme as it is), nil when the objective gives none of that name.
    public func metric(_ name: String) -> Double? {
        metrics[name].map { Self.isExtreme(name) ? $0 : tokens > 0 ? $0 / Double(tokens) : .nan }
    }
    /// Every metric's mean (extremes as they are).
    public var metricMeans: [String: Double] { Dictionary(uniqueKeysWithValues: metrics.keys.map { ($0, metric($0)!) }) }

    public static func + (a: LossSum, b: LossSum) -> LossSum {
        var m = a.metrics
        for (k, v) in b.metrics {
            m[k] = m[k].map { old in k.hasPrefix("min_") ? min(old, v) : k.hasPrefix("max_") ? max(old, v) : old + v } ?? v
        }
        return LossSum(sum: a.sum + b.sum, tokens: a.tokens + b.tokens, metrics: m)
    }
}

/// Training forward and backward of the whole model with LoRA. Legend: B sequences, T tokens
/// each, N = B·T rows, C hidden, V vocab, L layers.
///
///   x₀[N, C] = embed(ids);  x_{l+1} = block_l(x_l)          (activations kept, or only the x_l
///                                                            with gradient checkpointing)
///   loss, dx_L = objective(x_L)                              (CausalLMObjective: Σ CE of the head's
///                                                            logits, in chunks of rows: no [N, V])
///   backward from dx_L through every block in reverse,
///   accumulating into the trainable Parameters' grads (multiplied by `gradScale`).
public final class Trainer {
    public let model: DecoderModel
    public let lora: ModelAdapters
    /// Recompute each block's activations in the backward from its input (per-block
    /// checkpointing): activation memory is one block's worth plus the L + 1 block inputs.
    public var gradientCheckpointing: Bool
    /// What the last block's output is turned into a loss by: the causal LM's next-token
    /// cross-entropy unless said otherwise.
    public var objective: any TrainingObjective
    /// What the frozen products compute in, forward and backward — the 4-bit GEMMs and the LM
    /// head (`ComputeDType.bf16` needs AVX512-BF16: `ComputeRuntime.bf16Available`); LoRA,
    /// norms and attention stay fp32. The model's own setting, so the objective's head pass
    /// and the no-grad passes (DPO's reference, scoring) compute as the step does.
    public var computeDType: ComputeDType {
        get { model.computeDType }
        set { model.computeDType = newValue }
    }

    /// Called after the backward of each block (L − 1 down to 0) of `accumulateGradients`, when
    /// that block's parameters have their gradients: what a data-parallel run starts summing
    /// them over the ranks at.
    public var afterBlockBackward: ((Int) throws -> Void)?

    /// The step's buffers, reused from step to step.
    private let arena = FloatArena()

    /// Bytes the step buffers hold (the largest step so far).
    public var stepBufferBytes: Int { arena.capacity * MemoryLayout<Float>.stride }

    /// `headChunkRows`: rows of logits the causal LM's head computes at once (chunk × V floats;
    /// nil: LMHead.defaultChunkRows for the vocabulary).
    public init(model: DecoderModel, lora: ModelAdapters, gradientCheckpointing: Bool = false, headChunkRows: Int? = nil,
                objective: (any TrainingObjective)? = nil) {
        self.model = model
        self.lora = lora
        self.gradientCheckpointing = gradientCheckpointing
        self.objective = objective ?? CausalLMObjective(headChunkRows: headChunkRows)
    }

    /// Runs forward and backward over `batch`, adding gradScale · ∂(Σ loss)/∂θ into every
    /// trainable Parameter's grad (not zeroed here: micro-batches accumulate). `dropoutSeed`
    /// nil turns dropout off. Returns the summed loss.
    public func accumulateGradients(_ batch: TokenBatch, gradScale: Float, dropoutSeed: UInt64?) throws -> LossSum {
        try run(batch, backward: true, gradScale: gradScale, dropoutSeed: dropoutSeed)
    }

    /// The summed loss of `batch` with the current weights (no dropout, no gradients).
    public func loss(_ batch: TokenBatch) throws -> LossSum {
        try run(batch, backward: false, gradScale: 0, dropoutSeed: nil)
    }

    /// Runs the forward without dropout or gradients and hands `read` the last block's output
    /// x [B·T, C] (before the final norm) and scratch room: what a no-grad pass such as the
    /// reference log-probabilities of DPO reads.
    public func withHiddenStates<R>(_ batch: TokenBatch, _ read: (_ hidden: FloatBuffer, _ arena: FloatArena) throws -> R) throws -> R {
        var result: R? = nil
        try withoutActuallyEscaping(read) { read in
            _ = try run(batch, backward: false, gradScale: 0, dropoutSeed: nil) { hidden, _ in
                result = try read(hidden, self.arena)
                return LossSum()
            }
        }
        return result!
    }

    private func layerSeed(_ seed: UInt64?, _ l: Int) -> UInt64? {
        seed.map { DropoutStream.layer($0, l) }
    }

    /// - Parameter head: what the last block's output becomes (hidden, dx → loss); the
    ///   objective's loss unless given.
    private func run(_ batch: TokenBatch, backward: Bool, gradScale: Float, dropoutSeed: UInt64?,
                     head: ((FloatBuffer, FloatBuffer?) throws -> LossSum)? = nil) throws -> LossSum {
        let c = model.config, B = batch.sequences, T = batch.length, N = B * T, C = c.hiddenSize
        let L = c.numLayers
        if let bad = batch.labels.firstIndex(where: { $0 != -100 && !(0..<Int32(c.vocabSize)).contains($0) }) {
            throw ModelError.labelOutOfRange(label: Int(batch.labels[bad]), position: bad, vocab: c.vocabSize)
        }
        let tables = model.rope.tables(from: 0, count: T)
        let family = c.family
        func context(_ l: Int, _ acts: BlockActivations, _ seed: UInt64?) -> LayerContext {
            LayerContext(adapters: lora.layers[l], acts: acts, dropoutSeed: seed, order: family.linears, dtype: computeDType)
        }
        arena.reset()
        let widest = max(C, c.intermediateSize, c.numHeads * c.headDim)
        let scratch = lora.config.dropout > 0 && dropoutSeed != nil ? arena.take(N * widest) : nil
        /// Block l's own activations, or (nil) one set every block shares: room for every
        /// linear that has an adapter in any block, since block 0 may have none (--lora-layers).
        func activations(_ l: Int?) -> BlockActivations {
            BlockActivations(config: c, tokens: N, keys: T, keepsProbabilities: backward, sequences: B,
                                  adapters: l.map { lora.layers[$0] } ?? lora.everyAdaptedLinear, arena: arena, dropoutScratch: scratch)
        }
        // Forward. inputs[l] is block l's input; the last is the head's.
        var inputs: [FloatBuffer] = [try model.embed(batch.inputIds.map(Int.init))]
        var kept: [BlockActivations] = []
        let shared = (!backward || gradientCheckpointing) ? activations(nil) : nil
        var spare: FloatBuffer? = nil
        for l in 0..<L {
            let acts = shared ?? activations(l)
            let y = (!backward ? spare : nil) ?? arena.take(N * C)
            try family.block.forward(y: y, x: inputs[inputs.count - 1], acts: acts, layer: model.weights.layers[l], rope: tables.layer(l, config: c),
                                     cache: nil, config: c, layerIndex: l, context: context(l, acts, layerSeed(dropoutSeed, l)))
            if backward {
                inputs.append(y)
                if shared == nil { kept.append(acts) }
            } else {
                spare = inputs[0]
                inputs = [y]
            }
        }
        let last = inputs[inputs.count - 1]
        var dx = backward ? arena.take(N * C) : nil
        dx?.base.update(repeating: 0, count: N * C)
        let beforeHead = arena.mark()
        let loss = try StepProfile.measure(.head) { () throws in
            if let head { return try head(last, dx) }
            return try objective.loss(hidden: last, batch: batch, model: model, adapters: lora, gradScale: gradScale, dx: dx, arena: arena)
        }
        guard backward, var d = dx else { return loss }
        // What the objective took (a chunk of logits, the final norm's output and gradient) is
        // dead once it has written dx: the backward's buffers reuse that memory.
        arena.rewind(to: beforeHead)

        // Backward through the blocks.
        let grads = BlockGradients(config: c, tokens: N, arena: arena)
        var dIn = arena.take(N * C)
        for l in stride(from: L - 1, through: 0, by: -1) {
            let acts: BlockActivations
            let seed = layerSeed(dropoutSeed, l)
            if let shared {
                acts = shared
                let scratch = dIn   // recompute into a buffer the backward overwrites next
                try family.block.forward(y: scratch, x: inputs[l], acts: acts, layer: model.weights.layers[l], rope: tables.layer(l, config: c),
                                         cache: nil, config: c, layerIndex: l, context: context(l, acts, seed))
            } else {
                acts = kept[l]
            }
            try family.block.backward(dx: dIn, dy: d, x: inputs[l], acts: acts, layer: model.weights.layers[l], rope: tables.layer(l, config: c),
                                      config: c, layerIndex: l, context: context(l, acts, seed), grads: grads)
            try afterBlockBackward?(l)
            swap(&d, &dIn)
            if shared == nil { kept.removeLast() }
            inputs.removeLast()
        }
        dx = nil
        return loss
    }
}
