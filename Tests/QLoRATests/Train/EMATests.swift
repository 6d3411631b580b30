import QLoRA
import XCTest

final class EMATests: XCTestCase {
    /// Shadows follow θ_ema = β^k·θ_ema + (1 − β^k)·θ, against a float64 recomputation.
    func testUpdateEveryK() {
        let p = Parameter(name: "w", shape: [4], values: [1, -1, 0.5, 2])
        let ema = EMA(parameters: [p], beta: 0.9, every: 3)
        XCTAssertEqual(ema.shadows[0].array, p.values)
        XCTAssertEqual(ema.decayPerUpdate, 0.9 * 0.9 * 0.9, accuracy: 1e-15)
        var ref = p.values.map(Double.init)
        for n in 1...12 {
            p.setValues(p.values.map { $0 + 0.25 })
            if ema.isDue(afterUpdate: n) {
                ema.update()
                ref = zip(ref, p.values).map { 0.729 * $0 + 0.271 * Double($1) }
            }
        }
        for (a, b) in zip(ema.shadows[0].array, ref) { XCTAssertEqual(Double(a), b, accuracy: 1e-6) }
        XCTAssertEqual((1...9).filter(ema.isDue), [3, 6, 9])
    }

    /// With warm-up the decay after update n is min(β, (1 + n)/(10 + n))^k: float64 recomputation
    /// over a run that crosses β (n ≥ 80 for β = 0.9), every k = 2; without it β^k exactly.
    func testWarmupDecayFollowsTheUpdateCount() {
        let p = Parameter(name: "w", shape: [3], values: [1, -2, 0.5])
        let ema = EMA(parameters: [p], beta: 0.9, every: 2, warmup: true)
        XCTAssertEqual(ema.decay(afterUpdate: 1), pow(2.0 / 11, 2), accuracy: 1e-15)
        XCTAssertEqual(ema.decay(afterUpdate: 80), 0.81, accuracy: 1e-15)
        XCTAssertEqual(ema.decay(afterUpdate: 500), 0.81, accuracy: 1e-15)
        XCTAssertEqual(EMA(parameters: [p], beta: 0.9, every: 2).decay(afterUpdate: 1), 0.81, accuracy: 1e-15)
        var ref = p.values.map(Double.init)
        for n in 1...120 {
            p.setValues(p.values.map { $0 + 0.01 })
            guard ema.isDue(afterUpdate: n) else { continue }
            ema.update(afterUpdate: n)
            let d = pow(min(0.9, Double(1 + n) / Double(10 + n)), 2)
            ref = zip(ref, p.values).map { d * $0 + (1 - d) * Double($1) }
        }
        for (a, b) in zip(ema.shadows[0].array, ref) { XCTAssertEqual(Double(a), b, accuracy: 1e-5) }
        // it tracks: with warm-up the shadows trail the live weights by about the last few updates
        XCTAssertLessThan(abs(Double(ema.shadows[0].array[0]) - Double(p.values[0])), 0.15)
    }

    /// torch's `shadow.mul_(β).add_(θ, alpha=1−β)` in float32, with the add fused.
    func testUpdateMatchesTorchArithmetic() {
        let p = Parameter(name: "w", shape: [3], values: [0.1, 3, -7])
        let ema = EMA(parameters: [p], beta: 0.999)
        p.setValues([0.3, 1, 2])
        ema.update()
        let expected = zip([Float(0.1), 3, -7], [Float(0.3), 1, 2]).map { ($0 * Float(0.999)).addingProduct($1, Float(1 - 0.999)) }
        XCTAssertEqual(ema.shadows[0].array, expected)
    }

    /// Swapping in and out returns the live weights bit for bit, NaN payloads and −0 included.
    func testSwapRestoresLiveWeightsExactly() throws {
        let live: [Float] = [1.0000001, -0.0, .nan, Float(bitPattern: 0x7FC0_1234), .leastNonzeroMagnitude, 3]
        let p = Parameter(name: "w", shape: [6], values: live)
        let q = Parameter(name: "v", shape: [2], values: [5, 6])
        let ema = EMA(parameters: [p, q], beta: 0.5)
        ema.update()
        let shadowBits = ema.shadows.map { $0.array.map(\.bitPattern) }
        p.setValues(live.map { $0 * 2 })
        let liveBits = p.values.map(\.bitPattern)
        let seen = ema.withAveragedWeights { [p.values.map(\.bitPattern), q.values.map(\.bitPattern)] }
        XCTAssertEqual(seen, shadowBits)
        XCTAssertEqual(p.values.map(\.bitPattern), liveBits)
        XCTAssertEqual(ema.shadows.map { $0.array.map(\.bitPattern) }, shadowBits)
        XCTAssertFalse(ema.isSwappedIn)

        struct Stop: Error {}
        XCTAssertThrowsError(try ema.withAveragedWeights { throw Stop() })
        XCTAssertEqual(p.values.map(\.bitPattern), liveBits)
        XCTAssertFalse(ema.isSwappedIn)
    }
}
