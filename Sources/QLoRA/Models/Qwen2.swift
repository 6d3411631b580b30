import Foundation

extension ModelFamily {
    /// Qwen2 and Qwen2.5 (Qwen2ForCausalLM): Llama's block with q/k/v biases, usually a tied
    /// head. llama.cpp keeps q/k rows in Hugging Face order for it. Its configs carry
    /// `sliding_window` with `use_sliding_window: false`, which transformers ignores; a config
    /// that turns the window on (it then applies from `max_window_layers` on) is refused.
    public static let qwen2 = ModelFamily(
        name: "qwen2", modelTypes: ["qwen2"], ggufArchitectures: ["qwen2"],
        huggingFaceArchitecture: "Qwen2ForCausalLM", huggingFaceModelType: "qwen2", ggufArchitecture: "qwen2",
        linears: LinearSpec.llamaBlock, norms: [.input, .postAttention], extras: TensorSpec.qkvBiases,
        ggufPermutesQK: false, block: PreNormBlock.self,
        readHuggingFaceConfig: refuseQwenSlidingWindow, readGGUF: noExtraGGUFKeys, huggingFaceKeys: { _ in ["use_sliding_window": false] })

    /// Qwen's `use_sliding_window: true` (per-layer windows from max_window_layers) is not run.
    static let refuseQwenSlidingWindow: @Sendable (inout ModelConfig, [String: Any], String) throws -> Void = { _, j, source in
        if j["use_sliding_window"] as? Bool == true {
            throw ModelConfigError.invalid(source: source, field: "use_sliding_window",
                                           detail: "true is not supported (Qwen's per-layer sliding window); set it to false")
        }
    }
}
