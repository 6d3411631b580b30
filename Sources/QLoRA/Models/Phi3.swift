import Foundation

extension ModelFamily {
    /// Phi-3, Phi-3.5 and Phi-4-mini's layout (Phi3ForCausalLM): Llama's pre-norm block with q, k
    /// and v fused in one `qkv_proj` (rows [q; k; v]) and gate and up in one `gate_up_proj`
    /// (rows [gate; up]). PEFT targets the fused linears by those names (`qkv_proj`, `o_proj`,
    /// `gate_up_proj`, `down_proj`), so an adapter's B of qkv_proj is [q + 2·kv, r]. A
    /// `sliding_window` in config.json is honoured as Mistral's is. llama.cpp names them
    /// attn_qkv and ffn_up (2·F rows) and keeps rows in Hugging Face order.
    /// Partial rotary embeddings (Phi-4-mini's partial_rotary_factor 0.75) and longrope scaling
    /// (the 128k models) are refused by name.
    public static let phi3 = ModelFamily(
        name: "phi3", modelTypes: ["phi3"], ggufArchitectures: ["phi3"],
        huggingFaceArchitecture: "Phi3ForCausalLM", huggingFaceModelType: "phi3", ggufArchitecture: "phi3",
        linears: [.qkv, .o, .gateUp, .down], norms: [.input, .postAttention], extras: [],
        ggufPermutesQK: false, block: PreNormBlock.self,
        readHuggingFaceConfig: { c, j, source in
            try mistral.readHuggingFaceConfig(&c, j, source)
            let params = j["rope_parameters"] as? [String: Any]
            if let f = (j["partial_rotary_factor"] as? Double) ?? (params?["partial_rotary_factor"] as? Double), f != 1 {
                throw ModelConfigError.invalid(source: source, field: "partial_rotary_factor", detail: "\(f): partial rotary embeddings are not supported")
            }
        },
        readGGUF: { c, g, arch, _ in c.slidingWindow = g.metadata["\(arch).attention.sliding_window"]?.int },
        huggingFaceKeys: { c in ["sliding_window": c.slidingWindow.map { $0 as Any } ?? NSNull()] },
        ggufKeys: { c, arch, _ in c.slidingWindow.map { [("\(arch).attention.sliding_window", .uint32(UInt32($0)))] } ?? [] })
}
