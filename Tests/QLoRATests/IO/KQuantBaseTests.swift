import Foundation
@testable import QLoRA
import Quant
import XCTest

/// A GGUF whose linear weights are K-quants (as in the Q4_K_M files users hold) opens as a
/// frozen base with its blocks as the file stores them (F16 linears become Q8_0); asked for
/// (`kQuants: .q4_1`, what runs that stored no choice were trained on), each K-quant linear is
/// dequantized and requantized to the nearest format the GEMMs took before.
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

    /// A one-block Llama GGUF: q, k and down Q4_K, o Q6_K, gate Q5_K, up Q4_1, v F16.
    func writeModel(seed: UInt64) throws -> String {
        var rng = SplitMix64(seed: seed)
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
        return path
    }

    /// Formats and bytes are the file's, the values are the load-time (ggml) dequantization
    /// bit for bit, and each linear's GEMMs, fp32 and bf16, forward and backward, match a
    /// float64 product with those values.
    func testKQuantLinearsAreUsedAsTheFileStoresThem() throws {
        let path = try writeModel(seed: 42)
        let model = try QuantizedModel(path: path)
        XCTAssertEqual(model.kQuants, .asIs)
        let source = try ModelSource(path: path)
        let gguf = try XCTUnwrap(source.gguf)
        let expected: [String: QuantFormat] = [
            "model.layers.0.self_attn.q_proj.weight": .q4_K, "model.layers.0.self_attn.k_proj.weight": .q4_K,
            "model.layers.0.self_attn.v_proj.weight": .q8_0, "model.layers.0.self_attn.o_proj.weight": .q6_K,
            "model.layers.0.mlp.gate_proj.weight": .q5_K, "model.layers.0.mlp.up_proj.weight": .q4_1,
            "model.layers.0.mlp.down_proj.weight": .q4_K,
        ]
        var fileBytes = 0
        for (name, format) in expected {
            let q = try XCTUnwrap(model.linears[name], name)
            XCTAssertEqual(q.format, format, name)
            let t = try XCTUnwrap(source.tensors.first { $0.name == name }), gt = try XCTUnwrap(t.gguf)
            let values = try source.load(t)  // ggml's dequantization, Hugging Face row order
            if format.isKQuant {
                // The file's bytes: borrowed as they are, or (q, k) their rows back in HF order.
                let file = Array(gguf.data(of: gt))
                let rows = source.ropeHeads(of: name).map { ModelSource.unpermuteRows(file, rows: gt.rows, heads: $0) } ?? file
                XCTAssertEqual(q.data.array(of: UInt8.self), rows, name)
                XCTAssertEqual(q.byteCount, gt.byteCount, name)
                XCTAssertEqual(q.dequantize().map(\.bitPattern), values.map(\.bitPattern), name)
                fileBytes += gt.byteCount
            } else {
                fileBytes += q.byteCount
            }
            try assertGEMMsMatchFloat64(q, q.dequantize(), name)  // for K-quants the file's values, as checked
        }
        XCTAssertEqual(model.linearBytes, fileBytes)
        XCTAssertEqual(try ModelSummary.load(path: path).requantizedAtLoad, ["F16 → q8_0"])
    }

    /// Y = X·Wᵀ and dX = dY·W for T = 1, 5, 33 against float64 with W's values: fp32 within
    /// 1e-5 of max |ref| (GEMMTests' bound), bf16 within 2.1·2⁻⁸·Σ|x||w| (BF16GEMMTests' for K ≤ 1024).
    func assertGEMMsMatchFloat64(_ w: QuantizedMatrix, _ values: [Float], _ name: String) throws {
        var rng = SplitMix64(seed: 7)
        let (out, inp) = (w.rows, w.cols)
        for T in [1, 5, 33] {
            let x = (0..<(T * inp)).map { _ in Float.random(in: -1...1, using: &rng) }
            let dy = (0..<(T * out)).map { _ in Float.random(in: -1...1, using: &rng) }
            var yRef = [Double](repeating: 0, count: T * out), yAbs = yRef
            var dxRef = [Double](repeating: 0, count: T * inp), dxAbs = dxRef
            for t in 0..<T {
                for o in 0..<out {
                    for i in 0..<inp {
                        let p = Double(x[t * inp + i]) * Double(values[o * inp + i]), g = Double(dy[t * out + o]) * Double(values[o * inp + i])
                        yRef[t * out + o] += p
                        yAbs[t * out + o] += abs(p)
                        dxRef[t * inp + i] += g
                        dxAbs[t * inp + i] += abs(g)
                    }
                }
            }
            let dtypes: [ComputeDType] = ComputeRuntime.bf16Available ? [.fp32, .bf16] : [.fp32]
            for dtype in dtypes {
                let y = try w.forward(x, tokens: T, dtype: dtype), dx = try w.backward(dy, tokens: T, dtype: dtype)
                for (got, ref, abs, what) in [(y, yRef, yAbs, "forward"), (dx, dxRef, dxAbs, "backward")] {
                    let scale = ref.map { Swift.abs($0) }.max() ?? 0
                    for i in got.indices {
                        let bound = dtype == .fp32 ? 1e-5 * scale : 2.1 * 0x1p-8 * abs[i]
                        if Swift.abs(Double(got[i]) - ref[i]) > bound {
                            return XCTFail("\(name) \(what) \(dtype) T=\(T) [\(i)]: \(got[i]) vs \(ref[i]) (bound \(bound))")
                        }
                    }
                }
            }
        }
    }

    /// kQuants .q4_1 (runs that stored no choice): each K-quant linear is requantized as before.
    func testKQuantLinearsAreRequantizedWhenAsked() throws {
        let path = try writeModel(seed: 42)
        let model = try QuantizedModel(path: path, kQuants: .q4_1)
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
        for type: GGMLType in [.q2_K, .q3_K, .q4_K] {
            XCTAssertTrue(QuantizedModel.loadFormat(for: type, kQuants: .q4_1) == (.q4_1, true))
            XCTAssertTrue(QuantizedModel.loadFormat(for: type, kQuants: .q8_0) == (.q8_0, true))
        }
        for type: GGMLType in [.q5_0, .q5_1, .q5_K, .q6_K, .f16, .bf16, .f32] {
            XCTAssertTrue(QuantizedModel.loadFormat(for: type, kQuants: .q4_1) == (.q8_0, true))
        }
        for type: GGMLType in [.q4_0, .q4_1, .q8_0] {
            XCTAssertTrue(QuantizedModel.loadFormat(for: type, kQuants: .q4_1) == (QuantFormat(ggml: type)!, false))
        }
        for type in GGMLType.allCases {
            XCTAssertTrue(QuantizedModel.loadFormat(for: type) == (QuantFormat(ggml: type).map { ($0, false) } ?? (.q8_0, true)), type.name)
        }
    }
}
