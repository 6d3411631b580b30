import Foundation
import Quant

/// A decoder's forward (any family of `ModelFamily.all`), Hugging Face semantics in fp32 over
/// 4-bit linears. Legend: T tokens, P cached positions, C hidden, V vocab, L layers.
///
///   x[T, C] = embed_tokens[tokens]
///   x ← block(x) for each of the L layers                      (the family's DecoderBlock)
///   logits[T', V] = rmsnorm(x[rows]) · lm_headᵀ              (T' = 1 for the last row, or T)
///
/// The model is immutable: a forward keeps its state in buffers of its own and in the cache it is given.
public final class DecoderModel: @unchecked Sendable {
    public let config: ModelConfig
    public let weights: ModelWeights
    public let rope: RotaryEmbedding
    /// LoRA adapters (and trained norms) applied in every forward, without dropout.
    public let adapters: ModelAdapters?
    /// What `forward`'s frozen 4-bit GEMMs compute in (bf16 needs AVX512-BF16); a model made
    /// from this one with adapters keeps it.
    public var computeDType: ComputeDType = .fp32

    public init(_ model: QuantizedModel) throws {
        config = model.config
        weights = try ModelWeights(model)
        rope = try RotaryEmbedding(config: model.config)
        adapters = nil
    }

    /// A model from weights made in memory (synthetic shapes).
    public init(config: ModelConfig, weights: ModelWeights) throws {
        try config.validate(source: "synthetic \(config.architecture)")
        self.config = config
        self.weights = weights
        rope = try RotaryEmbedding(config: config)
        adapters = nil
    }

    /// `base` with `adapters` applied (the weights are shared, not copied).
    public init(_ base: DecoderModel, adapters: ModelAdapters) {
        config = base.config
        weights = base.weights
        rope = base.rope
        self.adapters = adapters
        computeDType = base.computeDType
    }

    public convenience init(path: String, kQuants: QuantizedModel.KQuantTarget = .asIs) throws {
        try self.init(QuantizedModel(path: path, kQuants: kQuants))
    }

    /// Which positions get logits.
    public enum LogitRows: Sendable {
        case last, all
    }

    /// Runs `tokens` at positions P ..< P + T, P = cache?.count ?? 0, appending their keys and
    /// values to `cache` when given. Returns logits [1, V] (`.last`) or [T, V] (`.all`).
    public func forward(tokens: [Int], cache: KVCache? = nil, logits rows: LogitRows = .last) throws -> [Float] {
        let c = config, T = tokens.count, P = cache?.count ?? 0
        guard T > 0 else { throw ModelError.emptyInput }
        if let cache, P + T > cache.capacity { throw ModelError.cacheFull(capacity: cache.capacity, needed: P + T) }
        var x = try embed(tokens)
        var y = FloatBuffer(count: T * c.hiddenSize)
        let acts = BlockActivations(config: c, tokens: T, keys: P + T, keepsProbabilities: false,
                                         adapters: adapters?.everyAdaptedLinear)
        let tables = rope.tables(from: P, count: T)
        let family = c.family
        for (l, layer) in weights.layers.enumerated() {
            let context = LayerContext(adapters: adapters?.layers[l], acts: acts, dropoutSeed: nil, order: family.linears, dtype: computeDType)
            try family.block.forward(y: y, x: x, acts: acts, layer: layer, rope: tables.layer(l, config: c), cache: cache?.layer(l), config: c,
                                     layerIndex: l, context: context)
            swap(&x, &y)
        }
        cache?.advance(by: T)
        let first = rows == .last ? T - 1 : 0
        return try lmHead(x, rows: first..<T)
    }

    /// x[T, C] = embed_tokens rows of `tokens`.
    func embed(_ tokens: [Int]) throws(ModelError) -> FloatBuffer {
        let C = config.hiddenSize, V = config.vocabSize
        let x = FloatBuffer(count: tokens.count * C)
        for (t, id) in tokens.enumerated() {
            guard (0..<V).contains(id) else { throw .tokenOutOfRange(token: id, position: t, vocab: V) }
            weights.embedding.row(id, width: C, into: x.base + t * C)
        }
        if let scale = config.embeddingScale {
            for i in 0..<(tokens.count * C) { x.base[i] *= scale }
        }
        return x
    }

    /// logits[rows, V] = rmsnorm(x[rows]) · lm_headᵀ, through sgemm or the quantized GEMM.
    func lmHead(_ x: FloatBuffer, rows: Range<Int>) throws -> [Float] {
        let C = config.hiddenSize, V = config.vocabSize, n = rows.count
        let xn = FloatBuffer(count: n * C), rstd = FloatBuffer(count: n)
        rmsNormForward(y: xn.base, rstd: rstd.base, x: x.base + rows.lowerBound * C, weight: weights.finalNorm,
                            trainable: adapters?.finalNorm, tokens: n, eps: config.rmsNormEps)
        var logits = [Float](repeating: 0, count: n * V)
        try logits.withUnsafeMutableBufferPointer { (out) throws in
            try weights.lmHead.forward(xn.base, rows: n, width: C, vocab: V, into: out.baseAddress!, dtype: computeDType)
        }
        if let cap = config.finalLogitSoftcap {
            for i in logits.indices { logits[i] = cap * tanhf(logits[i] / cap) }
        }
        return logits
    }
}
