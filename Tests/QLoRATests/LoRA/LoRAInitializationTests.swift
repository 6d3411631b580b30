import Foundation
@testable import QLoRA
import Quant
import XCTest

/// PiSSA and OLoRA against PEFT (tools/make_lora_init_fixtures.py → Fixtures/lora-init-peft.json),
/// the LAPACK SVD against the Float64 Jacobi SVD, and LoftQ against its definition.
final class LoRAInitializationTests: XCTestCase {
    struct Fixture: Decodable {
        struct Weight: Decodable {
            let shape: [Int]
            let f32: String
        }
        struct Module: Decodable {
            let lora_A: String
            let lora_B: String
            let residual: String
            let scaling: Double
        }
        let rank: Int
        let weights: [String: Weight]
        let cases: [String: [String: Module]]
    }

    static let fixture = try! JSONDecoder().decode(
        Fixture.self, from: Data(contentsOf: LlamaTrainerTests.fixtures.appendingPathComponent("lora-init-peft.json")))
    static func floats(_ hex: String) -> [Float] { LoRAGradientFixtureTests.floats(hex) }

    /// max |x − y| / max |y|.
    func rel(_ x: [Float], _ y: [Float]) -> Double {
        Double(zip(x, y).map { abs($0 - $1) }.max()!) / Double(y.map(abs).max()!)
    }

    /// s·B·A [out, in].
    func product(a: [Float], b: [Float], rows: Int, cols: Int, rank r: Int, scale s: Float) -> [Float] {
        let zero = [Float](repeating: 0, count: rows * cols)
        return LoRAInitialization.subtractProduct(zero, a: a, b: b, rows: rows, cols: cols, rank: r, scale: -s)
    }

    func testPiSSAAndOLoRAMatchPEFT() throws {
        let f = Self.fixture, r = f.rank
        for method in [LoRAInitialization.pissa, .olora] {
            for (name, w) in f.weights {
                let m = try XCTUnwrap(f.cases[method.description]?[name])
                let W = Self.floats(w.f32), rows = w.shape[0], cols = w.shape[1], s = Float(m.scaling)
                var rng = SplitMix64(seed: 1)
                let (a, b, base) = try LoRAInitialization.factors(method, w: W, rows: rows, cols: cols, rank: r, scale: s, rng: &rng)
                let peftA = Self.floats(m.lora_A), peftB = Self.floats(m.lora_B)
                // s·B·A and the residual are sign-free; A and B agree up to a sign per component.
                // PEFT's SVD runs in float32: its singular vectors carry errors of about
                // ε₃₂·σ₁/gap (2e-5 of the product here), qlora's in Float64 far less; QR is stable.
                let tolerance = method == .pissa ? 1e-4 : 1e-5
                XCTAssertLessThan(rel(product(a: a, b: b, rows: rows, cols: cols, rank: r, scale: s),
                                      product(a: peftA, b: peftB, rows: rows, cols: cols, rank: r, scale: s)), tolerance, "\(method) \(name) s·B·A")
                XCTAssertLessThan(Double(zip(base, Self.floats(m.residual)).map { abs($0 - $1) }.max()!) / Double(W.map(abs).max()!),
                                  tolerance / 2, "\(method) \(name) residual")
                for c in 0..<r {
                    let ours = (0..<cols).map { a[c * cols + $0] }, theirs = (0..<cols).map { peftA[c * cols + $0] }
                    let sign: Float = zip(ours, theirs).map { $0 * $1 }.reduce(0, +) < 0 ? -1 : 1
                    XCTAssertLessThan(rel(ours.map { $0 * sign }, theirs), 10 * tolerance, "\(method) \(name) A row \(c)")
                    let oursB = (0..<rows).map { b[$0 * r + c] * sign }, theirsB = (0..<rows).map { peftB[$0 * r + c] }
                    XCTAssertLessThan(rel(oursB, theirsB), 10 * tolerance, "\(method) \(name) B column \(c)")
                }
            }
        }
    }

    /// pissa_niter_K draws its own sketch: its rank-r part approximates W about as well as the exact
    /// SVD's (which no rank-r part beats) and as PEFT's own randomized one.
    func testRandomizedPiSSAApproximatesAsWellAsTheExactOne() throws {
        let f = Self.fixture, r = f.rank
        for (name, w) in f.weights {
            let W = Self.floats(w.f32), rows = w.shape[0], cols = w.shape[1]
            func norm(_ x: [Float]) -> Double { x.reduce(0) { $0 + Double($1) * Double($1) }.squareRoot() }
            var rng = SplitMix64(seed: 5)
            let exact = try LoRAInitialization.factors(.pissa, w: W, rows: rows, cols: cols, rank: r, scale: 2, rng: &rng).base
            let ours = try LoRAInitialization.factors(.pissaNiter(4), w: W, rows: rows, cols: cols, rank: r, scale: 2, rng: &rng).base
            let peft = Self.floats(try XCTUnwrap(f.cases["pissa_niter_4"]?[name]).residual)
            XCTAssertGreaterThanOrEqual(norm(ours), norm(exact) * (1 - 1e-6), name)
            XCTAssertLessThan(norm(ours), norm(exact) * 1.01, name)
            XCTAssertLessThan(norm(ours), norm(peft) * 1.01, name)
            XCTAssertLessThan(norm(exact), norm(W), name)
        }
    }

    func testSVDAndQRAgainstFloat64References() throws {
        var g = SplitMix64(seed: 11)
        let rows = 13, cols = 9, r = 4
        let w = (0..<(rows * cols)).map { _ in g.nextUnitDouble() - 0.5 }
        let (u, sigma, vt) = try LoRAInitialization.svd(w, rows: rows, cols: cols, rank: r)
        let jacobi = Matrix64(rows: rows, cols: cols, values: w).jacobiSVD()
        for c in 0..<r { XCTAssertEqual(sigma[c], jacobi.sigma[c], accuracy: 1e-12 * jacobi.sigma[0]) }
        // u·diag(σ)·vt is the best rank-r part: W minus it has the dropped σ² as its squared norm.
        var residual = 0.0
        for j in 0..<rows {
            for i in 0..<cols {
                let part = (0..<r).reduce(0.0) { $0 + u[j * r + $1] * sigma[$1] * vt[$1 * cols + i] }
                residual += (w[j * cols + i] - part) * (w[j * cols + i] - part)
            }
        }
        XCTAssertEqual(residual, jacobi.sigma[r...].reduce(0) { $0 + $1 * $1 }, accuracy: 1e-12)
        // QR: Q's columns orthonormal, Q·R equals W's first r columns' span part: W[:, :r] = Q·R[:, :r].
        let (q, rTop) = try LoRAInitialization.qr(w, rows: rows, cols: cols, rank: r)
        for c in 0..<r {
            for d in 0..<r {
                let dot = (0..<rows).reduce(0.0) { $0 + q[$1 * r + c] * q[$1 * r + d] }
                XCTAssertEqual(dot, c == d ? 1 : 0, accuracy: 1e-12)
            }
            for i in 0..<c { XCTAssertEqual(rTop[c * cols + i], 0) }
        }
        for j in 0..<rows {
            for i in 0..<r {
                XCTAssertEqual((0..<r).reduce(0.0) { $0 + q[j * r + $1] * rTop[$1 * cols + i] }, w[j * cols + i], accuracy: 1e-12)
            }
        }
    }

    /// LoftQ: the base is what the last quantization was of, s·B·A the best rank-r part of what it
    /// misses, and ‖W − (Q + s·B·A)‖ never grows with the iterations (below plain quantization's).
    func testLoftQAgainstItsDefinition() throws {
        var g = SplitMix64(seed: 21)
        let rows = 48, cols = 128, r = 4, s: Float = 2
        let W = (0..<(rows * cols)).map { _ in Float(g.nextUnitDouble() - 0.5) * (1 + 3 * Float(g.nextUnitDouble() < 0.02 ? 1 : 0)) }
        func quantize(_ v: [Float]) throws -> [Float] {
            try QuantizedMatrix(quantizing: v, rows: rows, cols: cols, format: .nf4, blockSize: 64, doubleQuant: true).dequantize()
        }
        func norm(_ x: [Float]) -> Double { x.reduce(0) { $0 + Double($1) * Double($1) }.squareRoot() }
        let plain = norm(zip(W, try quantize(W)).map { $0 - $1 }) / norm(W)
        var previous = plain
        for iterations in 1...4 {
            var rng = SplitMix64(seed: 1)
            let (a, b, base) = try LoRAInitialization.factors(.loftq, w: W, rows: rows, cols: cols, rank: r, scale: s, loftqIterations: iterations,
                                                              rng: &rng, quantize: quantize)
            let q = try quantize(base)
            if iterations == 1 { XCTAssertEqual(base, W, "one iteration quantizes W itself") }
            let missed = zip(W, q).map { Double($0) - Double($1) }
            let (u, sigma, vt) = try LoRAInitialization.svd(missed, rows: rows, cols: cols, rank: r)
            let best = (0..<(rows * cols)).map { k in Float((0..<r).reduce(0.0) { $0 + u[k / cols * r + $1] * sigma[$1] * vt[$1 * cols + k % cols] }) }
            XCTAssertLessThan(rel(product(a: a, b: b, rows: rows, cols: cols, rank: r, scale: s), best), 1e-5, "iterations \(iterations)")
            let error = norm(zip(W, zip(q, product(a: a, b: b, rows: rows, cols: cols, rank: r, scale: s))).map { $0 - $1.0 - $1.1 }) / norm(W)
            XCTAssertLessThan(error, plain, "iterations \(iterations)")
            XCTAssertLessThanOrEqual(error, previous * (1 + 1e-6), "iterations \(iterations)")
            previous = error
        }
    }

    func testNamesParseAsPEFTWritesThem() throws {
        XCTAssertEqual(try LoRAInitialization(parsing: "true"), .kaiming)
        XCTAssertEqual(try LoRAInitialization(parsing: "gaussian"), .gaussian)
        XCTAssertEqual(try LoRAInitialization(parsing: "pissa_niter_16"), .pissaNiter(16))
        XCTAssertEqual(try LoRAInitialization(parsing: "OLoRA"), .olora)
        XCTAssertThrowsError(try LoRAInitialization(parsing: "pissa_niter_x"))
        XCTAssertThrowsError(try LoRAInitialization(parsing: "eva"))
    }
}

/// `prepare` on the tiny float32 Llama: the new base and adapter it writes load, give back
/// Q + s·B·A as it measured, and start closer to W than plain NF4 for PiSSA and LoftQ.
final class LoRAInitializationPrepareTests: XCTestCase {
    func testPreparedBaseAndAdapterReproduceTheMeasuredApproximation() throws {
        let source = LlamaTrainerTests.fixtures.appendingPathComponent("tiny-llama").path
        let lora = LoRAConfig(rank: 4, alpha: 8, targets: .names(["q_proj", "down_proj"]), useDoRA: true)
        for method in [LoRAInitialization.pissa, .olora, .loftq] {
            let dir = TempDir()
            let p = try LoRAInitialization.prepare(model: source, lora: lora, trainNorms: false, method: method, loftqIterations: 3,
                                                   seed: 1, directory: dir.path)
            XCTAssertEqual(p.errors.count, 4, "\(method)")
            let model = try DecoderModel(path: p.base)
            let (config, _) = try AdapterFiles.config(in: p.adapter)
            XCTAssertTrue(config.useDoRA)
            let adapters = try ModelAdapters(model: model, config: config, seed: 9)
            try AdapterFiles.load(into: adapters, from: p.adapter)
            let raw = try ModelSource(path: source)
            for (l, m, a) in adapters.adapters {
                let name = m.moduleName(layer: l) + ".weight"
                let w = try raw.load(try XCTUnwrap(raw.tensors.first { $0.name == name }))
                let q = model.weights.layers[l].matrix(m)
                let approx = LoRAInitialization.subtractProduct(q.dequantize(), a: a.a.values, b: a.b.values, rows: q.rows, cols: q.cols,
                                                                rank: 4, scale: -a.scale)
                let e = zip(w, approx).reduce(0.0) { $0 + Double($1.0 - $1.1) * Double($1.0 - $1.1) }.squareRoot()
                    / w.reduce(0.0) { $0 + Double($1) * Double($1) }.squareRoot()
                let measured = try XCTUnwrap(p.errors[name])
                XCTAssertEqual(e, measured.initialized, accuracy: 1e-6 * measured.initialized + 1e-9, "\(method) \(name)")
                // DoRA's magnitude is ‖Q + s·B·A‖ per row: the initialized model is Q + s·B·A itself.
                XCTAssertEqual(try a.doraNorm(base: q), a.magnitude!.values, "\(method) \(name)")
                if method != .olora { XCTAssertLessThan(measured.initialized, measured.plain, "\(method) \(name)") }
            }
            print("\(method): ‖W − (Q + s·B·A)‖/‖W‖ \(p.totals.initialized) against plain NF4 \(p.totals.plain)")
        }
    }
}
