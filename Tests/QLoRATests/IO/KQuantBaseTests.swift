import Foundation
import QLoRA
import Quant
import XCTest

/// A GGUF whose linear weights are K-quants (as in the Q4_K_M files users hold) opens as a
/// frozen base: each linear is dequantized and requantized to the nearest format the GEMMs take.
final class KQuantBaseTests: XCTestCase {
    let dir = TempDir()

    /// Random blocks of `type` with finite fp16 scales at the given byte offsets.
    func blocks(_ type: GGMLType, count: Int, scaleOffsets: [Int], rng: inout SplitMix64) -> [UInt8] {
        var bytes = (0..<(count * type.blockBytes)).map { _ in UInt8.random(in: 0...255, using: &rng) }
        for b in 0..<count {
            for off in scaleOffsets {
                let h = FP16.bits(from: Float.random(in: 0.001...0.01, using: &rng))
                bytes[b * type.blockBytes + off] = UInt8(h & 0xFF)
                bytes[b * type.blockBytes + off + 1] = UInt8(h >> 8)
            }
        }
        return bytes
    }

    func testKQuantLinearsAreRequantizedAtLoad() throws {
        var rng = SplitMix64(seed: 42)
        let c = 256, kv = 128
        var w = GGUFWriter()
        w.metadata = [
            ("general.architecture", .string("llama")), ("llama.block_count", .uint32(1)), ("llama.embedding_length", .uint32(UInt32(c))),
            ("llama.feed_forward_length", .uint32(UInt32(c))), ("llama.attention.head_count", .uint32(4)),
            ("llama.attention.head_count_kv", .uint32(2)), ("llama.context_length", .uint32(64)),
        ]
        let floats = { (n: Int) in (0..<n).map { _ in Float.random(in: -0.1...0.1, using: &rng) }.withUnsafeBytes { Array($0) } }
        let halves = { (n: Int) in (0..<n).map { _ in FP16.bits(from: Float.random(in: -0.1...0.1, using: &rng)) }.withUnsafeBytes { Array($0) } }
        let tensors: [(String, [Int], GGMLType, [UInt8])] = [
            ("token_embd.weight", [c, 8], .f32, floats(c * 8)),
            ("blk.0.attn_norm.weight", [c], .f32, floats(c)),
            ("blk.0.attn_q.weight", [c, c], .q4_K, blocks(.q4_K, count: c, scaleOffsets: [0, 2], rng: &rng)),
            ("blk.0.attn_k.weight", [c, kv], .q4_K, blocks(.q4_K, count: kv, scaleOffsets: [0, 2], rng: &rng)),
            ("blk.0.attn_v.weight", [c, kv], .f16, halves(c * kv)),
            ("blk.0.attn_output.weight", [c, c], .q6_K, blocks(.q6_K, count: c, scaleOffsets: [208], rng: &rng)),
            ("blk.0.ffn_norm.weight", [c], .f32, floats(c)),
            ("blk.0.ffn_gate.weight", [c, c], .q5_K, blocks(.q5_K, count: c, scaleOffsets: [0, 2], rng: &rng)),
            ("blk.0.ffn_up.weight", [c, c], .q4_1, try QuantizedMatrix(quantizing: (0..<(c * c)).map { _ in Float.random(in: -0.1...0.1, using: &rng) },
                                                                     rows: c, cols: c, format: .q4_1).data.array(of: UInt8.self)),
            ("blk.0.ffn_down.weight", [c, c], .q4_K, blocks(.q4_K, count: c, scaleOffsets: [0, 2], rng: &rng)),
            ("output_norm.weight", [c], .f32, floats(c)),
        ]
        w.tensors = tensors.map { .init(name: $0.0, ne: $0.1, type: $0.2) }
        let path = dir.path + "/kquant.gguf"
        try w.write(to: path) { tensors[$0].3 }

        let model = try QuantizedModel(path: path)
        let source = try ModelSource(path: path)
        let expected: [String: QuantFormat] = [
            "model.layers.0.self_attn.q_proj.weight": .q4_1, "model.layers.0.self_attn.k_proj.weight": .q4_1,
            "model.layers.0.self_attn.v_proj.weight": .q8_0, "model.layers.0.self_attn.o_proj.weight": .q8_0,
            "model.layers.0.mlp.gate_proj.weight": .q8_0, "model.layers.0.mlp.up_proj.weight": .q4_1,
            "model.layers.0.mlp.down_proj.weight": .q4_1,
        ]
        for (name, format) in expected {
            let q = try XCTUnwrap(model.linears[name], name)
            XCTAssertEqual(q.format, format, name)
            // Within one step of the requantized format of the source's own values (HF row order).
            let reference = try source.load(source.tensors.first { $0.name == name }!)
            let got = q.dequantize()
            for block in 0..<(reference.count / 32) {
                let r = reference[(block * 32)..<(block * 32 + 32)]
                let amax = r.map(abs).max()!
                let step = format == .q4_1 ? (r.max()! - r.min()!) / 15 * 1.01 + abs(r.min()!) * 1e-3 + 1e-6 : amax / 127 * 1.01 + 1e-6
                for i in r.indices where abs(got[i] - r[i]) > step {
                    return XCTFail("\(name)[\(i)]: \(got[i]) vs \(r[i]) (step \(step))")
                }
            }
        }
        XCTAssertEqual(try ModelSummary.load(path: path).requantizedAtLoad, ["F16 → q8_0", "Q4_K → q4_1", "Q5_K → q8_0", "Q6_K → q8_0"])
    }
}
