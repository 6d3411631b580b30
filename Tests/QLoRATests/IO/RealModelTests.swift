import Foundation
import QLoRA
import Quant
import XCTest

/// The bundled default, SmolLM2-135M-Instruct (Q4_1 GGUF), fetched by tools/setup.sh.
final class RealModelTests: XCTestCase {
    static let path = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("../../../models/SmolLM2-135M-Instruct.Q4_1.gguf").standardized.path

    func model() throws -> GGUFFile {
        guard FileManager.default.fileExists(atPath: Self.path) else {
            throw XCTSkip("\(Self.path) missing: run tools/setup.sh")
        }
        return try GGUFFile(path: Self.path)
    }

    func testConfigAndTensorsOfSmolLM2() throws {
        let g = try model()
        let c = try ModelConfig(gguf: g)
        XCTAssertEqual(c.architecture, "llama")
        XCTAssertEqual([c.numLayers, c.hiddenSize, c.intermediateSize, c.numHeads, c.numKVHeads, c.headDim, c.vocabSize],
                       [30, 576, 1536, 9, 3, 64, 49152])
        XCTAssertEqual(c.ropeTheta, 100_000)
        XCTAssertEqual(c.rmsNormEps, 1e-5)
        XCTAssertTrue(c.tieWordEmbeddings)
        XCTAssertEqual(g.tensor("token_embd.weight")?.type, .q8_0)
        XCTAssertEqual(g.tensor("blk.0.attn_q.weight")?.type, .q4_1)
        XCTAssertEqual(g.tensor("blk.0.attn_k.weight")?.shape, [192, 576])
        XCTAssertEqual(g.tensor("blk.29.ffn_down.weight")?.shape, [576, 1536])
        XCTAssertEqual(g.tensor("output_norm.weight")?.type, .f32)
        XCTAssertEqual(g.tensors.reduce(0) { $0 + $1.count }, c.parameterCount)
        XCTAssertEqual(g.metadata["tokenizer.ggml.model"]?.string, "gpt2")
        XCTAssertEqual(g.metadata["tokenizer.ggml.tokens"]?.array?.count, 49152)
        XCTAssertTrue(g.metadata["tokenizer.chat_template"]?.string?.contains("<|im_start|>") ?? false)
    }

    /// A Q4_1 tensor of the file used as it is by the GEMM, and the same bytes through the GGUF
    /// dequantizer, agree.
    func testQ4_1WeightsAreUsedAsTheyAre() throws {
        let g = try model()
        let t = try XCTUnwrap(g.tensor("blk.0.attn_q.weight"))
        let w = try QuantizedMatrix(rows: t.rows, cols: t.columns, format: .q4_1, data: ByteStorage(copying: g.data(of: t)), scales: .inBlocks)
        XCTAssertEqual(w.dequantize(), try g.dequantize(t))
        let norms = try g.dequantize(g.tensor("blk.0.attn_norm.weight")!)
        XCTAssertEqual(norms.count, 576)
        XCTAssertTrue(norms.allSatisfy(\.isFinite))
    }

    func testSummary() throws {
        _ = try model()
        let s = try ModelSummary.load(path: Self.path)
        XCTAssertEqual(s.parameterCount, s.config.parameterCount)
        XCTAssertTrue(s.chatTemplate)
        XCTAssertEqual(s.components.first { $0.name == "mlp" }?.format, "Q4_1")
        XCTAssertEqual(s.components.reduce(0) { $0 + $1.bytes } + 0, try GGUFFile(path: Self.path).tensors.reduce(0) { $0 + $1.byteCount })
    }
}

/// q/k rows leave GGUF in Hugging Face order: against the rows transformers holds after
/// loading the same GGUF (tools/make_smollm2_reference.py), bit for bit.
final class RopePermutationTests: XCTestCase {
    func testRowsMatchTransformers() throws {
        guard FileManager.default.fileExists(atPath: RealModelTests.path) else { throw XCTSkip("run tools/setup.sh") }
        let url = Bundle.module.url(forResource: "Fixtures", withExtension: nil)!.appendingPathComponent("smollm2-reference.json")
        let json = try JSONSerialization.jsonObject(with: Data(contentsOf: url)) as! [String: Any]
        let reference = (json["q_proj_rows"] as! [String: Any])["transformers"] as! [String: [String: Any]]
        let source = try ModelSource(path: RealModelTests.path)
        let model = try QuantizedModel(path: RealModelTests.path)
        XCTAssertEqual(reference.count, 5)
        for (name, entry) in reference {
            let rows = entry["rows"] as! [Int], cols = entry["cols"] as! Int, hex = entry["f32"] as! [String]
            let t = try XCTUnwrap(source.tensors.first { $0.name == name })
            let loaded = try source.load(t)
            let frozen = try XCTUnwrap(model.linears[name]).dequantize()
            for (row, h) in zip(rows, hex) {
                let expected = Self.floats(hex: h)
                XCTAssertEqual(Array(loaded[(row * cols)..<((row + 1) * cols)]), expected, "\(name) row \(row)")
                XCTAssertEqual(Array(frozen[(row * cols)..<((row + 1) * cols)]), expected, "\(name) row \(row), 4-bit")
            }
        }
    }

    static func floats(hex: String) -> [Float] {
        let b = Array(hex.utf8)
        func nibble(_ c: UInt8) -> UInt32 { UInt32(c <= 57 ? c - 48 : c - 87) }
        var out: [Float] = []
        for i in stride(from: 0, to: b.count, by: 8) {
            var bits: UInt32 = 0
            for k in 0..<4 { bits |= (nibble(b[i + 2 * k]) << 4 | nibble(b[i + 2 * k + 1])) << (8 * UInt32(k)) }
            out.append(Float(bitPattern: bits))
        }
        return out
    }
}
