import Foundation
import Quant
import QuantKernels

/// Where one layer's attention reads its keys and values: S = P + T rows of [Hkv·D] each,
/// the P cached ones first. Without a cache these are the layer's own k and v (P = 0).
struct LlamaKeyValues {
    let keys: UnsafeMutablePointer<Float>      // [S, Hkv·D]
    let values: UnsafeMutablePointer<Float>    // [S, Hkv·D]
    let past: Int                              // P
}

/// Causal grouped-query self-attention of one layer, transformers' LlamaAttention (eager).
/// Legend: T tokens, P cached positions, S = P + T, C hidden, H/Hkv heads, D head dim.
///
///   q[T, H·D] = xn·Wqᵀ (+ bq),  k, v[T, Hkv·D] = xn·Wkᵀ (+ bk), xn·Wvᵀ (+ bv)
///   q, k ← RoPE at positions P ..< P + T;  k, v copied to rows P ..< S of `cache` if given
///   attn[T, H·D] = softmax(q·kᵀ / √D, causal) · v          over all S keys
///   out[T, C] += attn·Woᵀ                                   (out holds the residual x)
///
/// Writes acts.q, k, v, attentionOutput (and probabilities when kept); reads acts.attentionInput (xn).
func llamaAttentionForward(out: UnsafeMutableBufferPointer<Float>, acts: LlamaBlockActivations, layer w: LlamaLayerWeights,
                           rope: LlamaRoPETables, cache: LlamaKeyValues?, config c: ModelConfig) throws {
    let T = acts.T, H = c.numHeads, Hkv = c.numKVHeads, D = c.headDim, kvDim = Hkv * D
    let xn = UnsafeBufferPointer(acts.attentionInput.buffer)
    for (m, y, b, heads) in [(w.q, acts.q, w.qBias, H), (w.k, acts.k, w.kBias, Hkv), (w.v, acts.v, w.vBias, Hkv)] {
        try m.forward(xn, into: y.buffer, tokens: T)
        if let b { b.withUnsafeBufferPointer { qk_add_bias(y.base, $0.baseAddress, Int64(T), Int64(heads * D)) } }
    }
    rope.apply(acts.q, heads: H, headDim: D)
    rope.apply(acts.k, heads: Hkv, headDim: D)

    let kv: LlamaKeyValues
    if let cache {
        (cache.keys + cache.past * kvDim).update(from: acts.k.base, count: T * kvDim)
        (cache.values + cache.past * kvDim).update(from: acts.v.base, count: T * kvDim)
        kv = cache
    } else {
        kv = LlamaKeyValues(keys: acts.k.base, values: acts.v.base, past: 0)
    }
    if let p = acts.probabilities {
        precondition(p.count == H * T * (kv.past + T), "probabilities hold \(p.count) floats, [\(H), \(T), \(kv.past + T)] needed")
    }
    let rc = qk_attention_forward(acts.attentionOutput.base, acts.probabilities?.base, acts.q.base, kv.keys, kv.values,
                                  Int64(T), Int64(kv.past), Int64(H), Int64(Hkv), Int64(D), 0)
    guard rc == 0 else { throw LlamaModelError.outOfMemory("attention score rows for \(kv.past + T) keys") }
    try w.o.forward(UnsafeBufferPointer(acts.attentionOutput.buffer), into: out, tokens: T, accumulate: true)
}
