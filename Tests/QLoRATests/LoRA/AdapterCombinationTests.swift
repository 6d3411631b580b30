import Foundation
@testable import QLoRA
import XCTest

/// `qlora adapters combine` on the tiny model's three PEFT fixtures (different ranks, targets
/// and scales; see AdapterSetTests), checked against ΔW formed in Float64 here.
final class AdapterCombinationTests: XCTestCase {
    static let weights = [0.7, 0.3, -0.5]

    func inputs() throws -> (AdapterSet, [(name: String, adapters: ModelAdapters, weight: Double)]) {
        let s = AdapterSet(base: AdapterSetTests.base)
        let dirs = [AdapterSetTests.peft, AdapterSetTests.layer0, AdapterSetTests.export]
        let list = try zip(dirs, Self.weights).map { dir, w in
            let name = try s.load(dir)
            return (name: name, adapters: try s.adapters(name), weight: w)
        }
        return (s, list)
    }

    /// ΔW [out, in] of one linear: Σ w_i·s_i·B_i·A_i over the inputs that have it, Float64.
    static func delta(_ inputs: [(name: String, adapters: ModelAdapters, weight: Double)], layer l: Int, linear m: LinearSpec,
                      rows: Int, cols: Int) -> [Double] {
        var d = [Double](repeating: 0, count: rows * cols)
        for i in inputs { if let a = i.adapters.layers[l].adapters[m] { add(a, weight: i.weight, into: &d) } }
        return d
    }

    static func add(_ a: LoRAAdapter, weight: Double, into d: inout [Double]) {
        let r = a.rank, n = a.inFeatures, A = a.a.values, B = a.b.values, s = weight * Double(a.scale)
        for i in 0..<a.outFeatures { for k in 0..<r where B[i * r + k] != 0 {
            let b = s * Double(B[i * r + k])
            for j in 0..<n { d[i * n + j] += b * Double(A[k * n + j]) }
        } }
    }

    static func norm(_ x: [Double]) -> Double { x.reduce(0) { $0 + $1 * $1 }.squareRoot() }

    /// The output's ΔW and the Float64 one per module, with the reported module.
    func compare(_ result: AdapterCombination.Result, _ inputs: [(name: String, adapters: ModelAdapters, weight: Double)])
        -> [(module: AdapterCombination.Module, got: [Double], want: [Double])] {
        zip(result.adapters.adapters, result.modules).map { entry, module in
            var got = [Double](repeating: 0, count: entry.adapter.outFeatures * entry.adapter.inFeatures)
            Self.add(entry.adapter, weight: 1, into: &got)
            return (module, got, Self.delta(inputs, layer: entry.layer, linear: entry.linear, rows: entry.adapter.outFeatures,
                                            cols: entry.adapter.inFeatures))
        }
    }

    func testConcatReproducesTheWeightedSumAndCoversTheUnionOfTargets() throws {
        let (s, inputs) = try inputs()
        let result = try AdapterCombination.combine(inputs, base: s.base, method: .concat)
        XCTAssertEqual(result.adapters.config.rank, 4 + 2 + 4)
        XCTAssertEqual(result.adapters.config.scale, 1)
        XCTAssertEqual(result.adapters.adapters.count, 14)            // peft has every linear of both blocks
        for (module, got, want) in compare(result, inputs) {
            XCTAssertLessThan(AdapterSetTests.relativeMaxDiff(got, want), 1e-6, "\(module.layer) \(module.linear)")
            XCTAssertEqual(module.norm, Self.norm(want), accuracy: 1e-6 * Self.norm(want))
            XCTAssertEqual(module.relativeError, 0)
        }
        // Without peft the union is block 0's q/v (layer0) and export's six: not every linear of every block.
        let partial = try AdapterCombination.combine(Array(inputs.dropFirst()), base: s.base, method: .concat)
        XCTAssertEqual(Set(partial.adapters.adapters.map { "\($0.layer).\($0.linear.name)" }),
                       Set(["0.q_proj", "0.v_proj"]).union(inputs[2].adapters.adapters.map { "\($0.layer).\($0.linear.name)" }))
        for (module, got, want) in compare(partial, Array(inputs.dropFirst())) {
            XCTAssertLessThan(AdapterSetTests.relativeMaxDiff(got, want), 1e-6, "\(module.layer) \(module.linear)")
        }
    }

    /// Truncated to rank 3 (< the true rank 10 where all three adapt a linear): the reported
    /// error is ‖ΔW − B'·A'‖ / ‖ΔW‖ computed here from the full products, module by module and
    /// in total; and it is the best rank-3 error (no better one exists, checked by the σ of ΔW).
    func testSVDErrorEqualsTheFloat64ErrorOfTheWrittenFactors() throws {
        let (s, inputs) = try inputs()
        let result = try AdapterCombination.combine(inputs, base: s.base, method: .svd(rank: 3))
        XCTAssertEqual(result.adapters.config.rank, 3)
        var dropped2 = 0.0, total2 = 0.0
        for (module, got, want) in compare(result, inputs) {
            let diff = zip(got, want).map { $0 - $1 }, err = Self.norm(diff) / Self.norm(want)
            XCTAssertEqual(module.relativeError, err, accuracy: 1e-5, "\(module.layer) \(module.linear)")
            XCTAssertGreaterThan(err, 1e-3, "\(module.layer) \(module.linear): rank 3 should drop something")
            dropped2 += Self.norm(diff) * Self.norm(diff); total2 += Self.norm(want) * Self.norm(want)
        }
        XCTAssertEqual(result.relativeError, (dropped2 / total2).squareRoot(), accuracy: 1e-5)
        // Eckart–Young: the error is that of ΔW's own SVD (formed whole here) cut to rank 3.
        let one = try XCTUnwrap(compare(result, inputs).first { $0.module.layer == 1 && $0.module.linear == .down })
        let d = one.want, shape = (s.base.config.hiddenSize, s.base.config.intermediateSize)
        let sigma = Matrix64(rows: shape.0, cols: shape.1, values: d).jacobiSVD().sigma
        let best = (sigma.dropFirst(3).reduce(0) { $0 + $1 * $1 } / sigma.reduce(0) { $0 + $1 * $1 }).squareRoot()
        XCTAssertEqual(one.module.relativeError, best, accuracy: 1e-6)
    }

    func testSVDAtOrAboveTheTrueRankIsExact() throws {
        let (s, inputs) = try inputs()
        for rank in [10, 12] {
            let result = try AdapterCombination.combine(inputs, base: s.base, method: .svd(rank: rank))
            XCTAssertLessThan(result.relativeError, 1e-12)
            for (module, got, want) in compare(result, inputs) {
                XCTAssertLessThan(module.relativeError, 1e-12)
                XCTAssertLessThan(Self.norm(zip(got, want).map { $0 - $1 }) / Self.norm(want), 1e-6, "\(module.layer) \(module.linear)")
            }
        }
    }

    /// What combine writes loads back (the union of targets as PEFT names) and runs as computed.
    func testCombinedAdapterSavesAndLoadsBack() throws {
        let (s, inputs) = try inputs()
        let tmp = TempDir()
        for (i, method) in [AdapterCombination.Method.concat, .svd(rank: 2)].enumerated() {
            let result = try AdapterCombination.combine(Array(inputs.dropFirst()), base: s.base, method: method)
            let dir = tmp.path + "/out\(i)"
            try AdapterFiles.save(result.adapters, to: dir, baseModel: "tiny")
            let name = try s.load(dir)
            let back = try s.adapters(name)
            XCTAssertEqual(back.adapters.map { "\($0.layer) \($0.linear)" }, result.adapters.adapters.map { "\($0.layer) \($0.linear)" })
            XCTAssertEqual(back.config.scale, 1)
            for (a, b) in zip(back.parameters, result.adapters.parameters) { XCTAssertEqual(a.values, b.values, a.name) }
        }
    }

    func testAdaptersWithTrainedNormsAreNotCombined() throws {
        let (s, inputs) = try inputs()
        let norms = try ModelAdapters(model: s.base, config: LoRAConfig(rank: 2), trainNorms: true, seed: 1)
        XCTAssertThrowsError(try AdapterCombination.combine(inputs + [("norms", norms, 1)], base: s.base, method: .concat)) {
            XCTAssertEqual($0 as? AdapterCombinationError, .trainedNorms(name: "norms"))
        }
    }

    /// `adapters info`'s ‖ΔW‖ per linear: those of combine --concat of the adapter alone, and
    /// also for an adapter with trained norms (PEFT's modules_to_save), which combine refuses.
    func testDeltaNormsOfOneAdapterAreThoseOfItsConcatAlone() throws {
        let (s, inputs) = try inputs()
        for input in inputs {
            let alone = try AdapterCombination.combine([(input.name, input.adapters, 1)], base: s.base, method: .concat).modules
            let norms = AdapterCombination.deltaNorms(of: input.adapters)
            XCTAssertEqual(norms.map { "\($0.layer) \($0.linear)" }, alone.map { "\($0.layer) \($0.linear)" })
            for (a, b) in zip(norms, alone) { XCTAssertEqual(a.norm, b.norm, accuracy: 1e-12 * b.norm, "\(a.layer) \(a.linear)") }
        }
        let name = try s.load(AdapterFilesTests.peftNormsAdapter)
        let withNorms = try s.adapters(name)
        let norms = AdapterCombination.deltaNorms(of: withNorms)
        XCTAssertEqual(norms.count, 8)
        for (module, (l, m, a)) in zip(norms, withNorms.adapters) {
            var d = [Double](repeating: 0, count: a.outFeatures * a.inFeatures)
            Self.add(a, weight: 1, into: &d)
            XCTAssertEqual(module.norm, Self.norm(d), accuracy: 1e-6 * Self.norm(d), "\(l) \(m)")
        }
    }
}

/// Householder QR and one-sided Jacobi SVD in Float64: reconstruction, orthogonality, order.
final class Matrix64Tests: XCTestCase {
    static func random(_ m: Int, _ n: Int, rank: Int? = nil, seed: UInt64) -> Matrix64 {
        var rng = SplitMix64(seed: seed)
        func r(_ a: Int, _ b: Int) -> Matrix64 { Matrix64(rows: a, cols: b, values: (0..<(a * b)).map { _ in rng.nextUnitDouble() * 2 - 1 }) }
        guard let k = rank else { return r(m, n) }
        return r(m, k).multiplied(by: r(k, n))
    }

    static func maxAbs(_ a: Matrix64, _ b: Matrix64) -> Double { zip(a.values, b.values).map { abs($0 - $1) }.max() ?? 0 }

    static func identity(_ n: Int) -> Matrix64 {
        var i = Matrix64(rows: n, cols: n)
        for k in 0..<n { i[k, k] = 1 }
        return i
    }

    func testQRReconstructsWithOrthonormalQAndTriangularR() {
        for (m, n, rank) in [(40, 7, nil), (7, 40, nil), (30, 10, 3), (5, 5, 0)] as [(Int, Int, Int?)] {
            let a = Self.random(m, n, rank: rank, seed: UInt64(m * 100 + n))
            let (q, r) = a.householderQR()
            let k = min(m, n)
            XCTAssertEqual([q.rows, q.cols, r.rows, r.cols], [m, k, k, n])
            XCTAssertLessThan(Self.maxAbs(q.multiplied(by: r), a), 1e-12, "\(m)x\(n)")
            XCTAssertLessThan(Self.maxAbs(q.transposed.multiplied(by: q), Self.identity(k)), 1e-12, "\(m)x\(n)")
            for i in 0..<k { for j in 0..<min(i, n) { XCTAssertEqual(r[i, j], 0, "\(m)x\(n) R[\(i), \(j)]") } }
        }
    }

    func testJacobiSVDReconstructsWithOrthonormalFactorsAndOrderedValues() {
        for (m, n, rank) in [(40, 7, nil), (7, 40, nil), (12, 12, nil), (30, 10, 3)] as [(Int, Int, Int?)] {
            let a = Self.random(m, n, rank: rank, seed: UInt64(m * 7 + n))
            let (u, sigma, v) = a.jacobiSVD()
            let k = min(m, n)
            XCTAssertEqual([u.rows, u.cols, v.rows, v.cols, sigma.count], [m, k, n, k, k])
            var us = u
            for i in 0..<m { for j in 0..<k { us[i, j] *= sigma[j] } }
            XCTAssertLessThan(Self.maxAbs(us.multiplied(by: v.transposed), a), 1e-12, "\(m)x\(n)")
            XCTAssertLessThan(Self.maxAbs(v.transposed.multiplied(by: v), Self.identity(k)), 1e-12, "\(m)x\(n) V")
            let nonzero = rank ?? k
            var uk = Matrix64(rows: m, cols: nonzero)
            for i in 0..<m { for j in 0..<nonzero { uk[i, j] = u[i, j] } }
            XCTAssertLessThan(Self.maxAbs(uk.transposed.multiplied(by: uk), Self.identity(nonzero)), 1e-12, "\(m)x\(n) U")
            XCTAssertEqual(sigma, sigma.sorted(by: >))
            XCTAssertTrue(sigma.allSatisfy { $0 >= 0 })
            if let rank { XCTAssertLessThan(sigma[rank...].max()!, 1e-12 * sigma[0]) }
            XCTAssertEqual(sigma.reduce(0) { $0 + $1 * $1 }, a.frobeniusNorm * a.frobeniusNorm, accuracy: 1e-10 * a.frobeniusNorm * a.frobeniusNorm)
        }
    }

    func testJacobiSVDOfAKnownMatrix() {
        // [[3, 0], [4, 5]] has singular values √45 and √5 (σ₁σ₂ = |det| = 15, σ₁² + σ₂² = 50).
        let (_, sigma, _) = Matrix64(rows: 2, cols: 2, values: [3, 0, 4, 5]).jacobiSVD()
        XCTAssertEqual(sigma[0], 45.0.squareRoot(), accuracy: 1e-14)
        XCTAssertEqual(sigma[1], 5.0.squareRoot(), accuracy: 1e-14)
    }
}
