import QLoRA
import XCTest

final class TensorNamesTests: XCTestCase {
    func testNamesMapBothWays() {
        let pairs = [("blk.3.attn_q.weight", "model.layers.3.self_attn.q_proj.weight"),
                     ("blk.12.ffn_down.weight", "model.layers.12.mlp.down_proj.weight"),
                     ("blk.0.ffn_norm.weight", "model.layers.0.post_attention_layernorm.weight"),
                     ("token_embd.weight", "model.embed_tokens.weight"), ("output.weight", "lm_head.weight"),
                     ("output_norm.weight", "model.norm.weight")]
        for (g, h) in pairs {
            XCTAssertEqual(TensorNames.huggingFace(fromGGUF: g, family: .llama), h)
            XCTAssertEqual(TensorNames.gguf(fromHuggingFace: h, family: .llama), g)
        }
        XCTAssertNil(TensorNames.huggingFace(fromGGUF: "blk.x.attn_q.weight", family: .llama))
        XCTAssertNil(TensorNames.huggingFace(fromGGUF: "rope_freqs.weight", family: .llama))
        XCTAssertEqual(TensorNames.role(of: "blk.1.attn_output.weight", family: .llama), .attentionProjection)
        XCTAssertEqual(TensorNames.role(of: "model.layers.1.mlp.gate_proj.weight", family: .llama), .mlpProjection)
        XCTAssertEqual(TensorNames.role(of: "model.embed_tokens.weight", family: .llama), .embedding)
        XCTAssertEqual(TensorNames.role(of: "blk.1.attn_norm.weight", family: .llama), .norm)
    }

    /// llama.cpp's permute(): reshape(heads, 2, D/2, ...).swapaxes(1, 2): GGUF row h·D + 2i + j
    /// is Hugging Face row h·D + j·D/2 + i.
    func testRopePermutation() {
        XCTAssertEqual(TensorNames.ropePermutation(rows: 4, heads: 1), [0, 2, 1, 3])
        XCTAssertEqual(TensorNames.ropePermutation(rows: 8, heads: 2), [0, 2, 1, 3, 4, 6, 5, 7])
        XCTAssertEqual(TensorNames.ropePermutation(rows: 8, heads: 1), [0, 4, 1, 5, 2, 6, 3, 7])
        let p = TensorNames.ropePermutation(rows: 576, heads: 9)
        XCTAssertEqual(p.sorted(), Array(0..<576))
    }
}
