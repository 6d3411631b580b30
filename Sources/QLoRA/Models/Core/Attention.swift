import Foundation
import Quant
import QuantKernels

/// Where one layer's attention reads its keys and values: S = P + T rows of [Hkv·D] each,
/// the P cached ones first. Without a cache these are the layer's own k and v (P = 0).
struct KeyValues {
    let keys: UnsafeMutablePointer<Float>      // [S, Hkv·D]
    let values: UnsafeMutablePointer<Float>    // [S, Hkv·D]
    let past: Int                              // P
}

/// The tensors of a layer's attention: q/k/v as three linears (with their biases when the model
/// has them) or one fused [q; k; v] (Phi-3's qkv_proj), o; and per-head RMSNorms on q and k when
/// the family has them (Qwen3, Gemma 3).
struct AttentionWeights {
    enum Projections {
        case separate(q: Linear, k: Linear, v: Linear)
        case fused(Linear)
    }
    let projections: Projections
    let o: Linear
    let qNorm: Norm?, kNorm: Norm?

    init(_ w: LayerWeights) {
        if let qkv = w.linears[.qkv] {
            projections = .fused(qkv)
        } else {
            projections = .separate(q: w[.q], k: w[.k], v: w[.v])
        }
        o = w[.o]
        qNorm = w.norms[NormSpec.qNorm.path]
        kNorm = w.norms[NormSpec.kNorm.path]
    }
}

/// Causal grouped-query self-attention of one layer, transformers' LlamaAttention (eager).
/// Legend: B sequences of T tokens (rows B·T), P cached positions (B = 1 then), S = P + T,
/// C hidden, H/Hkv heads, D head dim.
///
///   q[BT, H·D] = xn·Wqᵀ (+ bq),  k, v[BT, Hkv·D] likewise
///   q, k ← rmsnorm per head ⊙ w_q_norm, w_k_norm              (Qwen3; D values a row)
///   q, k ← RoPE at positions P ..< P + T of each sequence;  k, v copied into `cache` if given
///   attn[BT, H·D] = softmax(q·kᵀ · scale, causal, window) · v  per sequence, over its S keys
///   out[BT, C] += attn·Woᵀ                                     (out holds the residual x)
///
/// Writes acts.q, k, v (and qRaw, kRaw, their rstd with q/k norms), attentionOutput (and
/// probabilities when kept); reads acts.attentionInput (xn).
func attentionForward(out: UnsafeMutableBufferPointer<Float>, acts: BlockActivations, weights w: AttentionWeights,
                      rope: RotaryTables, cache: KeyValues?, config c: ModelConfig, options: qk_attention_options,
                      context ctx: LayerContext, accumulate: Bool = true) throws {
    let rows = acts.T, B = acts.sequences, T = acts.sequenceLength
    let H = c.numHeads, Hkv = c.numKVHeads, D = c.headDim, qDim = H * D, kvDim = Hkv * D
    precondition(cache == nil || B == 1, "a KV cache serves one sequence")
    precondition(rope.count == T, "RoPE tables for \(rope.count) positions, \(T) needed")
    switch w.projections {
    case let .separate(q, k, v):
        try ctx.forward(q, acts.attentionInput, into: (acts.qRaw ?? acts.q).base, tokens: rows)
        try ctx.forward(k, acts.attentionInput, into: (acts.kRaw ?? acts.k).base, tokens: rows)
        try ctx.forward(v, acts.attentionInput, into: acts.v.base, tokens: rows)
    case let .fused(qkv):
        guard let fused = acts.fused else { preconditionFailure("activations without room for \(qkv.spec)") }
        try ctx.forward(qkv, acts.attentionInput, into: fused.base, tokens: rows)
        StepProfile.measure(.elementwise) {
            splitColumns(fused.base, rows: rows, into: [((acts.qRaw ?? acts.q).base, qDim), ((acts.kRaw ?? acts.k).base, kvDim),
                                                         (acts.v.base, kvDim)])
        }
    }
    if let qNorm = w.qNorm, let kNorm = w.kNorm, let qRaw = acts.qRaw, let kRaw = acts.kRaw,
       let qRstd = acts.qRstd, let kRstd = acts.kRstd {
        rmsNormForward(y: acts.q.base, rstd: qRstd.base, x: qRaw.base, norm: qNorm, context: ctx, tokens: rows * H, eps: c.rmsNormEps)
        rmsNormForward(y: acts.k.base, rstd: kRstd.base, x: kRaw.base, norm: kNorm, context: ctx, tokens: rows * Hkv, eps: c.rmsNormEps)
    }
    StepProfile.measure(.elementwise) {
        for s in 0..<B {
            rope.apply(acts.q.base + s * T * qDim, heads: H, headDim: D)
            rope.apply(acts.k.base + s * T * kvDim, heads: Hkv, headDim: D)
        }
    }

    let kv: KeyValues
    if let cache {
        (cache.keys + cache.past * kvDim).update(from: acts.k.base, count: T * kvDim)
        (cache.values + cache.past * kvDim).update(from: acts.v.base, count: T * kvDim)
        kv = cache
    } else {
        kv = KeyValues(keys: acts.k.base, values: acts.v.base, past: 0)
    }
    let S = kv.past + T
    if let p = acts.probabilities {
        precondition(p.count == B * H * T * S, "probabilities hold \(p.count) floats, [\(B), \(H), \(T), \(S)] needed")
    }
    try StepProfile.measure(.attention) { () throws in
    for s in 0..<B {
        let rc = qk_attention_forward_with(acts.attentionOutput.base + s * T * qDim, acts.probabilities.map { $0.base + s * H * T * S },
                                           acts.q.base + s * T * qDim, kv.keys + s * T * kvDim, kv.values + s * T * kvDim,
                                           Int64(T), Int64(kv.past), Int64(H), Int64(Hkv), Int64(D), options, 0)
        guard rc == 0 else { throw ModelError.outOfMemory("attention score rows for \(S) keys") }
    }
    }
    try ctx.forward(w.o, acts.attentionOutput, into: out.baseAddress!, tokens: rows, accumulate: accumulate)
}

/// The backward of `attentionForward` without a cache. Given dOut [BT, C], the gradient of
/// the layer's residual stream, writes the attention's share of the gradient of xn into dxn
/// [BT, C] (overwritten) and accumulates the adapters' gradients. `grads` holds the scratch.
func attentionBackward(dxn: FloatBuffer, dOut: FloatBuffer, acts: BlockActivations, weights w: AttentionWeights,
                       rope: RotaryTables, config c: ModelConfig, options: qk_attention_options, context ctx: LayerContext,
                       grads g: BlockGradients) throws {
    let rows = acts.T, B = acts.sequences, T = acts.sequenceLength
    let H = c.numHeads, Hkv = c.numKVHeads, D = c.headDim, qDim = H * D, kvDim = Hkv * D
    try ctx.backward(w.o, dOut.base, x: acts.attentionOutput, into: g.dAttention.base, tokens: rows, accumulate: false)
    let rc = StepProfile.measure(.attention) {
        qk_attention_backward_with(g.dq.base, g.dk.base, g.dv.base, g.dAttention.base, acts.q.base, acts.k.base, acts.v.base,
                                   acts.probabilities?.base, Int64(B), Int64(T), Int64(H), Int64(Hkv), Int64(D), options, 0)
    }
    guard rc == 0 else { throw ModelError.outOfMemory("attention backward scratch for \(T) tokens") }
    StepProfile.measure(.elementwise) {
        for s in 0..<B {
            rope.applyBackward(g.dq.base + s * T * qDim, heads: H, headDim: D)
            rope.applyBackward(g.dk.base + s * T * kvDim, heads: Hkv, headDim: D)
        }
    }
    var dq = g.dq, dk = g.dk
    if let qNorm = w.qNorm, let kNorm = w.kNorm, let qRaw = acts.qRaw, let kRaw = acts.kRaw, let qRstd = acts.qRstd,
       let kRstd = acts.kRstd, let dqRaw = g.dqRaw, let dkRaw = g.dkRaw {
        rmsNormBackward(dx: dqRaw.base, dy: g.dq.base, x: qRaw.base, rstd: qRstd.base, norm: qNorm, context: ctx,
                        tokens: rows * H, accumulate: false)
        rmsNormBackward(dx: dkRaw.base, dy: g.dk.base, x: kRaw.base, rstd: kRstd.base, norm: kNorm, context: ctx,
                        tokens: rows * Hkv, accumulate: false)
        (dq, dk) = (dqRaw, dkRaw)
    }
    switch w.projections {
    case let .separate(q, k, v):
        try ctx.backward(q, dq.base, x: acts.attentionInput, into: dxn.base, tokens: rows, accumulate: false)
        try ctx.backward(k, dk.base, x: acts.attentionInput, into: dxn.base, tokens: rows, accumulate: true)
        try ctx.backward(v, g.dv.base, x: acts.attentionInput, into: dxn.base, tokens: rows, accumulate: true)
    case let .fused(qkv):
        guard let dFused = g.dFused else { preconditionFailure("gradients without room for \(qkv.spec)") }
        StepProfile.measure(.elementwise) {
            joinColumns([(UnsafePointer(dq.base), qDim), (UnsafePointer(dk.base), kvDim), (UnsafePointer(g.dv.base), kvDim)],
                        rows: rows, into: dFused.base)
        }
        try ctx.backward(qkv, dFused.base, x: acts.attentionInput, into: dxn.base, tokens: rows, accumulate: false)
    }
}

/// Copies the column blocks of x [rows, Σ widths] into separate [rows, width] matrices.
func splitColumns(_ x: UnsafePointer<Float>, rows: Int, into parts: [(UnsafeMutablePointer<Float>, Int)]) {
    let width = parts.reduce(0) { $0 + $1.1 }
    for r in 0..<rows {
        var c0 = 0
        for (p, w) in parts {
            (p + r * w).update(from: x + r * width + c0, count: w)
            c0 += w
        }
    }
}

/// The inverse of `splitColumns`: [rows, width] matrices side by side into out [rows, Σ widths].
func joinColumns(_ parts: [(UnsafePointer<Float>, Int)], rows: Int, into out: UnsafeMutablePointer<Float>) {
    let width = parts.reduce(0) { $0 + $1.1 }
    for r in 0..<rows {
        var c0 = 0
        for (p, w) in parts {
            (out + r * width + c0).update(from: p + r * w, count: w)
            c0 += w
        }
    }
}
