import Foundation

extension ModelFamily {
    /// Mistral (MistralForCausalLM): Llama's block and names, with a sliding window: a query
    /// sees its `sliding_window` latest keys, itself included (transformers' sliding-window
    /// mask, `i − window < j ≤ i`), in training, generation (KV cache) and perplexity alike.
    /// Mistral 7B v0.1 has 4096; later versions write null (no window). llama.cpp converts
    /// Mistral to its `llama` architecture, which is what a GGUF export declares.
    public static let mistral = ModelFamily(
        name: "mistral", modelTypes: ["mistral"], ggufArchitectures: ["mistral"],
        huggingFaceArchitecture: "MistralForCausalLM", huggingFaceModelType: "mistral", ggufArchitecture: "llama",
        linears: LinearSpec.llamaBlock, norms: [.input, .postAttention], extras: TensorSpec.qkvBiases,
        ggufPermutesQK: true, block: PreNormBlock.self,
        readHuggingFaceConfig: { c, j, source in
            guard let w = j["sliding_window"], !(w is NSNull) else { return }
            guard let n = w as? Int, n > 0 else {
                throw ModelConfigError.invalid(source: source, field: "sliding_window", detail: "\(w) is not a positive integer")
            }
            c.slidingWindow = n
        },
        readGGUF: { c, g, arch, _ in c.slidingWindow = g.metadata["\(arch).attention.sliding_window"]?.int },
        huggingFaceKeys: { c in ["sliding_window": c.slidingWindow.map { $0 as Any } ?? NSNull()] },
        ggufKeys: { c, _, note in
            if let w = c.slidingWindow {
                note("sliding_window \(w) has no GGUF key in llama.cpp's llama architecture: llama.cpp attends to every earlier position, as for convert_hf_to_gguf's files")
            }
            return []
        })
}
