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
