import Foundation

/// One decoder layer, transformers' LlamaDecoderLayer. Legend: T tokens, C hidden.
///
///   h[T, C] = x + attention(rmsnorm(x) ⊙ w_input)              (LlamaAttention.swift)
///   y[T, C] = h + mlp(rmsnorm(h) ⊙ w_post_attention)           (LlamaMLP.swift)
///
/// x and y are [T, C] and must not overlap. Writes every field of `acts` (h is acts.residual).
/// With `cache`, this layer's keys and values are appended at its rows P ..< P + T.
func llamaBlockForward(y: FloatBuffer, x: FloatBuffer, acts: LlamaBlockActivations, layer w: LlamaLayerWeights,
                       rope: LlamaRoPETables, cache: LlamaKeyValues?, config c: ModelConfig) throws {
    let T = acts.T, n = T * c.hiddenSize
    precondition(x.count >= n && y.count >= n, "x and y must hold [\(T), \(c.hiddenSize)]")
    llamaRMSNormForward(y: acts.attentionInput.base, rstd: acts.attentionRstd.base, x: x.base, weight: w.attentionNorm,
                        tokens: T, eps: c.rmsNormEps)
    acts.residual.base.update(from: x.base, count: n)
    try llamaAttentionForward(out: acts.residual.rows(0, count: T, width: c.hiddenSize), acts: acts, layer: w, rope: rope,
                              cache: cache, config: c)
    llamaRMSNormForward(y: acts.mlpInput.base, rstd: acts.mlpRstd.base, x: acts.residual.base, weight: w.mlpNorm,
                        tokens: T, eps: c.rmsNormEps)
    y.base.update(from: acts.residual.base, count: n)
    try llamaMLPForward(out: y.rows(0, count: T, width: c.hiddenSize), acts: acts, layer: w, config: c)
}
