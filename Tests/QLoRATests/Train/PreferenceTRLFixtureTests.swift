import Foundation
@testable import QLoRA
import XCTest

/// The preference objectives against TRL 1.16 itself (tools/make_preference_fixtures.py): on
/// the tiny NF4 Llama and Qwen2 models with the same LoRA values and 4 pairs in one batch, the
/// loss, TRL's metrics, per-pair log-probabilities and rewards, and the gradient of every LoRA
/// tensor (full where the fixture has it, else its L2 norm and sum) and of the score head come
/// out as DPOTrainer, CPOTrainer (SimPO), ORPOTrainer and RewardTrainer compute them; and the
/// reward adapter PEFT saved loads with its score head and gives the scores transformers gave.
final class PreferenceTRLFixtureTests: XCTestCase {
    static let fixtures = LlamaTrainerTests.fixtures

    func fixture(_ model: String) throws -> [String: Any] {
        let data = try Data(contentsOf: Self.fixtures.appendingPathComponent("preference-trl-\(model).json"))
        return try XCTUnwrap(JSONSerialization.jsonObject(with: data) as? [String: Any])
    }

    func floats(_ v: Any?) -> [Float] { LoRAGradientFixtureTests.floats(v as? String ?? "") }

    /// The model, its adapters (with a score head for reward) set to the fixture's initial
    /// values, and the pairs as one batch (reference log-probabilities from the adapter off).
    func setUp(_ name: String, reward: Bool) throws -> (DecoderModel, ModelAdapters, TokenBatch, [String: Any]) {
        let f = try fixture(name)
        let model = try DecoderModel(path: Self.fixtures.appendingPathComponent(f["model"] as! String).path)
        let lc = f["lora_config"] as! [String: Any]
        let config = LoRAConfig(rank: lc["r"] as! Int, alpha: Float(lc["lora_alpha"] as! Int), targets: .names(lc["target_modules"] as! [String]))
        let lora = try ModelAdapters(model: model, config: config, scoreHead: reward, seed: 0)
        let initial = f["lora_init"] as! [String: [String: Any]]
        for p in lora.parameters where p !== lora.scoreHead {
            let v = floats(try XCTUnwrap(initial["base_model.model." + p.name], p.name)["value_f32"])
            XCTAssertEqual(v.count, p.count, p.name)
            p.setValues(v)
        }
        let pairs = (f["pairs"] as! [[String: Any]]).map {
            PreferencePair(prompt: $0["prompt"] as! [Int], chosen: $0["chosen"] as! [Int], rejected: $0["rejected"] as! [Int],
                           margin: $0["margin"] as? Double)
        }
        let plain = TokenBatch(PreferenceBatch(pairs: pairs, indices: Array(pairs.indices), padID: 0, epoch: 0))
        let ref = try PreferenceObjective.completionLogProbs(plain, trainer: Trainer(model: model, lora: .disabled(for: model)))
        var withRef = pairs
        for p in pairs.indices { withRef[p].reference = (ref[p], ref[pairs.count + p]) }
        let batch = TokenBatch(PreferenceBatch(pairs: withRef, indices: Array(pairs.indices), padID: 0, epoch: 0))
        XCTAssertEqual(batch.inputIds.map(Int.init), (f["batch"] as! [String: Any])["input_ids"].map { ($0 as! [[Int]]).joined().map { $0 } },
                       "rows laid out as TRL's collator lays them")
        return (model, lora, batch, f)
    }

    func objective(_ c: [String: Any]) throws -> any TrainingObjective {
        let config = c["config"] as! [String: Any]
        let beta = config["beta"] as? Double ?? 0.1
        switch c["name"] as! String {
        case "dpo_sigmoid", "dpo_sigmoid_ls0.1":
            // TRL 1.16 ignores label_smoothing for sigmoid (the fixture asserts it): ε 0 here.
            return PreferenceObjective(.dpo(.sigmoid, labelSmoothing: 0), beta: beta)
        case "dpo_ipo": return PreferenceObjective(.dpo(.ipo, labelSmoothing: 0), beta: beta)
        case "dpo_hinge": return PreferenceObjective(.dpo(.hinge, labelSmoothing: 0), beta: beta)
        case "dpo_robust": return PreferenceObjective(.dpo(.robust, labelSmoothing: config["label_smoothing"] as! Double), beta: beta)
        case "simpo": return PreferenceObjective(.simpo(gamma: config["simpo_gamma"] as! Double, labelSmoothing: 0), beta: beta)
        case "orpo": return PreferenceObjective(.orpo, beta: beta)
        case "reward": return RewardObjective(centering: config["center_rewards_coefficient"] as! Double)
        default: throw XCTSkip("unknown case \(c["name"]!)")
        }
    }

    func check(_ name: String) throws {
        let f = try fixture(name)
        for c in f["cases"] as! [[String: Any]] {
            let caseName = c["name"] as! String, reward = caseName == "reward"
            let (model, lora, batch, _) = try setUp(name, reward: reward)
            if reward, let s = c["score_init"] as? [String: Any] { lora.scoreHead!.setValues(floats(s["value_f32"])) }
            let trainer = Trainer(model: model, lora: lora, headChunkRows: 7, objective: try objective(c))
            lora.parameters.forEach { $0.zeroGrad() }
            let loss = try trainer.accumulateGradients(batch, gradScale: 1 / Float(batch.pairs!.count), dropoutSeed: nil)
            let label = "\(name) \(caseName)"
            let want = c["loss"] as! Double
            XCTAssertEqual(loss.mean, want, accuracy: 2e-5 * max(1, abs(want)), label)

            let metrics = c["metrics"] as! [String: Double]
            let names = reward ? ["accuracy", "margin", "min_reward", "mean_reward", "max_reward"]
                : ["rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins", "logps/chosen", "logps/rejected"]
                    + (caseName == "orpo" ? ["nll_loss", "log_odds_ratio", "log_odds_chosen"] : [])
            for m in names {
                let w = try XCTUnwrap(metrics[m], "\(label): TRL logs \(m)")
                XCTAssertEqual(try XCTUnwrap(loss.metric(m), "\(label) \(m)"), w, accuracy: 2e-5 * max(1, abs(w)), "\(label) \(m)")
            }
            if let refs = c["ref_logps_chosen"] as? [Double] {
                let r = batch.pairs!.reference!
                for (p, w) in refs.enumerated() { XCTAssertEqual(r[p], w, accuracy: 2e-5 * abs(w), "\(label) reference chosen \(p)") }
            }

            // Gradients: every value where the fixture has them, else each tensor's norm and sum.
            let params = c["params"] as? [String: [String: Any]] ?? [:]
            let norms = c["grad_l2"] as! [String: Double], sums = c["grad_sum"] as! [String: Double]
            var compared = 0
            for p in lora.parameters {
                let key = "base_model.model." + p.name, g = p.grad.array
                if let full = params[key] {
                    let w = floats(full["grad_f32"])
                    let scale = max(w.map { abs($0) }.max()!, 1e-6)
                    for i in 0..<w.count {
                        XCTAssertEqual(g[i], w[i], accuracy: 2e-3 * scale + 1e-7, "\(label) \(key)[\(i)]")
                    }
                    compared += 1
                }
                let l2 = try XCTUnwrap(norms[key], "\(label) \(key)")
                let ourL2 = sqrt(g.reduce(0.0) { $0 + Double($1) * Double($1) })
                XCTAssertEqual(ourL2, l2, accuracy: 2e-3 * l2 + 1e-8, "\(label) \(key) ‖grad‖")
                XCTAssertEqual(g.reduce(0.0) { $0 + Double($1) }, try XCTUnwrap(sums[key]), accuracy: 2e-3 * l2 * Double(g.count).squareRoot() + 1e-8,
                               "\(label) \(key) Σ grad")
            }
            XCTAssertEqual(norms.count, lora.parameters.count, label)
            if reward {
                XCTAssertNotNil(params["base_model.model.score.weight"], "the score head's gradient is in the fixture")
                for (i, w) in (c["rewards_chosen"] as! [Double]).enumerated() {
                    XCTAssertEqual(try RewardObjective.scores(batch, trainer: trainer)[i], w, accuracy: 2e-5 * max(1, abs(w)), "\(label) reward \(i)")
                }
            }
            if name == "tiny-llama", ["dpo_sigmoid", "simpo", "orpo", "reward"].contains(caseName) {
                XCTAssertGreaterThan(compared, 20, "\(label): full gradients compared")
            }
        }
    }

    func testLlamaMatchesTRL() throws { try check("tiny-llama") }
    func testQwen2MatchesTRL() throws { try check("tiny-qwen2") }

    /// The adapter PEFT saved from TRL's reward model loads with its score head (task_type
    /// SEQ_CLS, modules_to_save [classifier, score]) and scores the 8 rows as transformers +
    /// PeftModel did; saved again by qlora, it has PEFT's tensor names and task type.
    func testPEFTRewardAdapterRoundTrip() throws {
        let f = try fixture("tiny-llama")
        let reward = (f["cases"] as! [[String: Any]]).first { $0["name"] as? String == "reward" }!
        let (model, _, batch, _) = try setUp("tiny-llama", reward: true)
        let dir = Self.fixtures.appendingPathComponent("tiny-llama-reward-adapter").path
        XCTAssertTrue(try AdapterFiles.hasScoreHead(in: dir))
        let set = AdapterSet(base: model)
        let name = try set.load(dir)
        let adapters = try set.adapters(name)
        let head = try XCTUnwrap(adapters.scoreHead)
        let scores = try RewardObjective.scores(batch, trainer: Trainer(model: model, lora: adapters))
        let want = reward["roundtrip_scores"] as! [Double]
        XCTAssertEqual(scores.count, want.count)
        for (i, w) in want.enumerated() { XCTAssertEqual(scores[i], w, accuracy: 2e-5 * max(1, abs(w)), "row \(i)") }

        let out = TempDir()
        try AdapterFiles.save(adapters, to: out.path + "/rm", baseModel: "tiny-llama-bnb-nf4")
        let written = try SafetensorsFile(path: out.path + "/rm/" + AdapterFiles.weightsFile)
        let expected = Set(((reward["adapter"] as! [String: Any])["tensors"] as! [String: Any]).keys)
        XCTAssertEqual(Set(written.tensors.map(\.name)), expected)
        let cfg = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: out.path + "/rm/" + AdapterFiles.configFile))) as? [String: Any])
        XCTAssertEqual(cfg["task_type"] as? String, "SEQ_CLS")
        XCTAssertEqual(Set(cfg["modules_to_save"] as? [String] ?? []), ["classifier", "score"])
        let again = AdapterSet(base: model)
        let reloaded = try again.adapters(try again.load(out.path + "/rm"))
        XCTAssertEqual(reloaded.scoreHead?.values, head.values)
    }
}
