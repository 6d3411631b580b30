import Foundation
import QLoRA
import XCTest

/// Each filter on a few logits, against values worked out by hand.
final class SamplerTests: XCTestCase {
    typealias C = Sampler.Candidate

    func sorted(_ logits: [Float]) -> [C] {
        logits.enumerated().map { C(id: $0.offset, logit: $0.element) }
            .sorted { $0.logit > $1.logit || ($0.logit == $1.logit && $0.id < $1.id) }
    }

    func testRepetitionPenaltyDividesPositiveAndMultipliesNegativeOncePerId() {
        var logits: [Float] = [2, -1, 0.5, 3]
        Sampler.applyRepetitionPenalty(&logits, history: [0, 1, 1], penalty: 2)
        XCTAssertEqual(logits, [1, -2, 0.5, 3])
    }

    func testTopKKeepsTiesWithTheKth() {
        var c = sorted([3, 1, 2, 2, 0])
        Sampler.topK(&c, k: 2)
        XCTAssertEqual(c.map(\.id), [0, 2, 3])
        Sampler.topK(&c, k: 1)
        XCTAssertEqual(c.map(\.id), [0])
    }

    /// Probabilities 0.5, 0.3, 0.15, 0.05.
    func testTopPKeepsTheFewestReachingP() {
        let logits = [0.5, 0.3, 0.15, 0.05].map { Float(log($0)) }
        for (p, kept) in [(Float(0.4), 1), (0.7, 2), (0.85, 3), (0.99, 4)] {
            var c = sorted(logits)
            Sampler.topP(&c, p: p)
            XCTAssertEqual(c.count, kept, "top-p \(p)")
        }
    }

    func testMinPKeepsThoseAboveAFractionOfTheLargest() {
        let logits = [0.05, 0.3, 0.5, 0.15].map { Float(log($0)) }
        for (minP, kept) in [(Float(0.2), [2, 1, 3]), (0.5, [2, 1]), (0.7, [2]), (0.05, [2, 1, 3, 0])] {
            var c = sorted(logits)
            Sampler.minP(&c, minP: minP)
            XCTAssertEqual(c.map(\.id), kept, "min-p \(minP)")
        }
    }

    func testGreedyIsArgMaxAfterPenalty() {
        var s = Sampler(.greedy, seed: 1)
        XCTAssertEqual(s.next(logits: [1, 3, 3, 2], history: []), 1)
        var p = Sampler(.init(temperature: 0, repetitionPenalty: 4), seed: 1)
        XCTAssertEqual(p.next(logits: [1, 3, 3, 2], history: [1, 2]), 3)
    }

    /// SplitMix64 from seed 0: the reference implementation's first output.
    func testSplitMix64MatchesReference() {
        var r = SplitMix64(seed: 0)
        XCTAssertEqual(r.next(), 0xE220_A839_7B1D_CDAF)
    }

    /// Same seed, same ids; logits 0 and ln 3 at temperature 1 draw id 1 three times in four.
    func testSamplingIsSeededAndFollowsTheDistribution() {
        let params = Sampler.Parameters(temperature: 1, topK: 0, topP: 1, minP: 0)
        let logits: [Float] = [0, Float(log(3.0))]
        var a = Sampler(params, seed: 42), b = Sampler(params, seed: 42)
        let ids = (0..<20_000).map { _ in a.next(logits: logits, history: []) }
        XCTAssertEqual(ids, (0..<20_000).map { _ in b.next(logits: logits, history: []) })
        let share = Double(ids.filter { $0 == 1 }.count) / Double(ids.count)
        XCTAssertEqual(share, 0.75, accuracy: 0.015)
    }

    /// Temperature 0.5 doubles logits: 0 and ln 3 become probabilities 0.1 and 0.9.
    func testTemperatureScalesLogits() {
        var s = Sampler(.init(temperature: 0.5, topK: 0, topP: 1, minP: 0), seed: 7)
        let ids = (0..<20_000).map { _ in s.next(logits: [0, Float(log(3.0))], history: []) }
        XCTAssertEqual(Double(ids.filter { $0 == 1 }.count) / Double(ids.count), 0.9, accuracy: 0.01)
    }
}

extension SamplerTests {
    /// Top-k sampling only sorts the logits that can survive; the ids drawn are those of a full sort.
    func testTopKPreselectionDrawsTheSameAsFullFilter() {
        var rng = SplitMix64(seed: 9)
        let logits = (0..<500).map { _ in Float(rng.next() % 64) / 8 }
        let params = Sampler.Parameters(temperature: 0.7, topK: 5, topP: 1, minP: 0)
        var s = Sampler(params, seed: 3)
        var c = sorted(logits)
        Sampler.topK(&c, k: 5)
        let allowed = Set(c.map(\.id))
        XCTAssertGreaterThanOrEqual(allowed.count, 5)
        let drawn = Set((0..<2000).map { _ in s.next(logits: logits, history: []) })
        XCTAssertEqual(drawn, allowed)
    }
}
