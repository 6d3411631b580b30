import Foundation

/// What Gemma 2 and Gemma 3 share: the sandwich-norm block, and the config keys both read and
/// write alike (Gemma2.swift and Gemma3.swift add what differs).
extension ModelFamily {
    /// Every `every`-th layer global (false), the others sliding.
    static func gemmaPattern(layers: Int, every: Int) -> [Bool] {
        (0..<layers).map { every <= 0 || ($0 + 1) % every != 0 }
    }

    /// config.json keys both read: eps, tied head, window and which layers use it (layer_types,
    /// else every `globalEvery`-th layer global, or `sliding_window_pattern`), the score scale
    /// query_pre_attn_scalar^−½, √hidden embeddings, soft-capping when set, tanh-GELU.
    static func readGemmaConfig(_ c: inout ModelConfig, _ j: [String: Any], source: String, globalEvery: Int) throws {
        c.rmsNormEps = (j["rms_norm_eps"] as? Double).map(Float.init) ?? 1e-6
        c.tieWordEmbeddings = (j["tie_word_embeddings"] as? Bool) ?? true
        c.slidingWindow = (j["sliding_window"] as? Int) ?? 4096
        if let types = j["layer_types"] as? [String] {
            guard types.count == c.numLayers else {
                throw ModelConfigError.invalid(source: source, field: "layer_types", detail: "\(types.count) entries for \(c.numLayers) layers")
            }
            c.slidingLayers = types.map { $0 == "sliding_attention" }
        } else {
            c.slidingLayers = gemmaPattern(layers: c.numLayers, every: (j["sliding_window_pattern"] as? Int) ?? globalEvery)
        }
        let scalar = (j["query_pre_attn_scalar"] as? Double) ?? Double(c.headDim)
        guard scalar > 0, scalar.isFinite else {
            throw ModelConfigError.invalid(source: source, field: "query_pre_attn_scalar", detail: "\(scalar) is not a positive number")
        }
        c.attentionScale = Float(1 / scalar.squareRoot())
        c.embeddingScale = Float(Double(c.hiddenSize).squareRoot())
        c.attentionSoftcap = (j["attn_logit_softcapping"] as? Double).map(Float.init)
        c.finalLogitSoftcap = (j["final_logit_softcapping"] as? Double).map(Float.init)
        if let act = (j["hidden_activation"] as? String) ?? (j["hidden_act"] as? String), act != "gelu_pytorch_tanh" {
            throw ModelConfigError.invalid(source: source, field: "hidden_activation", detail: "'\(act)' (only gelu_pytorch_tanh)")
        }
    }

    /// The same from GGUF: llama.cpp stores the window and eps, and assumes the layer pattern
    /// and scores × head_dim^−½.
    static func readGemmaGGUF(_ c: inout ModelConfig, _ g: GGUFFile, _ arch: String, globalEvery: Int) {
        c.slidingWindow = g.metadata["\(arch).attention.sliding_window"]?.int ?? 4096
        c.slidingLayers = gemmaPattern(layers: c.numLayers, every: g.metadata["\(arch).attention.sliding_window_pattern"]?.int ?? globalEvery)
        c.attentionScale = Float(1 / Double(c.headDim).squareRoot())
        c.embeddingScale = Float(Double(c.hiddenSize).squareRoot())
        c.rmsNormEps = g.metadata["\(arch).attention.layer_norm_rms_epsilon"]?.double.map(Float.init) ?? 1e-6
        c.attentionSoftcap = g.metadata["\(arch).attn_logit_softcapping"]?.double.map(Float.init)
        c.finalLogitSoftcap = g.metadata["\(arch).final_logit_softcapping"]?.double.map(Float.init)
    }

    /// config.json keys both write.
    static func gemmaHuggingFaceKeys(_ c: ModelConfig) -> [String: Any] {
        var keys: [String: Any] = [
            "hidden_activation": "gelu_pytorch_tanh", "hidden_act": "gelu_pytorch_tanh", "query_pre_attn_scalar": c.headDim,
            "sliding_window": c.slidingWindow ?? 4096,
            "attn_logit_softcapping": c.attentionSoftcap.map { Double($0) as Any } ?? NSNull(),
            "final_logit_softcapping": c.finalLogitSoftcap.map { Double($0) as Any } ?? NSNull(),
        ]
        if let layers = c.slidingLayers { keys["layer_types"] = layers.map { $0 ? "sliding_attention" : "full_attention" } }
        if let s = c.attentionScale { keys["query_pre_attn_scalar"] = Int((1 / Double(s * s)).rounded()) }
        return keys
    }

    /// GGUF keys both write (window, soft-capping), with notes on what llama.cpp assumes instead
    /// of reading: the layer pattern (every `globalEvery`-th global) and scores × head_dim^−½.
    static func gemmaGGUFKeys(_ c: ModelConfig, _ arch: String, _ note: (String) -> Void, globalEvery: Int) -> [(key: String, value: GGUFValue)] {
        if let layers = c.slidingLayers, layers != gemmaPattern(layers: c.numLayers, every: globalEvery) {
            note("the local/global layer pattern is not every \(globalEvery == 2 ? "other" : "\(globalEvery)th") layer global, the one llama.cpp (and qlora) assume for a \(arch) GGUF")
        }
        if let s = c.attentionScale, abs(s * Float(c.headDim).squareRoot() - 1) > 1e-6 {
            note("query_pre_attn_scalar is not head_dim (\(c.headDim)): llama.cpp (and qlora) scale a \(arch) GGUF's scores by head_dim^−½")
        }
        var keys: [(key: String, value: GGUFValue)] = []
        if let w = c.slidingWindow { keys.append(("\(arch).attention.sliding_window", .uint32(UInt32(w)))) }
        if let cap = c.attentionSoftcap { keys.append(("\(arch).attn_logit_softcapping", .float32(cap))) }
        if let cap = c.finalLogitSoftcap { keys.append(("\(arch).final_logit_softcapping", .float32(cap))) }
        return keys
    }
}

/// Gemma's block: a norm before and after each sublayer. Legend: T tokens, C hidden.
///
///   h[T, C] = x + rmsnorm(attention(rmsnorm(x) ⊙ w_input)) ⊙ w_post_attention
///   y[T, C] = h + rmsnorm(mlp(rmsnorm(h) ⊙ w_pre_ff)) ⊙ w_post_ff
enum SandwichNormBlock: DecoderBlock {
    static func forward(y: FloatBuffer, x: FloatBuffer, acts: BlockActivations, layer w: LayerWeights,
                        rope: RotaryTables, cache: KeyValues?, config c: ModelConfig, layerIndex: Int,
                        context ctx: LayerContext) throws {
        let T = acts.T, C = c.hiddenSize, n = T * C
        guard let proj = acts.attentionProjection, let projRstd = acts.attentionProjectionRstd, let mlpOut = acts.mlpOutput,
              let mlpRstd = acts.mlpOutputRstd else { preconditionFailure("activations without the sandwich norms' buffers") }
        rmsNormForward(y: acts.attentionInput.base, rstd: acts.attentionRstd.base, x: x.base, norm: w[.input], context: ctx,
                       tokens: T, eps: c.rmsNormEps)
        try attentionForward(out: proj.rows(0, count: T, width: C), acts: acts, weights: AttentionWeights(w), rope: rope,
                             cache: cache, config: c, options: c.attentionOptions(layer: layerIndex), context: ctx, accumulate: false)
        // h = x + norm(proj): the norm writes into residual, x is added after.
        rmsNormForward(y: acts.residual.base, rstd: projRstd.base, x: proj.base, norm: w[.gemmaPostAttention], context: ctx,
                       tokens: T, eps: c.rmsNormEps)
        StepProfile.measure(.elementwise) { for i in 0..<n { acts.residual.base[i] += x.base[i] } }
        rmsNormForward(y: acts.mlpInput.base, rstd: acts.mlpRstd.base, x: acts.residual.base, norm: w[.preFeedforward],
                       context: ctx, tokens: T, eps: c.rmsNormEps)
        try gatedMLPForward(out: mlpOut.rows(0, count: T, width: C), acts: acts, weights: GatedMLPWeights(w), config: c,
                            context: ctx, accumulate: false)
        rmsNormForward(y: y.base, rstd: mlpRstd.base, x: mlpOut.base, norm: w[.postFeedforward], context: ctx, tokens: T,
                       eps: c.rmsNormEps)
        StepProfile.measure(.elementwise) { for i in 0..<n { y.base[i] += acts.residual.base[i] } }
    }

    ///   dmlp = rmsnorm'(dy) through w_post_ff;   dh = dy + rmsnorm'(mlp'(dmlp)) through w_pre_ff
    ///   dproj = rmsnorm'(dh) through w_post_attention;   dx = dh + rmsnorm'(attention'(dproj)) through w_input
    static func backward(dx: FloatBuffer, dy: FloatBuffer, x: FloatBuffer, acts: BlockActivations, layer w: LayerWeights,
                         rope: RotaryTables, config c: ModelConfig, layerIndex: Int, context ctx: LayerContext,
                         grads g: BlockGradients) throws {
        let T = acts.T, n = T * c.hiddenSize
        guard let proj = acts.attentionProjection, let projRstd = acts.attentionProjectionRstd, let mlpOut = acts.mlpOutput,
              let mlpRstd = acts.mlpOutputRstd, let dProj = g.dProjection else {
            preconditionFailure("activations without the sandwich norms' buffers")
        }
        rmsNormBackward(dx: dProj.base, dy: dy.base, x: mlpOut.base, rstd: mlpRstd.base, norm: w[.postFeedforward], context: ctx,
                        tokens: T, accumulate: false)
        try gatedMLPBackward(dxn: g.dNormed, dOut: dProj, acts: acts, weights: GatedMLPWeights(w), config: c, context: ctx, grads: g)
        StepProfile.measure(.elementwise) { g.dResidual.base.update(from: dy.base, count: n) }
        rmsNormBackward(dx: g.dResidual.base, dy: g.dNormed.base, x: acts.residual.base, rstd: acts.mlpRstd.base,
                        norm: w[.preFeedforward], context: ctx, tokens: T)
        rmsNormBackward(dx: dProj.base, dy: g.dResidual.base, x: proj.base, rstd: projRstd.base, norm: w[.gemmaPostAttention],
                        context: ctx, tokens: T, accumulate: false)
        try attentionBackward(dxn: g.dNormed, dOut: dProj, acts: acts, weights: AttentionWeights(w), rope: rope,
                              config: c, options: c.attentionOptions(layer: layerIndex), context: ctx, grads: g)
        StepProfile.measure(.elementwise) { dx.base.update(from: g.dResidual.base, count: n) }
        rmsNormBackward(dx: dx.base, dy: g.dNormed.base, x: x.base, rstd: acts.attentionRstd.base, norm: w[.input], context: ctx,
                        tokens: T)
    }
}
