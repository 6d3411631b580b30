import Foundation

extension ModelFamily {
    /// Llama 1, 2 and 3.x (llama3 rope scaling) and SmolLM, transformers' LlamaForCausalLM:
    /// pre-norm blocks (RMSNorm, grouped-query attention with RoPE, SwiGLU MLP), an optional
    /// tied head; q/k/v biases when config.json says attention_bias. llama.cpp's converter
    /// permutes q/k rows into its rotary order; qlora puts them back on load and permutes them
    /// again on GGUF export.
    ///
    ///   HF  model.layers.N.                 GGUF blk.N.       PEFT target
    ///       input_layernorm                 attn_norm
    ///       self_attn.{q,k,v,o}_proj        attn_{q,k,v,output}  q_proj k_proj v_proj o_proj
    ///       post_attention_layernorm        ffn_norm
    ///       mlp.{gate,up,down}_proj         ffn_{gate,up,down}   gate_proj up_proj down_proj
    public static let llama = ModelFamily(
        name: "llama", modelTypes: ["llama", "smollm"], ggufArchitectures: ["llama"],
        huggingFaceArchitecture: "LlamaForCausalLM", huggingFaceModelType: "llama", ggufArchitecture: "llama",
        linears: LinearSpec.llamaBlock, norms: [.input, .postAttention], extras: TensorSpec.qkvBiases,
        ggufPermutesQK: true, block: PreNormBlock.self,
        readHuggingFaceConfig: noExtraHuggingFaceKeys, readGGUF: noExtraGGUFKeys, huggingFaceKeys: noHuggingFaceKeys)
}
