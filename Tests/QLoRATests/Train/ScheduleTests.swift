import Foundation
import QLoRA
import XCTest

/// LRSchedule against transformers' lambdas recomputed here and values worked out by hand.
final class ScheduleTests: XCTestCase {
    /// transformers.optimization's lr lambdas, transcribed.
    func reference(_ kind: LRSchedule.Kind, _ s: Int, W: Int, N: Int) -> Double {
        if s < W { return Double(s) / Double(max(1, W)) }
        switch kind {
        case .constant: return 1
        case .linear: return max(0, Double(N - s) / Double(max(1, N - W)))
        case .cosine:
            let progress = Double(s - W) / Double(max(1, N - W))
            return max(0, 0.5 * (1 + cos(Double.pi * 0.5 * 2 * progress)))
        }
    }

    func testMatchesTransformersLambdas() {
        for kind in LRSchedule.Kind.allCases {
            for (W, N) in [(0, 10), (3, 10), (10, 10), (100, 15000), (12, 0)] {
                let s = LRSchedule(kind, baseLR: 2e-4, warmup: .steps(W), totalSteps: N)
                for step in 0...(N + 2) {
                    XCTAssertEqual(s.lr(at: step), 2e-4 * reference(kind, step, W: W, N: N), "\(kind) W=\(W) N=\(N) step \(step)")
                }
            }
        }
    }

    /// Hand-checked: warmup 4 of 10 steps.
    func testHandCheckedValues() {
        let linear = LRSchedule(.linear, baseLR: 1, warmup: .steps(4), totalSteps: 10)
        let expected: [Double] = [0, 0.25, 0.5, 0.75, 1, 5.0 / 6, 4.0 / 6, 3.0 / 6, 2.0 / 6, 1.0 / 6, 0]
        XCTAssertEqual((0...10).map { linear.factor(at: $0) }, expected)
        let cosine = LRSchedule(.cosine, baseLR: 1, warmup: .steps(4), totalSteps: 10)
        XCTAssertEqual(cosine.factor(at: 4), 1)
        XCTAssertEqual(cosine.factor(at: 7), 0.5, accuracy: 1e-15)     // halfway: cos(π/2) = 0
        XCTAssertEqual(cosine.factor(at: 10), 0, accuracy: 1e-15)      // cos(π) = −1
        XCTAssertEqual(cosine.factor(at: 12), 0.5 * (1 + cos(Double.pi * 8 / 6)))  // past N it rises again, as in transformers
        let constant = LRSchedule(.constant, baseLR: 3e-4, warmup: .steps(2), totalSteps: 10)
        XCTAssertEqual((0...3).map { constant.lr(at: $0) }, [0, 1.5e-4, 3e-4, 3e-4])
    }

    /// TrainingArguments.get_warmup_steps: a ratio is ceil(N · ratio).
    func testWarmupRatioRoundsUp() {
        XCTAssertEqual(LRSchedule.Warmup.ratio(0.03).steps(total: 15000), 450)
        XCTAssertEqual(LRSchedule.Warmup.ratio(0.03).steps(total: 1001), 31)    // 30.03 → 31
        XCTAssertEqual(LRSchedule.Warmup.ratio(0.1).steps(total: 10), 1)
        XCTAssertEqual(LRSchedule.Warmup.ratio(0).steps(total: 10), 0)
        XCTAssertEqual(LRSchedule(.linear, baseLR: 1, warmup: .ratio(0.1), totalSteps: 95).warmupSteps, 10)   // 9.5 → 10
    }
}
