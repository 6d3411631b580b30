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

/// Causal grouped-query self-attention of one layer, transformers' LlamaAttention (eager),
/// with LoRA on any of its four linears. Legend: B sequences of T tokens (rows B·T), P cached
/// positions (B = 1 then), S = P + T, C hidden, H/Hkv heads, D head dim.
///
///   q[BT, H·D] = xn·Wqᵀ (+ bq) (+ LoRA),  k, v[BT, Hkv·D] likewise
///   q, k ← RoPE at positions P ..< P + T of each sequence;  k, v copied into `cache` if given
///   attn[BT, H·D] = softmax(q·kᵀ / √D, causal) · v          per sequence, over its S keys
///   out[BT, C] += attn·Woᵀ (+ LoRA)                          (out holds the residual x)
///
/// Writes acts.q, k, v, attentionOutput (and probabilities when kept); reads acts.attentionInput (xn).
func llamaAttentionForward(out: UnsafeMutableBufferPointer<Float>, acts: LlamaBlockActivations, layer w: LlamaLayerWeights,
                           rope: LlamaRoPETables, cache: LlamaKeyValues?, config c: ModelConfig,
                           lora: LlamaLayerLoRA? = nil, dropoutSeed: UInt64? = nil) throws {
    let rows = acts.T, B = acts.sequences, T = acts.sequenceLength
    let H = c.numHeads, Hkv = c.numKVHeads, D = c.headDim, qDim = H * D, kvDim = Hkv * D
    precondition(cache == nil || B == 1, "a KV cache serves one sequence")
    precondition(rope.count == T, "RoPE tables for \(rope.count) positions, \(T) needed")
    func run(_ m: QuantizedMatrix, _ role: LlamaLinear) -> LlamaLinearRun {
        LlamaLinearRun(m, role, lora: lora, acts: acts, seed: dropoutSeed)
    }
    for (m, role, y, b, heads) in [(w.q, LlamaLinear.q, acts.q, w.qBias, H), (w.k, .k, acts.k, w.kBias, Hkv),
                                   (w.v, .v, acts.v, w.vBias, Hkv)] {
        try run(m, role).forward(acts.attentionInput, into: y.base, tokens: rows)
        if let b { b.withUnsafeBufferPointer { qk_add_bias(y.base, $0.baseAddress, Int64(rows), Int64(heads * D)) } }
    }
    StepProfile.measure(.elementwise) {
        for s in 0..<B {
            rope.apply(acts.q.base + s * T * qDim, heads: H, headDim: D)
            rope.apply(acts.k.base + s * T * kvDim, heads: Hkv, headDim: D)
        }
    }

    let kv: LlamaKeyValues
    if let cache {
        (cache.keys + cache.past * kvDim).update(from: acts.k.base, count: T * kvDim)
        (cache.values + cache.past * kvDim).update(from: acts.v.base, count: T * kvDim)
        kv = cache
    } else {
        kv = LlamaKeyValues(keys: acts.k.base, values: acts.v.base, past: 0)
    }
    let S = kv.past + T
    if let p = acts.probabilities {
        precondition(p.count == B * H * T * S, "probabilities hold \(p.count) floats, [\(B), \(H), \(T), \(S)] needed")
    }
    try StepProfile.measure(.attention) { () throws in
    for s in 0..<B {
        let rc = qk_attention_forward(acts.attentionOutput.base + s * T * qDim, acts.probabilities.map { $0.base + s * H * T * S },
                                      acts.q.base + s * T * qDim, kv.keys + s * T * kvDim, kv.values + s * T * kvDim,
                                      Int64(T), Int64(kv.past), Int64(H), Int64(Hkv), Int64(D), 0)
        guard rc == 0 else { throw LlamaModelError.outOfMemory("attention score rows for \(S) keys") }
    }
    }
    try run(w.o, .o).forward(acts.attentionOutput, into: out.baseAddress!, tokens: rows, accumulate: true)
}

/// The backward of `llamaAttentionForward` without a cache. Given dOut [BT, C], the gradient of
/// the layer's residual stream, adds the attention's share to dxn [BT, C] (overwritten: it is the
/// gradient of xn) and accumulates the LoRA gradients. `grads` holds the scratch buffers.
func llamaAttentionBackward(dxn: FloatBuffer, dOut: FloatBuffer, acts: LlamaBlockActivations, layer w: LlamaLayerWeights,
                            rope: LlamaRoPETables, config c: ModelConfig, lora: LlamaLayerLoRA?, dropoutSeed: UInt64?,
                            grads g: LlamaBlockGradients) throws {
    let rows = acts.T, B = acts.sequences, T = acts.sequenceLength
    let H = c.numHeads, Hkv = c.numKVHeads, D = c.headDim, qDim = H * D, kvDim = Hkv * D
    func run(_ m: QuantizedMatrix, _ role: LlamaLinear) -> LlamaLinearRun {
        LlamaLinearRun(m, role, lora: lora, acts: acts, seed: dropoutSeed)
    }
    try run(w.o, .o).backward(dOut.base, x: acts.attentionOutput, into: g.dAttention.base, tokens: rows, accumulate: false)
    let rc = StepProfile.measure(.attention) {
        qk_attention_backward(g.dq.base, g.dk.base, g.dv.base, g.dAttention.base, acts.q.base, acts.k.base, acts.v.base,
                              acts.probabilities?.base, Int64(B), Int64(T), Int64(H), Int64(Hkv), Int64(D), 0)
    }
    guard rc == 0 else { throw LlamaModelError.outOfMemory("attention backward scratch for \(T) tokens") }
    StepProfile.measure(.elementwise) {
        for s in 0..<B {
            rope.applyBackward(g.dq.base + s * T * qDim, heads: H, headDim: D)
            rope.applyBackward(g.dk.base + s * T * kvDim, heads: Hkv, headDim: D)
        }
    }
    try run(w.q, .q).backward(g.dq.base, x: acts.attentionInput, into: dxn.base, tokens: rows, accumulate: false)
    try run(w.k, .k).backward(g.dk.base, x: acts.attentionInput, into: dxn.base, tokens: rows, accumulate: true)
    try run(w.v, .v).backward(g.dv.base, x: acts.attentionInput, into: dxn.base, tokens: rows, accumulate: true)
}
