import Foundation
import QLoRA
import XCTest

/// AdamW and clip_grad_norm_ against torch itself (Fixtures/optim-adamw.json, made by
/// tools/make_optim_fixtures.py) and against a float64 re-implementation of the formula.
final class AdamWTests: XCTestCase {
    static let fixture = Bundle.module.url(forResource: "Fixtures", withExtension: nil)!.appendingPathComponent("optim-adamw.json")

    /// Distance in units in the last place between two finite floats of the same sign region.
    static func ulps(_ a: Float, _ b: Float) -> Int {
        func ordered(_ x: Float) -> Int64 { x.sign == .minus ? -Int64(x.magnitude.bitPattern) : Int64(x.bitPattern) }
        return Int(abs(ordered(a) - ordered(b)))
    }

    static func maxUlps(_ a: [Float], _ b: [Float]) -> Int { zip(a, b).map { ulps($0, $1) }.max() ?? 0 }

    /// Param "a" (15 elements: torch's scalar loops, exact sqrt) must match bit for bit;
    /// param "b" (64 elements: torch's vector sqrt is off by ≤ 1 ulp) within a few ulps.
    func testMatchesTorchAdamW() throws { try checkScenario("adamw") }

    func testMatchesTorchAdamWWithClipping() throws { try checkScenario("adamw_clipped") }

    func checkScenario(_ key: String) throws {
        let doc = try JSONSerialization.jsonObject(with: Data(contentsOf: Self.fixture)) as! [String: Any]
        let s = (doc["scenarios"] as! [String: Any])[key] as! [String: Any]
        let lrs = doc["lr"] as! [Double], betas = doc["betas"] as! [Double]
        let hex = RopePermutationTests.floats(hex:)
        let params = (s["params"] as! [[String: Any]]).map {
            Parameter(name: $0["name"] as! String, shape: $0["shape"] as! [Int], values: hex($0["init"] as! String))
        }
        let opt = AdamW(parameters: params, .init(beta1: betas[0], beta2: betas[1], eps: doc["eps"] as! Double,
                                                  weightDecay: doc["weight_decay"] as! Double))
        let grads = s["grads"] as! [[String: String]], after = s["after"] as! [[String: String]]
        for (k, lr) in lrs.enumerated() {
            for p in params { p.grad.base.update(from: hex(grads[k][p.name]!), count: p.count) }
            if let norms = s["total_norms"] as? [String] {
                let norm = clipGradNorm(params, maxNorm: s["max_norm"] as! Double)
                XCTAssertLessThanOrEqual(Self.ulps(norm, hex(norms[k])[0]), 1, "step \(k + 1) total norm \(norm)")
            }
            opt.update(lr: lr)
            for p in params {
                let expected = hex(after[k][p.name]!)
                if p.name == "a" {
                    XCTAssertEqual(p.values.map(\.bitPattern), expected.map(\.bitPattern), "\(key) step \(k + 1) \(p.name)")
                } else {
                    XCTAssertLessThanOrEqual(Self.maxUlps(p.values, expected), 8, "\(key) step \(k + 1) \(p.name)")
                }
            }
        }
        XCTAssertEqual(opt.step, 5)
        for (i, p) in params.enumerated() {
            let m = hex((s["exp_avg"] as! [String: String])[p.name]!), v = hex((s["exp_avg_sq"] as! [String: String])[p.name]!)
            XCTAssertLessThanOrEqual(Self.maxUlps(opt.expAvg[i].array, m), p.name == "a" ? 0 : 8, "\(key) exp_avg \(p.name)")
            XCTAssertLessThanOrEqual(Self.maxUlps(opt.expAvgSq[i].array, v), p.name == "a" ? 0 : 8, "\(key) exp_avg_sq \(p.name)")
        }
    }

    /// The textbook formula in Double, written independently of torch's operation order.
    func testMatchesFloat64Reference() {
        var rng = SplitMix64(seed: 7)
        func normal() -> Double {
            let u1 = max(rng.nextUnitDouble(), 1e-300), u2 = rng.nextUnitDouble()
            return (-2 * log(u1)).squareRoot() * cos(2 * Double.pi * u2)
        }
        let shapes = [[8, 33], [5], [16, 4]]
        let params = shapes.enumerated().map { i, s in
            Parameter(name: "p\(i)", shape: s, values: (0..<s.reduce(1, *)).map { _ in Float(normal()) })
        }
        let h = AdamW.Hyperparameters(beta1: 0.9, beta2: 0.95, eps: 1e-8, weightDecay: 0.1)
        let opt = AdamW(parameters: params, h)
        var ref = params.map { $0.values.map(Double.init) }
        var m = ref.map { [Double](repeating: 0, count: $0.count) }, v = m
        for t in 1...12 {
            let lr = 1e-2 * (1 - Double(t) / 20)
            for (i, p) in params.enumerated() {
                for j in 0..<p.count { p.grad.base[j] = Float(normal()) }
                let g = p.grad.array.map(Double.init)
                for j in 0..<p.count {
                    ref[i][j] -= lr * h.weightDecay * ref[i][j]
                    m[i][j] = h.beta1 * m[i][j] + (1 - h.beta1) * g[j]
                    v[i][j] = h.beta2 * v[i][j] + (1 - h.beta2) * g[j] * g[j]
                    let mHat = m[i][j] / (1 - pow(h.beta1, Double(t))), vHat = v[i][j] / (1 - pow(h.beta2, Double(t)))
                    ref[i][j] -= lr * mHat / (vHat.squareRoot() + h.eps)
                }
            }
            opt.update(lr: lr)
        }
        for (i, p) in params.enumerated() {
            let diff = zip(p.values, ref[i]).map { abs(Double($0) - $1) }.max()!
            XCTAssertLessThan(diff, 2e-6, p.name)
            let dm = zip(opt.expAvg[i].array, m[i]).map { abs(Double($0) - $1) }.max()!
            XCTAssertLessThan(dm, 1e-6, p.name)
        }
    }

    func testClipGradNormScalesOnlyAboveMax() {
        let a = Parameter(name: "a", shape: [2]), b = Parameter(name: "b", shape: [1])
        a.grad.base[0] = 3; a.grad.base[1] = 0; b.grad.base[0] = 4      // total norm 5
        XCTAssertEqual(clipGradNorm([a, b], maxNorm: 10), 5)
        XCTAssertEqual(a.grad.array + b.grad.array, [3, 0, 4])
        XCTAssertEqual(clipGradNorm([a, b], maxNorm: 1), 5)
        let coef = (1 / (Float(5) + Float(1e-6))) * 1
        XCTAssertEqual(a.grad.array + b.grad.array, [3 * coef, 0, 4 * coef])
        let total = (a.grad.array + b.grad.array).map { Double($0) * Double($0) }.reduce(0, +).squareRoot()
        XCTAssertEqual(total, 1, accuracy: 1e-6)
    }

    /// Zero gradients leave the moments at zero and only decay the weights.
    func testZeroGradientOnlyDecays() {
        let p = Parameter(name: "w", shape: [3], values: [1, -2, 0.5])
        let opt = AdamW(parameters: [p], .init(weightDecay: 0.5))
        opt.update(lr: 0.1)
        XCTAssertEqual(p.values, [1, -2, 0.5].map { $0 * Float(1 - 0.1 * 0.5) })
        XCTAssertEqual(opt.expAvg[0].array, [0, 0, 0])
    }
}
