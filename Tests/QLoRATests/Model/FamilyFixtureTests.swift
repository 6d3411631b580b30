import Foundation
import XCTest

/// The fixtures of the families beyond Llama (tools/make_family_fixtures.py: Mistral, Qwen2,
/// Qwen3, Gemma3, Phi3) are there and consistent with themselves: each expected.json's logits
/// are [T, vocab] of its config.json, the dequantized linear and every LoRA A/B match the
/// shapes in the fp32 folder's safetensors header, and the lora-grads.json decodes as
/// tiny-llama-lora-grads.json does. Reads only JSON and safetensors headers, no model code.
final class FamilyFixtureTests: XCTestCase {
    static let fixtures = Bundle.module.url(forResource: "Fixtures", withExtension: nil)!
    static let families = ["mistral", "qwen2", "qwen3", "gemma2", "gemma3", "phi3"]

    /// The target linears of each family, as PEFT names them (make_family_fixtures.py).
    static let targets = [
        "mistral": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        "qwen2": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        "qwen3": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        "gemma2": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        "gemma3": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        "phi3": ["qkv_proj", "o_proj", "gate_up_proj", "down_proj"],
    ]

    func json(_ name: String) throws -> [String: Any] {
        let data = try Data(contentsOf: Self.fixtures.appendingPathComponent(name))
        return try XCTUnwrap(JSONSerialization.jsonObject(with: data) as? [String: Any], name)
    }

    /// name → shape of every tensor in a safetensors file: u64 little-endian header length, then the JSON header.
    func safetensorsShapes(_ folder: String) throws -> [String: [Int]] {
        let data = try Data(contentsOf: Self.fixtures.appendingPathComponent(folder + "/model.safetensors"))
        let n = data.prefix(8).enumerated().reduce(0) { $0 | Int($1.element) << (8 * $1.offset) }
        XCTAssertLessThanOrEqual(8 + n, data.count, folder)
        let header = try XCTUnwrap(JSONSerialization.jsonObject(with: data.subdata(in: 8..<(8 + n))) as? [String: Any])
        var shapes: [String: [Int]] = [:]
        for (name, entry) in header where name != "__metadata__" {
            shapes[name] = try XCTUnwrap((entry as? [String: Any])?["shape"] as? [Int], name)
        }
        return shapes
    }

    func floats(_ object: [String: Any], _ key: String, _ file: String) throws -> [Float] {
        let hex = try XCTUnwrap(object[key] as? String, "\(file): \(key)")
        XCTAssertEqual(hex.utf8.count % 8, 0, "\(file): \(key)")
        return RopePermutationTests.floats(hex: hex)
    }

    func testExpectedLogitsAreTByVocab() throws {
        for family in Self.families {
            let file = "tiny-\(family)-expected.json"
            let e = try json(file)
            let config = try json("tiny-\(family)/config.json")
            let nf4Config = try json("tiny-\(family)-bnb-nf4/config.json")
            let vocab = try XCTUnwrap(config["vocab_size"] as? Int)
            XCTAssertEqual(nf4Config["vocab_size"] as? Int, vocab, family)
            XCTAssertNotNil(nf4Config["quantization_config"], family)
            XCTAssertEqual(e["family"] as? String, family)
            XCTAssertEqual(e["model_type"] as? String, config["model_type"] as? String, family)
            XCTAssertEqual((e["architecture"] as? String).map { [$0] }, config["architectures"] as? [String], family)

            let ids = try XCTUnwrap(e["input_ids"] as? [Int], file)
            XCTAssertGreaterThanOrEqual(ids.count, 10, file)
            XCTAssert(ids.allSatisfy { 0 <= $0 && Int($0) < vocab }, file)
            XCTAssertEqual(e["logits_shape"] as? [Int], [ids.count, vocab], file)
            var keys = ["logits_fp32_f32", "logits_bnb_nf4_f32"]
            if family == "mistral" { keys += ["logits_fp32_window4096_f32", "logits_bnb_nf4_window4096_f32"] }
            var logits: [String: [Float]] = [:]
            for key in keys {
                let l = try floats(e, key, file)
                XCTAssertEqual(l.count, ids.count * vocab, "\(file): \(key)")
                XCTAssert(l.allSatisfy(\.isFinite), "\(file): \(key)")
                logits[key] = l
            }
            XCTAssertNotEqual(logits["logits_fp32_f32"], logits["logits_bnb_nf4_f32"], file)

            if family == "mistral" {
                // window W: rows t < W see the same keys as with a wide window; later rows see fewer
                let w = try XCTUnwrap(config["sliding_window"] as? Int)
                XCTAssertEqual(e["sliding_window"] as? Int, w)
                XCTAssertLessThan(w, ids.count)
                for (narrow, wide) in [("logits_fp32_f32", "logits_fp32_window4096_f32"), ("logits_bnb_nf4_f32", "logits_bnb_nf4_window4096_f32")] {
                    let a = logits[narrow]!, b = logits[wide]!
                    XCTAssertEqual(Array(a[..<(w * vocab)]), Array(b[..<(w * vocab)]), narrow)
                    XCTAssertNotEqual(Array(a[(w * vocab)...]), Array(b[(w * vocab)...]), narrow)
                }
            }

            let dq = try XCTUnwrap(e["dequantized"] as? [String: Any], file)
            let tensor = try XCTUnwrap(dq["tensor"] as? String)
            let shape = try XCTUnwrap(dq["shape"] as? [Int])
            XCTAssertEqual(try safetensorsShapes("tiny-\(family)")[tensor], shape, "\(file): \(tensor)")
            XCTAssertEqual(try floats(dq, "bnb_nf4_f32", file).count, shape.reduce(1, *), file)
        }
    }

    func testLoRAGradsMatchTheFolders() throws {
        for family in Self.families {
            let file = "tiny-\(family)-lora-grads.json"
            let fixture = try JSONDecoder().decode(LoRAGradientFixtureTests.Fixture.self,
                                                   from: Data(contentsOf: Self.fixtures.appendingPathComponent(file)))
            let config = try json("tiny-\(family)/config.json")
            let vocab = try XCTUnwrap(config["vocab_size"] as? Int)
            let layers = try XCTUnwrap(config["num_hidden_layers"] as? Int)
            let shapes = try safetensorsShapes("tiny-\(family)")
            let targets = Self.targets[family]!

            XCTAssertEqual(fixture.input_ids.count, 2, file)
            XCTAssertEqual(fixture.labels.map(\.count), fixture.input_ids.map(\.count), file)
            XCTAssert(fixture.input_ids.joined().allSatisfy { 0 <= $0 && Int($0) < vocab }, file)
            let counted = fixture.labels.map { $0.dropFirst().filter { $0 != -100 }.count }.reduce(0, +)
            XCTAssertEqual(counted, fixture.n_counted_tokens, file)
            XCTAssertLessThan(counted, fixture.labels.map { $0.count - 1 }.reduce(0, +), "\(file): some labels are -100")

            XCTAssertEqual(fixture.cases.count, 1, file)
            let c = try XCTUnwrap(fixture.cases.first)
            XCTAssertEqual(c.lora_config.target_modules, targets.sorted(), file)
            XCTAssertFalse(c.trainable_norms)
            XCTAssert(c.loss.isFinite && c.loss > 0, file)
            XCTAssertEqual(c.params.count, 2 * targets.count * layers, file)
            let r = c.lora_config.r
            for (name, t) in c.params {
                // base_model.model.<module>.lora_A.weight [r, in], lora_B.weight [out, r]; <module>.weight is [out, in]
                let isA = name.hasSuffix(".lora_A.weight")
                XCTAssert(isA || name.hasSuffix(".lora_B.weight"), name)
                let module = String(name.dropFirst("base_model.model.".count).dropLast(".lora_A.weight".count))
                let base = try XCTUnwrap(shapes[module + ".weight"], "\(file): \(module)")
                XCTAssertEqual(t.shape, isA ? [r, base[1]] : [base[0], r], name)
                let value = RopePermutationTests.floats(hex: t.value_f32)
                let grad = RopePermutationTests.floats(hex: t.grad_f32)
                XCTAssertEqual(value.count, t.shape.reduce(1, *), name)
                XCTAssertEqual(grad.count, value.count, name)
                XCTAssert(value.contains { $0 != 0 } && grad.contains { $0 != 0 }, "\(name): zero value or gradient")
            }
        }
    }
}
