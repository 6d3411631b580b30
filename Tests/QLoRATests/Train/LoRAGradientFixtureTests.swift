import Foundation
@testable import QLoRA
import XCTest

/// LoRA gradients against PyTorch + PEFT on the same tiny NF4 weights
/// (tools/make_lora_fixtures.py → Fixtures/tiny-llama-lora-grads.json): the loss and every
/// lora_A / lora_B (and norm) gradient of three configurations.
final class LoRAGradientFixtureTests: XCTestCase {
    struct Fixture: Decodable {
        struct Tensor: Decodable {
            let shape: [Int]
            let value_f32: String
            let grad_f32: String
        }
        struct LoraConfig: Decodable {
            let r: Int
            let lora_alpha: Double
            let target_modules: [String]
            let use_rslora: Bool
            let layers_to_transform: [Int]?
        }
        struct Case: Decodable {
            let name: String
            let lora_config: LoraConfig
            let trainable_norms: Bool
            let loss: Double
            let params: [String: Tensor]
        }
        let input_ids: [[Int32]]
        let labels: [[Int32]]
        let n_counted_tokens: Int
        let cases: [Case]
    }

    static func floats(_ hex: String) -> [Float] {
        let bytes = Array(hex.utf8)
        func nibble(_ c: UInt8) -> UInt32 { c <= 57 ? UInt32(c - 48) : UInt32(c - 87) }
        return stride(from: 0, to: bytes.count, by: 8).map { i in
            var bits: UInt32 = 0
            for j in 0..<4 { bits |= (nibble(bytes[i + 2 * j]) << 4 | nibble(bytes[i + 2 * j + 1])) << (8 * UInt32(j)) }
            return Float(bitPattern: bits)
        }
    }

    func testGradientsMatchPEFT() throws {
        let url = LlamaTrainerTests.fixtures.appendingPathComponent("tiny-llama-lora-grads.json")
        let fixture = try JSONDecoder().decode(Fixture.self, from: Data(contentsOf: url))
        let model = LlamaTrainerTests.tiny
        let T = fixture.input_ids[0].count
        let batch = TokenBatch(inputIds: fixture.input_ids.flatMap { $0 }, labels: fixture.labels.flatMap { $0 },
                               sequences: fixture.input_ids.count, length: T)
        XCTAssertEqual(batch.scoredTokens, fixture.n_counted_tokens)
        XCTAssertEqual(fixture.cases.count, 3)
        for c in fixture.cases {
            let cfg = c.lora_config
            let targets = try LoRATargets(parsing: cfg.target_modules.joined(separator: ","))
            var lastLayers: Int? = nil
            if let only = cfg.layers_to_transform {
                // PEFT's layers_to_transform as "the last N": the fixture adapts the last layer.
                XCTAssertEqual(only, Array((model.config.numLayers - only.count)..<model.config.numLayers))
                lastLayers = only.count
            }
            let lora = try ModelAdapters(model: model, config: LoRAConfig(rank: cfg.r, alpha: Float(cfg.lora_alpha), targets: targets,
                                                                      lastLayers: lastLayers, useRSLoRA: cfg.use_rslora),
                                     trainNorms: c.trainable_norms, seed: 1)
            let byName = Dictionary(uniqueKeysWithValues: lora.parameters.map { ($0.name, $0) })
            let expectedNames = Set(c.params.keys.map { String($0.dropFirst("base_model.model.".count)) })
            XCTAssertEqual(Set(byName.keys), expectedNames, c.name)
            for (name, t) in c.params {
                let p = try XCTUnwrap(byName[String(name.dropFirst("base_model.model.".count))], name)
                XCTAssertEqual(p.shape, t.shape, name)
                p.setValues(Self.floats(t.value_f32))
            }
            let trainer = Trainer(model: model, lora: lora, headChunkRows: 7)
            let loss = try trainer.accumulateGradients(batch, gradScale: 1 / Float(batch.scoredTokens), dropoutSeed: nil)
            XCTAssertEqual(loss.tokens, fixture.n_counted_tokens)
            XCTAssertEqual(loss.mean, c.loss, accuracy: 2e-6 * c.loss, c.name)
            var worst = 0.0
            for (name, t) in c.params {
                let p = byName[String(name.dropFirst("base_model.model.".count))]!
                let expected = Self.floats(t.grad_f32), got = p.grad.array
                let scale = Double(expected.map(abs).max()!)
                XCTAssertGreaterThan(scale, 0, name)
                let err = zip(got, expected).map { Double(abs($0 - $1)) }.max()! / scale
                worst = max(worst, err)
                XCTAssertLessThan(err, 1e-4, "\(c.name) \(name)")
            }
            print("\(c.name): loss \(loss.mean) vs PEFT \(c.loss); worst gradient error \(worst) of each tensor's max")
        }
    }
}
