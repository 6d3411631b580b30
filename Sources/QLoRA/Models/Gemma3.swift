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
            try readGemmaConfig(&c, j, source: source, globalEvery: 6)
        },
        readGGUF: { c, g, arch, _ in
            readGemmaGGUF(&c, g, arch, globalEvery: 6)
            c.localRopeTheta = 10_000
        },
        huggingFaceKeys: { c in
            var keys = gemmaHuggingFaceKeys(c)
            keys["rope_local_base_freq"] = Double(c.localRopeTheta ?? 10_000)
            return keys
        },
        huggingFaceNormOffset: 1, activation: .geluTanh,
        ggufKeys: { c, arch, note in gemmaGGUFKeys(c, arch, note, globalEvery: 6) })
}
