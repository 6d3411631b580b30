import Foundation

extension ModelFamily {
    /// Gemma 2 (Gemma2ForCausalLM): Gemma 3's block without the q/k norms, plus soft-capping:
    /// attention scores become 50·tanh(s / 50) and the final logits 30·tanh(z / 30)
    /// (attn_logit_softcapping, final_logit_softcapping; transformers' eager attention applies
    /// the cap after the scale, before the mask). Layers alternate sliding (window 4096) and
    /// global, starting with a sliding one, all with rope_theta; scores × query_pre_attn_scalar^−½;
    /// norms x̂·(1 + w) in Hugging Face files; embeddings × √hidden; GeGLU; a tied head.
    /// llama.cpp's gemma2 keys: attn_logit_softcapping, final_logit_softcapping, sliding_window.
    public static let gemma2 = ModelFamily(
        name: "gemma2", modelTypes: ["gemma2"], ggufArchitectures: ["gemma2"],
        huggingFaceArchitecture: "Gemma2ForCausalLM", huggingFaceModelType: "gemma2", ggufArchitecture: "gemma2",
        linears: LinearSpec.llamaBlock,
        norms: [.input, .gemmaPostAttention, .preFeedforward, .postFeedforward], extras: [],
        ggufPermutesQK: false, block: SandwichNormBlock.self,
        readHuggingFaceConfig: { c, j, source in
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
                c.slidingLayers = gemmaPattern(layers: c.numLayers, every: 2)
            }
            let scalar = (j["query_pre_attn_scalar"] as? Double) ?? Double(c.headDim)
            c.attentionScale = Float(1 / scalar.squareRoot())
            c.embeddingScale = Float(Double(c.hiddenSize).squareRoot())
            c.attentionSoftcap = (j["attn_logit_softcapping"] as? Double).map(Float.init)
            c.finalLogitSoftcap = (j["final_logit_softcapping"] as? Double).map(Float.init)
            if let act = (j["hidden_activation"] as? String) ?? (j["hidden_act"] as? String), act != "gelu_pytorch_tanh" {
                throw ModelConfigError.invalid(source: source, field: "hidden_activation", detail: "'\(act)' (only gelu_pytorch_tanh)")
            }
        },
        readGGUF: { c, g, arch, _ in
            c.slidingWindow = g.metadata["\(arch).attention.sliding_window"]?.int ?? 4096
            c.slidingLayers = gemmaPattern(layers: c.numLayers, every: 2)
            c.attentionScale = Float(1 / Double(c.headDim).squareRoot())
            c.embeddingScale = Float(Double(c.hiddenSize).squareRoot())
            c.attentionSoftcap = g.metadata["\(arch).attn_logit_softcapping"]?.double.map(Float.init) ?? 50
            c.finalLogitSoftcap = g.metadata["\(arch).final_logit_softcapping"]?.double.map(Float.init) ?? 30
            c.rmsNormEps = g.metadata["\(arch).attention.layer_norm_rms_epsilon"]?.double.map(Float.init) ?? 1e-6
        },
        huggingFaceKeys: { c in
            var keys: [String: Any] = [
                "hidden_activation": "gelu_pytorch_tanh", "hidden_act": "gelu_pytorch_tanh",
                "sliding_window": c.slidingWindow ?? 4096,
                "attn_logit_softcapping": c.attentionSoftcap.map { Double($0) as Any } ?? NSNull(),
                "final_logit_softcapping": c.finalLogitSoftcap.map { Double($0) as Any } ?? NSNull(),
            ]
            if let layers = c.slidingLayers { keys["layer_types"] = layers.map { $0 ? "sliding_attention" : "full_attention" } }
            if let s = c.attentionScale { keys["query_pre_attn_scalar"] = Int((1 / Double(s * s)).rounded()) }
            return keys
        },
        huggingFaceNormOffset: 1, activation: .geluTanh,
        ggufKeys: { c, arch, note in
            if let layers = c.slidingLayers, layers != gemmaPattern(layers: c.numLayers, every: 2) {
                note("the local/global layers do not alternate, as llama.cpp (and qlora) assume for a gemma2 GGUF")
            }
            if let s = c.attentionScale, abs(s * Float(c.headDim).squareRoot() - 1) > 1e-6 {
                note("query_pre_attn_scalar is not head_dim (\(c.headDim)): llama.cpp (and qlora) scale a gemma2 GGUF's scores by head_dim^−½")
            }
            var keys: [(key: String, value: GGUFValue)] = []
            if let w = c.slidingWindow { keys.append(("\(arch).attention.sliding_window", .uint32(UInt32(w)))) }
            if let cap = c.attentionSoftcap { keys.append(("\(arch).attn_logit_softcapping", .float32(cap))) }
            if let cap = c.finalLogitSoftcap { keys.append(("\(arch).final_logit_softcapping", .float32(cap))) }
            return keys
        })
}
