import Foundation

/// A family's decoder layer: its forward, with the backward beside it. Model code composes the
/// shared ops (RMSNorm, attention, the gated MLP, …) and runs every linear and trainable norm
/// through the `LayerContext`, which holds the adapters: a block never sees LoRA.
protocol DecoderBlock {
    /// y[T, C] = layer(x[T, C]); x and y must not overlap. Writes every field of `acts` the
    /// backward reads. With `cache`, the layer's keys and values are appended at rows P ..< P + T.
    static func forward(y: FloatBuffer, x: FloatBuffer, acts: BlockActivations, layer: LayerWeights,
                        rope: RotaryTables, cache: KeyValues?, config: ModelConfig, layerIndex: Int,
                        context: LayerContext) throws

    /// Given dy [T, C] and the forward's input x and activations (no cache), writes dx [T, C]
    /// and accumulates the gradients of what trains. dx must not alias dy or x.
    static func backward(dx: FloatBuffer, dy: FloatBuffer, x: FloatBuffer, acts: BlockActivations, layer: LayerWeights,
                         rope: RotaryTables, config: ModelConfig, layerIndex: Int, context: LayerContext,
                         grads: BlockGradients) throws
}

/// The pre-norm block of Llama, Mistral, Qwen2 and Qwen3 (transformers' LlamaDecoderLayer).
/// Legend: T tokens, C hidden.
///
///   h[T, C] = x + attention(rmsnorm(x) ⊙ w_input)              (Attention.swift)
///   y[T, C] = h + mlp(rmsnorm(h) ⊙ w_post_attention)           (GatedMLP.swift)
///
/// The family decides the attention's details through its tensors and config: q/k/v biases,
/// per-head q/k norms (Qwen3), a sliding window (Mistral).
enum PreNormBlock: DecoderBlock {
    static func forward(y: FloatBuffer, x: FloatBuffer, acts: BlockActivations, layer w: LayerWeights,
                        rope: RotaryTables, cache: KeyValues?, config c: ModelConfig, layerIndex: Int,
                        context ctx: LayerContext) throws {
        let T = acts.T, n = T * c.hiddenSize
        precondition(x.count >= n && y.count >= n, "x and y must hold [\(T), \(c.hiddenSize)]")
        let attention = AttentionWeights(w)
        rmsNormForward(y: acts.attentionInput.base, rstd: acts.attentionRstd.base, x: x.base, norm: w[.input], context: ctx,
                       tokens: T, eps: c.rmsNormEps)
        StepProfile.measure(.elementwise) { acts.residual.base.update(from: x.base, count: n) }
        try attentionForward(out: acts.residual.rows(0, count: T, width: c.hiddenSize), acts: acts, weights: attention,
                             rope: rope, cache: cache, config: c, options: c.attentionOptions(layer: layerIndex), context: ctx)
        rmsNormForward(y: acts.mlpInput.base, rstd: acts.mlpRstd.base, x: acts.residual.base, norm: w[.postAttention],
                       context: ctx, tokens: T, eps: c.rmsNormEps)
        StepProfile.measure(.elementwise) { y.base.update(from: acts.residual.base, count: n) }
        try gatedMLPForward(out: y.rows(0, count: T, width: c.hiddenSize), acts: acts, weights: GatedMLPWeights(w), config: c,
                            context: ctx)
    }

    ///   dh  = dy + rmsnorm'(mlp'(dy))            through w_post_attention, at h
    ///   dx  = dh + rmsnorm'(attention'(dh))      through w_input, at x
    static func backward(dx: FloatBuffer, dy: FloatBuffer, x: FloatBuffer, acts: BlockActivations, layer w: LayerWeights,
                         rope: RotaryTables, config c: ModelConfig, layerIndex: Int, context ctx: LayerContext,
                         grads g: BlockGradients) throws {
        let T = acts.T, n = T * c.hiddenSize
        try gatedMLPBackward(dxn: g.dNormed, dOut: dy, acts: acts, weights: GatedMLPWeights(w), config: c, context: ctx, grads: g)
        StepProfile.measure(.elementwise) { g.dResidual.base.update(from: dy.base, count: n) }
        rmsNormBackward(dx: g.dResidual.base, dy: g.dNormed.base, x: acts.residual.base, rstd: acts.mlpRstd.base,
                        norm: w[.postAttention], context: ctx, tokens: T)
        try attentionBackward(dxn: g.dNormed, dOut: g.dResidual, acts: acts, weights: AttentionWeights(w), rope: rope,
                              config: c, options: c.attentionOptions(layer: layerIndex), context: ctx, grads: g)
        StepProfile.measure(.elementwise) { dx.base.update(from: g.dResidual.base, count: n) }
        rmsNormBackward(dx: dx.base, dy: g.dNormed.base, x: x.base, rstd: acts.attentionRstd.base, norm: w[.input],
                        context: ctx, tokens: T)
    }
}

/// Scratch of one layer's backward, [T rows] each, shared by every layer in turn.
/// Legend: C hidden, F intermediate, H/Hkv heads, D head dim.
final class BlockGradients {
    let dNormed: FloatBuffer       // [T, C]   gradient of an RMSNorm's output
    let dResidual: FloatBuffer     // [T, C]   gradient of h
    let dAttention: FloatBuffer    // [T, H·D]
    let dq: FloatBuffer            // [T, H·D]
    let dk: FloatBuffer            // [T, Hkv·D]
    let dv: FloatBuffer            // [T, Hkv·D]
    let dHidden: FloatBuffer       // [T, F]
    let dGate: FloatBuffer         // [T, F]
    let dUp: FloatBuffer           // [T, F]
    /// Gradients of q and k before their per-head norms (Qwen3), [T, H·D] and [T, Hkv·D].
    let dqRaw: FloatBuffer?
    let dkRaw: FloatBuffer?
    /// Gradient of a sublayer's output before its post-norm (Gemma), [T, C].
    let dProjection: FloatBuffer?
    /// Gradient of a fused linear's output (Phi-3), [T, widest].
    let dFused: FloatBuffer?

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
        let qkNorm = c.family.hasQKNorms
        dqRaw = qkNorm ? FloatBuffer(count: T * qDim) : nil
        dkRaw = qkNorm ? FloatBuffer(count: T * kvDim) : nil
        dProjection = c.family.hasSandwichNorms ? FloatBuffer(count: T * c.hiddenSize) : nil
        dFused = c.family.fusedWidth(c).map { FloatBuffer(count: T * $0) }
    }
}
