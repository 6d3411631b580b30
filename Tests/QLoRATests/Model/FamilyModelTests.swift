import Foundation
@testable import QLoRA
import XCTest

/// Each family qlora runs, on its tiny random model built by transformers
/// (tools/make_family_fixtures.py): logits at every position against transformers on the same
/// bitsandbytes NF4 folder, and LoRA gradients on every linear against PEFT.
final class FamilyModelTests: XCTestCase {
    static let fixtures = FamilyFixtureTests.fixtures
    /// The families of the fixtures that qlora runs today.
    static let running = ["mistral", "qwen2", "qwen3", "gemma2", "gemma3", "phi3"]

    func expected(_ family: String) throws -> [String: Any] {
        let data = try Data(contentsOf: Self.fixtures.appendingPathComponent("tiny-\(family)-expected.json"))
        return try XCTUnwrap(JSONSerialization.jsonObject(with: data) as? [String: Any])
    }

    func model(_ family: String) throws -> DecoderModel {
        try DecoderModel(path: Self.fixtures.appendingPathComponent("tiny-\(family)-bnb-nf4").path)
    }

    /// max |a − b| / max |b|.
    func relativeError(_ a: [Float], _ b: [Float]) -> Double {
        precondition(a.count == b.count)
        return Double(zip(a, b).map { abs($0 - $1) }.max()!) / Double(b.map(abs).max()!)
    }

    func testLogitsAtEveryPositionMatchTransformers() throws {
        for family in Self.running {
            let e = try expected(family), m = try model(family)
            XCTAssertEqual(m.config.family.name, family)
            let ids = try XCTUnwrap(e["input_ids"] as? [Int])
            let want = RopePermutationTests.floats(hex: try XCTUnwrap(e["logits_bnb_nf4_f32"] as? String))
            let got = try m.forward(tokens: ids, logits: .all)
            let err = relativeError(got, want)
            XCTAssertLessThan(err, 2e-5, family)
            print("\(family): logits vs transformers, max |Δ| / max |logit| = \(err)")
        }
    }

    /// Mistral's window of 4 keys: the fixture's rows from position 4 on differ from a window of
    /// 4096, which qlora matches too; generation through the KV cache applies the same window.
    func testMistralSlidingWindowInTrainingAndDecoding() throws {
        let e = try expected("mistral"), m = try model("mistral")
        XCTAssertEqual(m.config.slidingWindow, 4)
        let ids = try XCTUnwrap(e["input_ids"] as? [Int]), V = m.config.vocabSize
        var wide = m.config
        wide.slidingWindow = 4096
        let wideModel = try DecoderModel(config: wide, weights: m.weights)
        let wantWide = RopePermutationTests.floats(hex: try XCTUnwrap(e["logits_bnb_nf4_window4096_f32"] as? String))
        XCTAssertLessThan(relativeError(try wideModel.forward(tokens: ids, logits: .all), wantWide), 2e-5)
        var none = m.config
        none.slidingWindow = nil
        XCTAssertEqual(try DecoderModel(config: none, weights: m.weights).forward(tokens: ids, logits: .all),
                       try wideModel.forward(tokens: ids, logits: .all), "a window wider than the sequence changes nothing")

        // Decoding: the prompt's first 3 tokens at once, then one at a time through the cache.
        let all = try m.forward(tokens: ids, logits: .all)
        let cache = KVCache(config: m.config, capacity: ids.count)
        var rows = try m.forward(tokens: Array(ids[0..<3]), cache: cache, logits: .all)
        for t in 3..<ids.count { rows += try m.forward(tokens: [ids[t]], cache: cache) }
        XCTAssertLessThan(relativeError(rows, all), 1e-5)
        XCTAssertLessThan(relativeError(Array(rows[(8 * V)..<(9 * V)]), Array(all[(8 * V)..<(9 * V)])), 1e-5)
    }

    func testLoRAGradientsMatchPEFT() throws {
        for family in Self.running {
            let url = Self.fixtures.appendingPathComponent("tiny-\(family)-lora-grads.json")
            let fixture = try JSONDecoder().decode(LoRAGradientFixtureTests.Fixture.self, from: Data(contentsOf: url))
            let model = try model(family)
            let T = fixture.input_ids[0].count
            let batch = TokenBatch(inputIds: fixture.input_ids.flatMap { $0 }, labels: fixture.labels.flatMap { $0 },
                                   sequences: fixture.input_ids.count, length: T)
            for c in fixture.cases {
                let cfg = c.lora_config
                let lora = try ModelAdapters(model: model, config: LoRAConfig(rank: cfg.r, alpha: Float(cfg.lora_alpha),
                                                                          targets: try LoRATargets(parsing: cfg.target_modules.joined(separator: ","))),
                                         trainNorms: c.trainable_norms, seed: 1)
                let byName = Dictionary(uniqueKeysWithValues: lora.parameters.map { ($0.name, $0) })
                XCTAssertEqual(Set(byName.keys), Set(c.params.keys.map { String($0.dropFirst("base_model.model.".count)) }), family)
                for (name, t) in c.params {
                    byName[String(name.dropFirst("base_model.model.".count))]?.setValues(LoRAGradientFixtureTests.floats(t.value_f32))
                }
                let loss = try Trainer(model: model, lora: lora, headChunkRows: 5)
                    .accumulateGradients(batch, gradScale: 1 / Float(batch.scoredTokens), dropoutSeed: nil)
                XCTAssertEqual(loss.mean, c.loss, accuracy: 2e-6 * c.loss, family)
                var worst = 0.0
                for (name, t) in c.params {
                    let p = try XCTUnwrap(byName[String(name.dropFirst("base_model.model.".count))])
                    let want = LoRAGradientFixtureTests.floats(t.grad_f32)
                    let err = relativeError(p.grad.array, want)
                    worst = max(worst, err)
                    XCTAssertLessThan(err, 1e-4, "\(family) \(name)")
                }
                print("\(family): loss \(loss.mean) vs PEFT \(c.loss); worst gradient error \(worst)")
            }
        }
    }

    /// An architecture qlora has no family for is refused naming the ones it has.
    func testUnknownArchitectureNamesTheFamilies() throws {
        let json = #"{"model_type": "gpt_neox", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 1, "num_attention_heads": 4, "vocab_size": 32}"#
        XCTAssertThrowsError(try ModelConfig(huggingFaceConfig: Data(json.utf8), source: "x/config.json")) { e in
            let text = "\(e)"
            XCTAssertTrue(text.hasPrefix("x/config.json: architecture 'gpt_neox' is not supported"), text)
            for f in ModelFamily.all { XCTAssertTrue(text.contains(f.name), text) }
        }
    }

    /// A config whose shared numbers are impossible is refused naming the field, for every
    /// family, before the family's own keys are read (Gemma's layer pattern indexed −2 layers:
    /// fuzz-model-config's crash); the family keys themselves are checked too.
    func testImpossibleConfigsAreRefusedNamingTheFieldInEveryFamily() throws {
        func refusal(_ fields: [String: Any]) -> String? {
            var j: [String: Any] = ["hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
                                    "num_key_value_heads": 2, "vocab_size": 32]
            j.merge(fields) { $1 }
            let data = try! JSONSerialization.data(withJSONObject: j)
            do { _ = try ModelConfig(huggingFaceConfig: data, source: "x/config.json"); return nil } catch { return "\(error)" }
        }
        for family in ModelFamily.all {
            let type = family.modelTypes[0]
            XCTAssertNil(refusal(["model_type": type]), type)
            for (field, value) in [("num_hidden_layers", -2), ("num_hidden_layers", 0), ("hidden_size", -64), ("head_dim", -32),
                                   ("num_attention_heads", 0), ("vocab_size", 1 << 40)] {
                let text = refusal(["model_type": type, field: value])
                XCTAssertEqual(text?.hasPrefix("x/config.json: \(field): "), true, "\(type) \(field) \(value): \(text ?? "accepted")")
            }
        }
        let gemmas = ModelFamily.all.filter { $0.modelTypes.contains { $0.hasPrefix("gemma") } }.map { $0.modelTypes[0] }
        XCTAssertFalse(gemmas.isEmpty)
        for type in gemmas {
            for (field, value) in [("sliding_window", -5), ("query_pre_attn_scalar", -24), ("attn_logit_softcapping", 0)] as [(String, Any)] {
                let text = refusal(["model_type": type, "hidden_activation": "gelu_pytorch_tanh", field: value])
                XCTAssertEqual(text?.hasPrefix("x/config.json: \(field): "), true, "\(type) \(field) \(value): \(text ?? "accepted")")
            }
        }
    }

    /// The same from GGUF metadata: a Gemma 2 file claiming −2 blocks is refused, not crashed on.
    func testImpossibleGGUFBlockCountIsRefused() throws {
        let dir = TempDir()
        var w = GGUFWriter()
        w.metadata = [("general.architecture", .string("gemma2")), ("gemma2.embedding_length", .uint32(64)),
                      ("gemma2.feed_forward_length", .uint32(128)), ("gemma2.block_count", .int32(-2)),
                      ("gemma2.attention.head_count", .uint32(4)), ("gemma2.vocab_size", .uint32(32))]
        try w.write(to: dir.path + "/m.gguf") { _ in [] }
        XCTAssertThrowsError(try ModelConfig(gguf: GGUFFile(path: dir.path + "/m.gguf"))) { e in
            XCTAssertTrue("\(e)".hasSuffix("m.gguf: num_hidden_layers: -2 is out of range"), "\(e)")
        }
    }
}
