import Foundation
@testable import QLoRA
import XCTest

/// Preference runs on the tiny NF4 Llama with synthetic pairs (the chosen completion follows a
/// rule, the rejected one does not): the objectives learn to rank, a run stopped and resumed
/// repeats the uninterrupted one bit for bit (DPO with its cached reference, reward with its
/// score head), and the reference cache is read back only for the data it was made for.
final class PreferenceRunTests: XCTestCase {
    static var model: DecoderModel { LlamaTrainerTests.tiny }
    /// TrainingRunTests' helpers (config, run directories, metrics rows), shared.
    var helper: TrainingRunTests { TrainingRunTests(name: "helper") { _ in } }

    /// Pairs whose chosen completion continues next = (3·prev + 1) mod 256 and whose rejected
    /// one is random.
    func pairs(count: Int, seed: UInt64) -> PreferenceDataSet {
        var rng = SplitMix64(seed: seed)
        let pairs = (0..<count).map { i -> PreferencePair in
            let n = 3 + Int(rng.next() % 4), m = 2 + Int(rng.next() % 4)
            var prompt = [Int(1 + rng.next() % 255)]
            for _ in 1..<n { prompt.append((3 * prompt.last! + 1) % 256) }
            var chosen = [(3 * prompt.last! + 1) % 256]
            for _ in 1..<m { chosen.append((3 * chosen.last! + 1) % 256) }
            var rejected = (0..<(1 + Int(rng.next() % 5))).map { _ in Int(1 + rng.next() % 255) }
            if rejected == chosen { rejected[0] = (rejected[0] + 1) % 256 }
            return PreferencePair(prompt: prompt, chosen: chosen, rejected: rejected, line: i + 1)
        }
        return PreferenceDataSet(pairs: pairs, source: "synthetic-pairs-\(seed)", padID: 0)
    }

    func config(_ objective: ObjectiveKind, steps: Int) -> TrainingConfig {
        var c = helper.config(steps)
        c.objective = objective
        c.batchSize = 2
        c.lr = 5e-3
        c.beta = objective == .simpo ? 2 : 0.5
        return c
    }

    func start(_ objective: ObjectiveKind, _ dir: String, steps: Int = 8, resume: Bool = false, events: (TrainingEvent) -> Void = { _ in }) throws -> TrainingRun {
        try TrainingRun(config: config(objective, steps: steps), directory: dir, model: Self.model, train: pairs(count: 16, seed: 1),
                        validation: pairs(count: 6, seed: 2).sortedLongestFirst(), resume: resume, onEvent: events)
    }

    func checkResume(_ objective: ObjectiveKind) throws {
        let a = try helper.temporaryDirectory(), b = try helper.temporaryDirectory()
        let full = try start(objective, a)
        XCTAssertTrue(try full.run { _ in })

        let first = try start(objective, b)
        XCTAssertFalse(try first.run(shouldStop: { first.step >= 3 }) { _ in })
        var messages: [String] = []
        let second = try start(objective, b, resume: true) { if case let .message(m) = $0 { messages.append(m) } }
        XCTAssertEqual(second.step, 3)
        XCTAssertTrue(try second.run { _ in })
        if objective == .dpo {
            XCTAssertTrue(messages.contains { $0.hasPrefix("reference log-probabilities read from") }, "\(messages)")
        }
        let rows = helper.comparable(try helper.rows(a))
        XCTAssertEqual(rows, helper.comparable(try helper.rows(b)))
        XCTAssertTrue(rows.contains { $0.metrics["rewards/chosen"] != nil || $0.metrics["accuracy"] != nil }, "objective metrics are logged")
        XCTAssertTrue(rows.contains { $0.valAccuracy != nil })
        for (x, y) in zip(full.lora.parameters, second.lora.parameters) { XCTAssertEqual(x.values, y.values, x.name) }
        for name in ["lora_final", "lora_final_ema"] {
            let x = try Data(contentsOf: URL(fileURLWithPath: a + "/" + name + "/" + AdapterFiles.weightsFile))
            let y = try Data(contentsOf: URL(fileURLWithPath: b + "/" + name + "/" + AdapterFiles.weightsFile))
            XCTAssertEqual(x, y, name)
        }
    }

    func testDPORunResumesExactly() throws { try checkResume(.dpo) }
    func testRewardRunResumesExactly() throws { try checkResume(.reward) }

    /// Each objective learns to prefer the rule-following completions: held-out accuracy ends
    /// above where it started, and the validation loss falls.
    func testObjectivesLearnToRank() throws {
        for objective in [ObjectiveKind.reward, .dpo, .simpo, .orpo] {
            let dir = try helper.temporaryDirectory()
            var c = config(objective, steps: 24)
            c.ema = 0
            c.loraDropout = 0
            c.evalEvery = 24
            c.lr = objective == .dpo ? 5e-3 : 1e-2   // SimPO and ORPO work on per-token means: smaller gradients
            let run = try TrainingRun(config: c, directory: dir, model: Self.model, train: pairs(count: 16, seed: 1),
                                      validation: pairs(count: 8, seed: 2), resume: false) { _ in }
            XCTAssertTrue(try run.run { _ in })
            let evals = try helper.rows(dir).filter { $0.valLoss != nil }
            XCTAssertEqual(evals.count, 2, "\(objective)")
            XCTAssertLessThan(evals.last!.valLoss!, evals.first!.valLoss!, "\(objective): \(evals.map { $0.valLoss! })")
            XCTAssertGreaterThanOrEqual(evals.last!.valAccuracy!, 0.75, "\(objective): \(evals.map { $0.valAccuracy ?? -1 })")
            if objective == .reward {
                XCTAssertTrue(try AdapterFiles.hasScoreHead(in: dir + "/lora_final"))
            }
        }
    }

    /// The reference cache belongs to its data: other pairs in the same run directory are
    /// computed afresh, and a damaged cache is not read.
    func testReferenceCacheIsUsedOnlyForItsPairs() throws {
        let dir = try helper.temporaryDirectory()
        let train = pairs(count: 4, seed: 1), val = pairs(count: 2, seed: 2)
        var computed = 0
        func attach(_ t: PreferenceDataSet) throws -> PreferenceDataSet {
            try ReferenceLogProbs.attach(train: t, validation: val, directory: dir, describing: "base", pairsPerBatch: 2,
                                         reference: { computed += 1; return Trainer(model: Self.model, lora: .disabled(for: Self.model)) },
                                         onEvent: { _ in }).train
        }
        let first = try attach(train)
        XCTAssertEqual(computed, 1)
        let again = try attach(train)
        XCTAssertEqual(computed, 1, "read back")
        XCTAssertEqual(first.pairs.map { $0.reference!.chosen }, again.pairs.map { $0.reference!.chosen })
        var other = train
        other.pairs[0].chosen[0] = (other.pairs[0].chosen[0] + 1) % 256
        _ = try attach(other)
        XCTAssertEqual(computed, 2, "other ids: computed again")
        try Data("{".utf8).write(to: URL(fileURLWithPath: dir + "/" + ReferenceLogProbs.file))
        _ = try attach(train)
        XCTAssertEqual(computed, 3, "a damaged cache is recomputed")
    }

    func testSFTDataIsRefusedForPreferenceObjectivesAndPairsForSFT() throws {
        let dir = try helper.temporaryDirectory()
        XCTAssertThrowsError(try TrainingRun(config: config(.dpo, steps: 2), directory: dir, model: Self.model,
                                             train: helper.data(count: 4, seed: 1), validation: helper.data(count: 2, seed: 2),
                                             resume: false) { _ in }) { XCTAssertTrue("\($0)".contains("preference pairs"), "\($0)") }
        XCTAssertThrowsError(try TrainingRun(config: helper.config(2), directory: dir, model: Self.model,
                                             train: pairs(count: 4, seed: 1), validation: pairs(count: 2, seed: 2),
                                             resume: false) { _ in }) { XCTAssertTrue("\($0)".contains("--objective"), "\($0)") }
    }
}
