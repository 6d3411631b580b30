import Foundation
@testable import QLoRA
import XCTest

/// The pairwise preference losses: their derivatives against central differences of the loss,
/// and values a hand computation gives (TRL's formulas at points where they are easy).
final class PreferenceLossTests: XCTestCase {
    func assertDerivatives(_ f: (Double, Double) -> PreferenceLoss.Value, at a: Double, _ b: Double, _ label: String) {
        let v = f(a, b), h = 1e-6
        let da = (f(a + h, b).loss - f(a - h, b).loss) / (2 * h), db = (f(a, b + h).loss - f(a, b - h).loss) / (2 * h)
        XCTAssertEqual(v.dChosen, da, accuracy: 1e-6 * max(1, abs(da)), "\(label) ∂/∂chosen at (\(a), \(b))")
        XCTAssertEqual(v.dRejected, db, accuracy: 1e-6 * max(1, abs(db)), "\(label) ∂/∂rejected at (\(a), \(b))")
    }

    func testDerivativesMatchCentralDifferences() {
        let points: [(Double, Double)] = [(-12.5, -14.0), (-30.0, -21.0), (-3.2, -3.2), (-80.0, -40.0)]
        for (a, b) in points {
            for kind in PreferenceLoss.DPOKind.allCases {
                for eps in kind == .sigmoid || kind == .robust ? [0, 0.1] : [0.0] {
                    assertDerivatives({ PreferenceLoss.dpo(kind, policyChosen: $0, policyRejected: $1, referenceChosen: -13, referenceRejected: -15.5,
                                                           beta: 0.1, labelSmoothing: eps) }, at: a, b, "dpo \(kind) ε \(eps)")
                }
            }
            assertDerivatives({ PreferenceLoss.reward(chosen: $0, rejected: $1, margin: 0.3, centering: 0.01) }, at: a / 10, b / 10, "reward")
        }
        for (a, b) in [(-1.2, -1.9), (-0.05, -2.5), (-3.0, -0.4)] {   // mean log-probabilities (< 0)
            assertDerivatives({ PreferenceLoss.simpo(meanChosen: $0, meanRejected: $1, beta: 2, gamma: 0.5, labelSmoothing: 0.05) }, at: a, b, "simpo")
            assertDerivatives({ PreferenceLoss.orpoOddsRatio(meanChosen: $0, meanRejected: $1, beta: 0.1) }, at: a, b, "orpo")
        }
    }

    func testValuesAtEasyPoints() {
        // No preference yet (policy = reference): DPO sigmoid is log 2, IPO (1/(2β))², hinge 1.
        let z = PreferenceLoss.dpo(.sigmoid, policyChosen: -10, policyRejected: -12, referenceChosen: -10, referenceRejected: -12, beta: 0.1)
        XCTAssertEqual(z.loss, log(2), accuracy: 1e-12)
        XCTAssertEqual(z.dChosen, -0.05, accuracy: 1e-12)   // −β·σ(0)
        XCTAssertEqual(PreferenceLoss.dpo(.ipo, policyChosen: -1, policyRejected: -1, referenceChosen: 0, referenceRejected: 0, beta: 0.1).loss,
                       25, accuracy: 1e-9)
        XCTAssertEqual(PreferenceLoss.dpo(.hinge, policyChosen: -1, policyRejected: -1, referenceChosen: 0, referenceRejected: 0, beta: 0.1).loss, 1)
        // Rewards: β·(π − ρ).
        let r = PreferenceLoss.dpoRewards(policyChosen: -9, policyRejected: -13, referenceChosen: -10, referenceRejected: -12, beta: 0.1)
        XCTAssertEqual(r.chosen, 0.1, accuracy: 1e-12)
        XCTAssertEqual(r.rejected, -0.1, accuracy: 1e-12)
        // Reward model: equal scores cost log 2; a large correct gap costs nearly nothing, and stays finite.
        XCTAssertEqual(PreferenceLoss.reward(chosen: 1, rejected: 1).loss, log(2), accuracy: 1e-12)
        XCTAssertLessThan(PreferenceLoss.reward(chosen: 800, rejected: -800).loss, 1e-300)
        XCTAssertEqual(PreferenceLoss.reward(chosen: -800, rejected: 800).loss, 1600, accuracy: 1e-9)
        // ORPO: equal means have log-odds ratio 0, so −β·log σ(0).
        XCTAssertEqual(PreferenceLoss.orpoOddsRatio(meanChosen: -1.5, meanRejected: -1.5, beta: 0.1).loss, 0.1 * log(2), accuracy: 1e-12)
        // SimPO: margin exactly γ/β apart is log 2.
        XCTAssertEqual(PreferenceLoss.simpo(meanChosen: -1, meanRejected: -1.25, beta: 2, gamma: 0.5).loss, log(2), accuracy: 1e-12)
    }
}
