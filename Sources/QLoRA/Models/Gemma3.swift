import Foundation

extension ModelFamily {
    /// Gemma 3 (Gemma3ForCausalLM, model_type `gemma3_text`; the text part of `gemma3`):
    ///   - embeddings × √hidden (rounded to fp32, as transformers multiplies in the weight dtype);
    ///   - sandwich norms: RMSNorm before and after attention and before and after the MLP, all
    ///     computed as x̂·(1 + w) from Hugging Face files (GGUF files store 1 + w already);
    ///   - per-head RMSNorms on q and k before RoPE (as Qwen3), scores × query_pre_attn_scalar^−½;
    ///   - interleaved layers: local ones attend through a sliding window with their own RoPE base
    ///     (rope_local_base_freq, 10,000), global ones see everything with rope_theta (1e6);
    ///     `layer_types` says which, else every `sliding_window_pattern`-th layer (6) is global;
    ///   - GeGLU MLP with tanh-GELU; a tied head (262,144 tokens in the real models).
    ///
    ///   HF  model.layers.N.                 GGUF blk.N.
    ///       input_layernorm                 attn_norm
    ///       self_attn.{q,k,v,o}_proj        attn_{q,k,v,output}
    ///       self_attn.{q,k}_norm            attn_{q,k}_norm
    ///       post_attention_layernorm        post_attention_norm
    ///       pre_feedforward_layernorm       ffn_norm
    ///       mlp.{gate,up,down}_proj         ffn_{gate,up,down}
    ///       post_feedforward_layernorm      post_ffw_norm
    /// llama.cpp keeps q/k rows in Hugging Face order for Gemma and does not store the local RoPE
    /// base nor the window pattern: qlora uses 10,000 and every 6th layer global there, as
    /// llama.cpp does.
    public static let gemma3 = ModelFamily(
        name: "gemma3", modelTypes: ["gemma3_text", "gemma3"], ggufArchitectures: ["gemma3"],
        huggingFaceArchitecture: "Gemma3ForCausalLM", huggingFaceModelType: "gemma3_text", ggufArchitecture: "gemma3",
        linears: LinearSpec.llamaBlock,
        norms: [.input, .qNorm, .kNorm, .gemmaPostAttention, .preFeedforward, .postFeedforward], extras: [],
        ggufPermutesQK: false, block: SandwichNormBlock.self,
        readHuggingFaceConfig: { c, j, source in
            let params = j["rope_parameters"] as? [String: Any]
            func nested(_ kind: String) -> Float? {
                ((params?[kind] as? [String: Any])?["rope_theta"] as? Double).map(Float.init)
            }
            c.ropeTheta = nested("full_attention") ?? (j["rope_theta"] as? Double).map(Float.init) ?? 1_000_000
            c.localRopeTheta = nested("sliding_attention") ?? (j["rope_local_base_freq"] as? Double).map(Float.init) ?? 10_000
            if let full = params?["full_attention"] as? [String: Any], let type = full["rope_type"] as? String, type != "default" {
                c.ropeScaling = ModelConfig.RopeScaling(type: type, factor: Float((full["factor"] as? Double) ?? 1), lowFreqFactor: nil,
                                                        highFreqFactor: nil, originalMaxPositionEmbeddings: nil)
            }
            c.rmsNormEps = (j["rms_norm_eps"] as? Double).map(Float.init) ?? 1e-6
            c.tieWordEmbeddings = (j["tie_word_embeddings"] as? Bool) ?? true
            c.slidingWindow = (j["sliding_window"] as? Int) ?? 4096
            if let types = j["layer_types"] as? [String] {
                guard types.count == c.numLayers else {
                    throw ModelConfigError.invalid(source: source, field: "layer_types",
                                                   detail: "\(types.count) entries for \(c.numLayers) layers")
                }
                c.slidingLayers = types.map { $0 == "sliding_attention" }
            } else {
                c.slidingLayers = gemmaPattern(layers: c.numLayers, every: (j["sliding_window_pattern"] as? Int) ?? 6)
            }
            let scalar = (j["query_pre_attn_scalar"] as? Double) ?? Double(c.headDim)
            c.attentionScale = Float(1 / scalar.squareRoot())
            c.embeddingScale = Float(Double(c.hiddenSize).squareRoot())
            for key in ["final_logit_softcapping", "attn_logit_softcapping"] {
                if let v = j[key], !(v is NSNull) {
                    throw ModelConfigError.invalid(source: source, field: key, detail: "\(v): soft-capping (Gemma 2) is not supported")
                }
            }
            if let act = j["hidden_activation"] as? String, act != "gelu_pytorch_tanh" {
                throw ModelConfigError.invalid(source: source, field: "hidden_activation", detail: "'\(act)' (only gelu_pytorch_tanh)")
            }
        },
        readGGUF: { c, g, arch, _ in
            c.slidingWindow = g.metadata["\(arch).attention.sliding_window"]?.int ?? 4096
            c.slidingLayers = gemmaPattern(layers: c.numLayers, every: g.metadata["\(arch).attention.sliding_window_pattern"]?.int ?? 6)
            c.localRopeTheta = 10_000
            c.attentionScale = Float(1 / Double(c.headDim).squareRoot())
            c.embeddingScale = Float(Double(c.hiddenSize).squareRoot())
            c.rmsNormEps = g.metadata["\(arch).attention.layer_norm_rms_epsilon"]?.double.map(Float.init) ?? 1e-6
        },
        huggingFaceKeys: { c in
            var keys: [String: Any] = [
                "hidden_activation": "gelu_pytorch_tanh", "query_pre_attn_scalar": c.headDim,
                "rope_local_base_freq": Double(c.localRopeTheta ?? 10_000), "sliding_window": c.slidingWindow ?? 4096,
                "final_logit_softcapping": NSNull(), "attn_logit_softcapping": NSNull(),
            ]
            if let layers = c.slidingLayers { keys["layer_types"] = layers.map { $0 ? "sliding_attention" : "full_attention" } }
            if let s = c.attentionScale { keys["query_pre_attn_scalar"] = Int((1 / Double(s * s)).rounded()) }
            return keys
        },
        huggingFaceNormOffset: 1, activation: .geluTanh,
        ggufKeys: { c, arch, note in
            // llama.cpp refuses a gemma3 file without the window, and fixes what GGUF does not
            // store: every 6th layer global, scores × head_dim^−½.
            if let layers = c.slidingLayers, layers != gemmaPattern(layers: c.numLayers, every: 6) {
                note("the local/global layer pattern is not every 6th layer global, the one llama.cpp (and qlora) assume for a gemma3 GGUF")
            }
            if let s = c.attentionScale, abs(s * Float(c.headDim).squareRoot() - 1) > 1e-6 {
                note("query_pre_attn_scalar is not head_dim (\(c.headDim)): llama.cpp (and qlora) scale a gemma3 GGUF's scores by head_dim^−½")
            }
            return c.slidingWindow.map { [("\(arch).attention.sliding_window", .uint32(UInt32($0)))] } ?? []
        })

    /// Every `every`-th layer global (false), the others sliding.
    static func gemmaPattern(layers: Int, every: Int) -> [Bool] {
        (0..<layers).map { every <= 0 || ($0 + 1) % every != 0 }
    }
}

/// Gemma's block: a norm before and after each sublayer. Legend: T tokens, C hidden.
///
///   h[T, C] = x + rmsnorm(attention(rmsnorm(x) ⊙ w_input)) ⊙ w_post_attention
///   y[T, C] = h + rmsnorm(mlp(rmsnorm(h) ⊙ w_pre_ff)) ⊙ w_post_ff
enum SandwichNormBlock: DecoderBlock {
    static func forward(y: FloatBuffer, x: FloatBuffer, acts: LlamaBlockActivations, layer w: LayerWeights,
                        rope: LlamaRoPETables, cache: LlamaKeyValues?, config c: ModelConfig, layerIndex: Int,
                        context ctx: LayerContext) throws {
        let T = acts.T, C = c.hiddenSize, n = T * C
        guard let proj = acts.attentionProjection, let projRstd = acts.attentionProjectionRstd, let mlpOut = acts.mlpOutput,
              let mlpRstd = acts.mlpOutputRstd else { preconditionFailure("activations without the sandwich norms' buffers") }
        rmsNormForward(y: acts.attentionInput.base, rstd: acts.attentionRstd.base, x: x.base, norm: w[.input], context: ctx,
                       tokens: T, eps: c.rmsNormEps)
        try attentionForward(out: proj.rows(0, count: T, width: C), acts: acts, weights: AttentionWeights(w, config: c), rope: rope,
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
    static func backward(dx: FloatBuffer, dy: FloatBuffer, x: FloatBuffer, acts: LlamaBlockActivations, layer w: LayerWeights,
                         rope: LlamaRoPETables, config c: ModelConfig, layerIndex: Int, context ctx: LayerContext,
                         grads g: LlamaBlockGradients) throws {
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
        try attentionBackward(dxn: g.dNormed, dOut: dProj, acts: acts, weights: AttentionWeights(w, config: c), rope: rope,
                              config: c, options: c.attentionOptions(layer: layerIndex), context: ctx, grads: g)
        StepProfile.measure(.elementwise) { dx.base.update(from: g.dResidual.base, count: n) }
        rmsNormBackward(dx: dx.base, dy: g.dNormed.base, x: x.base, rstd: acts.attentionRstd.base, norm: w[.input], context: ctx,
                        tokens: T)
    }
}
