import Foundation

extension ModelFamily {
    /// Qwen3 (Qwen3ForCausalLM): Llama's block with an RMSNorm on every head of q and of k
    /// (`self_attn.q_norm`, `self_attn.k_norm`, D values each, before RoPE), no biases, an
    /// explicit head_dim (128 where hidden / heads is not), tied or untied head. The q/k norms
    /// train with `--train-norms` like the others. llama.cpp names them attn_q_norm, attn_k_norm
    /// and keeps q/k rows in Hugging Face order.
    public static let qwen3 = ModelFamily(
        name: "qwen3", modelTypes: ["qwen3"], ggufArchitectures: ["qwen3"],
        huggingFaceArchitecture: "Qwen3ForCausalLM", huggingFaceModelType: "qwen3", ggufArchitecture: "qwen3",
        linears: LinearSpec.llamaBlock, norms: [.input, .postAttention, .qNorm, .kNorm], extras: TensorSpec.qkvBiases,
        ggufPermutesQK: false, block: PreNormBlock.self,
        readHuggingFaceConfig: refuseQwenSlidingWindow, readGGUF: noExtraGGUFKeys, huggingFaceKeys: { _ in ["use_sliding_window": false] })
}
