import Foundation
import QLoRA
import Quant
import XCTest

/// `qlora quantize` on the real model, and loading what it writes.
final class QuantizeTests: XCTestCase {
    let dir = TempDir()

    func realModel() throws -> String {
        guard FileManager.default.fileExists(atPath: RealModelTests.path) else { throw XCTSkip("run tools/setup.sh") }
        return RealModelTests.path
    }

    /// GGUF (Q4_1) → NF4 with double quantization, loaded back: every linear within NF4's
    /// rounding of the Q4_1 weights, everything else exact, config and tokenizer carried over.
    func testSmolLM2ToNF4AndBack() throws {
        let gguf = try realModel()
        let out = dir.path + "/smol-nf4"
        var seen = 0
        let report = try Quantizer.run(source: gguf, output: out, options: .init(format: .nf4)) { _ in seen += 1 }
        XCTAssertEqual(seen, 272)
        XCTAssertEqual(report.tensors, 272)
        let base = try QuantizedModel(path: gguf), nf4 = try QuantizedModel(path: out)
        XCTAssertEqual(nf4.config.numLayers, 30)
        XCTAssertEqual(nf4.config.tieWordEmbeddings, true)
        XCTAssertEqual(Set(nf4.linears.keys), Set(base.linears.keys))
        XCTAssertEqual(nf4.linears.count, 210)
        for (name, q) in nf4.linears {
            XCTAssertEqual(q.format, .nf4)
            guard case .doubleQuantized = q.scales else { return XCTFail("\(name) not double-quantized") }
            let a = q.dequantize(), b = base.linears[name]!.dequantize(), used = q.blockAbsmax
            for block in 0..<used.count {
                let range = (block * 64)..<min(block * 64 + 64, a.count)
                let exact = b[range].reduce(0) { max($0, abs($1)) }
                // Codes are chosen against the exact absmax; the double-quantized one is off by |exact − used|.
                // The largest half-gap of the NF4 codebook is (−0.6961928 − (−1)) / 2.
                let bound = 0.1520 * exact + abs(exact - used[block]) + 1e-6
                for i in range where abs(a[i] - b[i]) > bound {
                    return XCTFail("\(name)[\(i)]: \(a[i]) vs \(b[i]) (bound \(bound))")
                }
            }
        }
        // The GGUF's Q8_0 embedding stays in blocks there; the folder holds it dequantized.
        var baseDense = base.dense
        for (name, m) in base.tokenMatrices { baseDense[name] = m.dequantize() }
        XCTAssertEqual(base.tokenMatrices.keys.sorted(), ["model.embed_tokens.weight"])
        XCTAssertEqual(nf4.dense.keys.sorted(), baseDense.keys.sorted())
        for (name, v) in baseDense { XCTAssertEqual(nf4.dense[name], v, name) }
        XCTAssertLessThan(Double(nf4.linearBytes * 8) / Double(nf4.linears.values.reduce(0) { $0 + $1.count }), 4.2)

        let tokenizerConfig = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: out + "/tokenizer_config.json"))) as! [String: Any]
        XCTAssertTrue((tokenizerConfig["chat_template"] as? String)?.contains("<|im_start|>") ?? false)
        XCTAssertEqual(tokenizerConfig["eos_token"] as? String, "<|im_end|>")
        XCTAssertEqual(tokenizerConfig["tokenizer_class"] as? String, "PreTrainedTokenizerFast")
        let summary = try ModelSummary.load(path: out)
        XCTAssertEqual(summary.container, "bitsandbytes-4bit")
        XCTAssertEqual(summary.parameterCount, try ModelSummary.load(path: gguf).parameterCount)
    }

    /// GGUF → GGUF: tensors already in the target type are copied byte for byte; metadata kept.
    func testGGUFTargetKeepsMatchingBlocks() throws {
        let gguf = try realModel()
        let src = try GGUFFile(path: gguf)
        let same = dir.path + "/same.gguf", q40 = dir.path + "/q40.gguf"
        _ = try Quantizer.run(source: gguf, output: same, options: .init(format: .q4_1)) { _ in }
        let a = try GGUFFile(path: same)
        XCTAssertEqual(a.metadataKeys, src.metadataKeys)
        for t in src.tensors { XCTAssertEqual(Array(a.data(of: a.tensor(t.name)!)), Array(src.data(of: t)), t.name) }

        _ = try Quantizer.run(source: gguf, output: q40, options: .init(format: .q4_0)) { _ in }
        let b = try GGUFFile(path: q40)
        XCTAssertEqual(b.tensor("blk.0.ffn_up.weight")?.type, .q4_0)
        XCTAssertEqual(b.tensor("token_embd.weight")?.type, .q8_0)  // embeddings kept
        XCTAssertEqual(b.tensor("blk.0.attn_norm.weight")?.type, .f32)
        let m = try QuantizedModel(path: q40)
        XCTAssertEqual(m.linears["model.layers.0.mlp.up_proj.weight"]?.format, .q4_0)
    }

    func testRefusals() throws {
        let gguf = try realModel()
        XCTAssertThrowsError(try Quantizer.run(source: dir.path + "/nothing", output: dir.path + "/o", options: .init(format: .nf4)) { _ in })
        let plain = dir.path + "/plain.gguf"
        _ = try Quantizer.run(source: gguf, output: plain, options: .init(format: .q4_1, embeddings: .f32)) { _ in }
        XCTAssertEqual(try GGUFFile(path: plain).tensor("token_embd.weight")?.type, .f32)
    }
}
