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
        readHuggingFaceConfig: { c, j, source in try readGemmaConfig(&c, j, source: source, globalEvery: 2) },
        readGGUF: { c, g, arch, _ in
            readGemmaGGUF(&c, g, arch, globalEvery: 2)
            c.attentionSoftcap = c.attentionSoftcap ?? 50
            c.finalLogitSoftcap = c.finalLogitSoftcap ?? 30
        },
        huggingFaceKeys: gemmaHuggingFaceKeys,
        huggingFaceNormOffset: 1, activation: .geluTanh,
        ggufKeys: { c, arch, note in gemmaGGUFKeys(c, arch, note, globalEvery: 2) })
}
