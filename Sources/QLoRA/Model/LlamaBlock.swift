import Foundation

/// One decoder layer, transformers' LlamaDecoderLayer. Legend: T tokens, C hidden.
///
///   h[T, C] = x + attention(rmsnorm(x) ⊙ w_input)              (LlamaAttention.swift)
///   y[T, C] = h + mlp(rmsnorm(h) ⊙ w_post_attention)           (LlamaMLP.swift)
///
/// x and y are [T, C] and must not overlap. Writes every field of `acts` (h is acts.residual).
/// With `cache`, this layer's keys and values are appended at its rows P ..< P + T. `lora`
/// adds the layer's adapters (and trainable norms); `dropoutSeed` turns their dropout on.
func llamaBlockForward(y: FloatBuffer, x: FloatBuffer, acts: LlamaBlockActivations, layer w: LlamaLayerWeights,
                       rope: LlamaRoPETables, cache: LlamaKeyValues?, config c: ModelConfig,
                       lora: LlamaLayerLoRA? = nil, dropoutSeed: UInt64? = nil) throws {
    let T = acts.T, n = T * c.hiddenSize
    precondition(x.count >= n && y.count >= n, "x and y must hold [\(T), \(c.hiddenSize)]")
    llamaRMSNormForward(y: acts.attentionInput.base, rstd: acts.attentionRstd.base, x: x.base, weight: w.attentionNorm,
                        trainable: lora?.attentionNorm, tokens: T, eps: c.rmsNormEps)
    StepProfile.measure(.elementwise) { acts.residual.base.update(from: x.base, count: n) }
    try llamaAttentionForward(out: acts.residual.rows(0, count: T, width: c.hiddenSize), acts: acts, layer: w, rope: rope,
                              cache: cache, config: c, lora: lora, dropoutSeed: dropoutSeed)
    llamaRMSNormForward(y: acts.mlpInput.base, rstd: acts.mlpRstd.base, x: acts.residual.base, weight: w.mlpNorm,
                        trainable: lora?.mlpNorm, tokens: T, eps: c.rmsNormEps)
    StepProfile.measure(.elementwise) { y.base.update(from: acts.residual.base, count: n) }
    try llamaMLPForward(out: y.rows(0, count: T, width: c.hiddenSize), acts: acts, layer: w, config: c, lora: lora,
                        dropoutSeed: dropoutSeed)
}

/// The backward of `llamaBlockForward` (no cache): given dy [T, C] and the forward's input x
/// and activations, writes dx [T, C] and accumulates the gradients of the layer's trainable
/// parameters. dx must not alias dy or x.
///
///   dh  = dy + rmsnorm'(mlp'(dy))            through w_post_attention, at h
///   dx  = dh + rmsnorm'(attention'(dh))      through w_input, at x
func llamaBlockBackward(dx: FloatBuffer, dy: FloatBuffer, x: FloatBuffer, acts: LlamaBlockActivations,
                        layer w: LlamaLayerWeights, rope: LlamaRoPETables, config c: ModelConfig, lora: LlamaLayerLoRA?,
                        dropoutSeed: UInt64?, grads g: LlamaBlockGradients) throws {
    let T = acts.T, n = T * c.hiddenSize
    try llamaMLPBackward(dxn: g.dNormed, dOut: dy, acts: acts, layer: w, config: c, lora: lora, dropoutSeed: dropoutSeed,
                         grads: g)
    StepProfile.measure(.elementwise) { g.dResidual.base.update(from: dy.base, count: n) }
    llamaRMSNormBackward(dx: g.dResidual.base, dy: g.dNormed.base, x: acts.residual.base, rstd: acts.mlpRstd.base,
                         weight: w.mlpNorm, trainable: lora?.mlpNorm, tokens: T)
    try llamaAttentionBackward(dxn: g.dNormed, dOut: g.dResidual, acts: acts, layer: w, rope: rope, config: c, lora: lora,
                               dropoutSeed: dropoutSeed, grads: g)
    StepProfile.measure(.elementwise) { dx.base.update(from: g.dResidual.base, count: n) }
    llamaRMSNormBackward(dx: dx.base, dy: g.dNormed.base, x: x.base, rstd: acts.attentionRstd.base, weight: w.attentionNorm,
                         trainable: lora?.attentionNorm, tokens: T)
}

/// Scratch of one layer's backward, [T rows] each, shared by every layer in turn.
/// Legend: C hidden, F intermediate, H/Hkv heads, D head dim.
final class LlamaBlockGradients {
    let dNormed: FloatBuffer       // [T, C]   gradient of an RMSNorm's output
    let dResidual: FloatBuffer     // [T, C]   gradient of h
    let dAttention: FloatBuffer    // [T, H·D]
    let dq: FloatBuffer            // [T, H·D]
    let dk: FloatBuffer            // [T, Hkv·D]
    let dv: FloatBuffer            // [T, Hkv·D]
    let dHidden: FloatBuffer       // [T, F]
    let dGate: FloatBuffer         // [T, F]
    let dUp: FloatBuffer           // [T, F]

    init(config c: ModelConfig, tokens T: Int, arena: FloatArena? = nil) {
        func FloatBuffer(count: Int) -> QLoRA.FloatBuffer { arena?.take(count) ?? QLoRA.FloatBuffer(count: count) }
        let qDim = c.numHeads * c.headDim, kvDim = c.numKVHeads * c.headDim
        dNormed = FloatBuffer(count: T * c.hiddenSize)
        dResidual = FloatBuffer(count: T * c.hiddenSize)
        dAttention = FloatBuffer(count: T * qDim)
        dq = FloatBuffer(count: T * qDim)
        dk = FloatBuffer(count: T * kvDim)
        dv = FloatBuffer(count: T * kvDim)
        dHidden = FloatBuffer(count: T * c.intermediateSize)
        dGate = FloatBuffer(count: T * c.intermediateSize)
        dUp = FloatBuffer(count: T * c.intermediateSize)
    }
}
