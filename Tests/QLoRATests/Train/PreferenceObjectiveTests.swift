import Foundation
@testable import QLoRA
import XCTest

/// The preference objectives (DPO, SimPO, ORPO, reward) on the tiny NF4 Llama fixture: their
/// sequence log-probabilities and losses against float64 recomputations from the inference
/// forward, and their gradients (LoRA, trained norms, score head) against central differences.
final class PreferenceObjectiveTests: XCTestCase {
    static var tiny: DecoderModel { LlamaTrainerTests.tiny }

    /// Three pairs of random ids, prompts and completions of different lengths (so rows pad).
    func pairs(seed: UInt64 = 21) -> [PreferencePair] {
        var rng = SplitMix64(seed: seed)
        func ids(_ n: Int) -> [Int] { (0..<n).map { _ in Int(1 + rng.next() % 255) } }
        return [(3, 4, 2), (5, 2, 6), (2, 3, 3)].enumerated().map { i, s in
            PreferencePair(prompt: ids(s.0), chosen: ids(s.1), rejected: ids(s.2), margin: [0.5, -0.25, 0][i])
        }
    }

    func lora(trainNorms: Bool = true, scoreHead: Bool = false) throws -> ModelAdapters {
        let l = try ModelAdapters(model: Self.tiny, config: LoRAConfig(rank: 4, alpha: 8), trainNorms: trainNorms, scoreHead: scoreHead, seed: 11)
        var rng = SplitMix64(seed: 99)
        for p in l.parameters where p.name.hasSuffix("lora_B.weight") {
            p.setValues((0..<p.count).map { _ in Float(rng.nextUnitDouble() - 0.5) * 0.2 })
        }
        return l
    }

    /// The batch with the base model's log-probabilities as the reference (DPO with the adapter off).
    func batch(_ pairs: [PreferencePair]) throws -> TokenBatch {
        let plain = TokenBatch(PreferenceBatch(pairs: pairs, indices: Array(pairs.indices), padID: 0, epoch: 0))
        let reference = try PreferenceObjective.completionLogProbs(plain, trainer: Trainer(model: Self.tiny, lora: .disabled(for: Self.tiny)))
        var withRef = pairs
        for p in withRef.indices { withRef[p].reference = (reference[p], reference[pairs.count + p]) }
        return TokenBatch(PreferenceBatch(pairs: withRef, indices: Array(pairs.indices), padID: 0, epoch: 0))
    }

    /// log p(completion | prompt) of one side in float64, from the inference forward of the
    /// model with `adapters` merged in (nil: the base), and the completion's length.
    func logProb(_ pair: PreferencePair, _ side: PreferencePair.Side, adapters: ModelAdapters?) throws -> (sum: Double, count: Int) {
        let model = adapters.map { DecoderModel(Self.tiny, adapters: $0) } ?? Self.tiny
        let ids = pair.inputIds(side), V = Self.tiny.config.vocabSize
        let logits = try model.forward(tokens: ids, logits: .all)
        var sum = 0.0
        for t in pair.prompt.count..<ids.count {
            let row = logits[((t - 1) * V)..<(t * V)].map(Double.init)
            let m = row.max()!
            sum += row[ids[t]] - (m + log(row.reduce(0) { $0 + exp($1 - m) }))
        }
        return (sum, ids.count - pair.prompt.count)
    }

    func testCompletionLogProbsMatchTheInferenceForward() throws {
        let l = try lora()
        let ps = pairs(), b = try batch(ps)
        let got = try PreferenceObjective.completionLogProbs(b, trainer: Trainer(model: Self.tiny, lora: l))
        for (p, pair) in ps.enumerated() {
            for (k, side) in PreferencePair.Side.allCases.enumerated() {
                let want = try logProb(pair, side, adapters: l).sum
                XCTAssertEqual(got[k * ps.count + p], want, accuracy: 1e-4 * abs(want), "pair \(p) \(side)")
                let base = try logProb(pair, side, adapters: nil).sum
                XCTAssertEqual(b.pairs!.reference![k * ps.count + p], base, accuracy: 1e-4 * abs(base), "reference, pair \(p) \(side)")
            }
        }
        XCTAssertNotEqual(got, b.pairs!.reference!, "random B makes the policy differ from the base")
    }

    /// DPO's sigmoid loss and TRL's metrics, recomputed in float64 from the inference forward.
    func testDPOLossAndMetricsMatchAFloat64Recomputation() throws {
        let l = try lora()
        let ps = pairs(), b = try batch(ps), beta = 0.1
        let loss = try Trainer(model: Self.tiny, lora: l, objective: PreferenceObjective(.dpo(.sigmoid, labelSmoothing: 0), beta: beta)).loss(b)
        var sum = 0.0, acc = 0.0, margins = 0.0
        for pair in ps {
            let (pc, pr) = (try logProb(pair, .chosen, adapters: l).sum, try logProb(pair, .rejected, adapters: l).sum)
            let (rc, rr) = (try logProb(pair, .chosen, adapters: nil).sum, try logProb(pair, .rejected, adapters: nil).sum)
            let z = beta * ((pc - pr) - (rc - rr))
            sum += log(1 + exp(-z))
            acc += beta * (pc - rc) > beta * (pr - rr) ? 1 : 0
            margins += beta * ((pc - rc) - (pr - rr))
        }
        XCTAssertEqual(loss.tokens, 3)
        XCTAssertEqual(loss.mean, sum / 3, accuracy: 1e-5)
        XCTAssertEqual(loss.metric("rewards/accuracies")!, acc / 3, accuracy: 1e-12)
        XCTAssertEqual(loss.metric("rewards/margins")!, margins / 3, accuracy: 1e-5)
    }

    /// Every parameter's gradient (LoRA A and B, trained norms, the score head) against central
    /// differences of the batch's mean loss.
    /// `step`: the relative step; IPO's squared loss multiplies float32 noise in the
    /// log-probabilities by 2(h − 1/2β), so it takes a larger one.
    func checkFiniteDifferences(_ objective: any TrainingObjective, scoreHead: Bool = false, step: Float = 2e-3,
                                file: StaticString = #filePath, line: UInt = #line) throws {
        let l = try lora(scoreHead: scoreHead)
        let b = try batch(pairs())
        let trainer = Trainer(model: Self.tiny, lora: l, headChunkRows: 5, objective: objective)
        l.parameters.forEach { $0.zeroGrad() }
        let P = b.pairs!.count
        _ = try trainer.accumulateGradients(b, gradScale: 1 / Float(P), dropoutSeed: nil)
        let grads = l.parameters.map { $0.grad.array }
        var rng = SplitMix64(seed: 5)
        var checked = 0, nonzero = 0
        for (pi, p) in l.parameters.enumerated() {
            for _ in 0..<2 {
                let i = Int(rng.next() % UInt64(p.count))
                let v = p.value.base[i], h: Float = step * max(1, abs(v))
                p.value.base[i] = v + h
                let up = try trainer.loss(b).mean
                p.value.base[i] = v - h
                let down = try trainer.loss(b).mean
                p.value.base[i] = v
                let numeric = (up - down) / (2 * Double(h)), analytic = Double(grads[pi][i])
                XCTAssertEqual(analytic, numeric, accuracy: 3e-2 * abs(numeric) + 3e-5, "\(p.name)[\(i)]", file: file, line: line)
                checked += 1
                if abs(analytic) > 1e-6 { nonzero += 1 }
            }
        }
        XCTAssertGreaterThan(checked, 40, file: file, line: line)
        XCTAssertGreaterThan(nonzero, checked / 2, "gradients reach most parameters", file: file, line: line)
        if scoreHead { XCTAssertTrue(l.scoreHead!.grad.array.contains { $0 != 0 }, file: file, line: line) }
    }

    func testDPOSigmoidGradients() throws { try checkFiniteDifferences(PreferenceObjective(.dpo(.sigmoid, labelSmoothing: 0.1), beta: 0.5)) }
    func testDPORobustGradients() throws { try checkFiniteDifferences(PreferenceObjective(.dpo(.robust, labelSmoothing: 0.1), beta: 0.5)) }
    func testIPOGradients() throws { try checkFiniteDifferences(PreferenceObjective(.dpo(.ipo, labelSmoothing: 0), beta: 0.5), step: 1e-2) }
    func testSimPOGradients() throws { try checkFiniteDifferences(PreferenceObjective(.simpo(gamma: 0.5, labelSmoothing: 0), beta: 2)) }
    func testORPOGradients() throws { try checkFiniteDifferences(PreferenceObjective(.orpo, beta: 0.5)) }
    func testRewardGradients() throws { try checkFiniteDifferences(RewardObjective(centering: 0.01), scoreHead: true) }

    /// ORPO's loss: the mean NLL over every real token of the chosen rows (prompt included, as
    /// TRL's ORPOTrainer) plus the mean odds-ratio term, in float64 from the inference forward.
    func testORPOLossMatchesAFloat64Recomputation() throws {
        let l = try lora()
        let ps = pairs(), beta = 0.25
        let loss = try Trainer(model: Self.tiny, lora: l, objective: PreferenceObjective(.orpo, beta: beta)).loss(try batch(ps))
        let model = DecoderModel(Self.tiny, adapters: l), V = Self.tiny.config.vocabSize
        var nll = 0.0, tokens = 0, odds = 0.0
        for pair in ps {
            let ids = pair.inputIds(.chosen)
            let logits = try model.forward(tokens: ids, logits: .all)
            for t in 1..<ids.count {
                let row = logits[((t - 1) * V)..<(t * V)].map(Double.init), m = row.max()!
                nll += (m + log(row.reduce(0) { $0 + exp($1 - m) })) - row[ids[t]]
                tokens += 1
            }
            let c = try logProb(pair, .chosen, adapters: l), r = try logProb(pair, .rejected, adapters: l)
            let (mc, mr) = (c.sum / Double(c.count), r.sum / Double(r.count))
            let x = (mc - log(1 - exp(mc))) - (mr - log(1 - exp(mr)))
            odds += -beta * -log(1 + exp(-x))
        }
        XCTAssertEqual(loss.mean, nll / Double(tokens) + odds / 3, accuracy: 1e-5)
        XCTAssertEqual(loss.metric("nll_loss")!, nll / Double(tokens), accuracy: 1e-5)
    }

    /// The reward is read at each row's last real token: padding after it changes nothing.
    func testRewardReadsTheLastRealTokenByLength() throws {
        let l = try lora(trainNorms: false, scoreHead: true)
        let trainer = Trainer(model: Self.tiny, lora: l)
        let ps = pairs()
        let together = try RewardObjective.scores(try batch(ps), trainer: trainer)
        for (p, pair) in ps.enumerated() {
            let alone = try RewardObjective.scores(try batch([pair]), trainer: trainer)
            XCTAssertEqual(alone[0], together[p], accuracy: 1e-5)
            XCTAssertEqual(alone[1], together[ps.count + p], accuracy: 1e-5)
        }
        XCTAssertNotEqual(together[0], together[1])
    }

    func testObjectivesRefuseBatchesWithoutPairs() throws {
        let l = try lora(scoreHead: true)
        let plain = TokenBatch(inputIds: [1, 2, 3, 4], labels: [1, 2, 3, 4], sequences: 2, length: 2)
        for objective: any TrainingObjective in [PreferenceObjective(.simpo(gamma: 0.5, labelSmoothing: 0), beta: 2), RewardObjective()] {
            XCTAssertThrowsError(try Trainer(model: Self.tiny, lora: l, objective: objective).loss(plain)) {
                XCTAssertTrue("\($0)".contains("preference pairs"), "\($0)")
            }
        }
        var noRef = try batch(pairs())
        noRef.pairs?.reference = nil
        XCTAssertThrowsError(try Trainer(model: Self.tiny, lora: l, objective: PreferenceObjective(.dpo(.sigmoid, labelSmoothing: 0), beta: 0.1)).loss(noRef))
    }

    /// Metrics add up over batches and divide by what the loss is a mean over; extremes combine
    /// by min and max.
    func testMetricsCombineOverBatches() {
        let a = LossSum(sum: 1, tokens: 2, metrics: ["accuracy": 1, "min_reward": -0.5, "max_reward": 2])
        let b = LossSum(sum: 3, tokens: 2, metrics: ["accuracy": 2, "min_reward": -1.5, "max_reward": 1])
        let c = a + b
        XCTAssertEqual(c.mean, 1)
        XCTAssertEqual(c.metric("accuracy"), 0.75)
        XCTAssertEqual(c.metric("min_reward"), -1.5)
        XCTAssertEqual(c.metric("max_reward"), 2)
        XCTAssertNil(c.metric("margin"))
    }
}
