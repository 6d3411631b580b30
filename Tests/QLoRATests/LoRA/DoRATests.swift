import Foundation
@testable import QLoRA
import Quant
import XCTest

/// DoRA against PEFT (tools/make_dora_fixtures.py → Fixtures/tiny-llama-dora-grads.json and the
/// adapter folder PEFT saved, tiny-llama-peft-dora-adapter) and, for one linear with and without
/// dropout, against a float64 recomputation of PEFT's formula and its central differences.
final class DoRATests: XCTestCase {
    /// The layout of tools/make_lora_fixtures.py's JSON, with DoRA's magnitudes among the
    /// parameters, and the logits and merged weights of the saved case.
    struct Fixture: Decodable {
        typealias Tensor = LoRAGradientFixtureTests.Fixture.Tensor
        typealias LoraConfig = LoRAGradientFixtureTests.Fixture.LoraConfig
        struct Matrix: Decodable {
            let shape: [Int]
            let f32: String
        }
        struct Case: Decodable {
            let name: String
            let lora_config: LoraConfig
            let loss: Double
            let params: [String: Tensor]
            let logits_last: Matrix?
            let merged: [String: Matrix]?
        }
        let input_ids: [[Int32]]
        let labels: [[Int32]]
        let n_counted_tokens: Int
        let cases: [Case]
    }

    static let fixture = try! JSONDecoder().decode(
        Fixture.self, from: Data(contentsOf: LlamaTrainerTests.fixtures.appendingPathComponent("tiny-llama-dora-grads.json")))
    static let peftAdapter = LlamaTrainerTests.fixtures.appendingPathComponent("tiny-llama-peft-dora-adapter").path
    static let prefix = "base_model.model."
    static func floats(_ hex: String) -> [Float] { LoRAGradientFixtureTests.floats(hex) }

    /// The case's adapters on the tiny model with the fixture's values.
    func adapters(_ c: Fixture.Case) throws -> ModelAdapters {
        let model = LlamaTrainerTests.tiny, cfg = c.lora_config
        var lastLayers: Int? = nil
        if let only = cfg.layers_to_transform {
            XCTAssertEqual(only, Array((model.config.numLayers - only.count)..<model.config.numLayers))
            lastLayers = only.count
        }
        let config = LoRAConfig(rank: cfg.r, alpha: Float(cfg.lora_alpha), targets: try LoRATargets(parsing: cfg.target_modules.joined(separator: ",")),
                                lastLayers: lastLayers, useRSLoRA: cfg.use_rslora, useDoRA: true)
        let lora = try ModelAdapters(model: model, config: config, seed: 1)
        let byName = Dictionary(uniqueKeysWithValues: lora.parameters.map { ($0.name, $0) })
        XCTAssertEqual(Set(byName.keys), Set(c.params.keys.map { String($0.dropFirst(Self.prefix.count)) }), c.name)
        for (name, t) in c.params {
            let p = try XCTUnwrap(byName[String(name.dropFirst(Self.prefix.count))], name)
            XCTAssertEqual(p.shape, t.shape, name)
            p.setValues(Self.floats(t.value_f32))
        }
        return lora
    }

    func testGradientsMatchPEFT() throws {
        let f = Self.fixture, T = f.input_ids[0].count
        let batch = TokenBatch(inputIds: f.input_ids.flatMap { $0 }, labels: f.labels.flatMap { $0 }, sequences: f.input_ids.count, length: T)
        XCTAssertEqual(f.cases.count, 2)
        for c in f.cases {
            let lora = try adapters(c)
            XCTAssertTrue(lora.parameters.contains { $0.name.hasSuffix(".lora_magnitude_vector") })
            let trainer = Trainer(model: LlamaTrainerTests.tiny, lora: lora, headChunkRows: 7)
            let loss = try trainer.accumulateGradients(batch, gradScale: 1 / Float(batch.scoredTokens), dropoutSeed: nil)
            XCTAssertEqual(loss.tokens, f.n_counted_tokens)
            XCTAssertEqual(loss.mean, c.loss, accuracy: 2e-6 * c.loss, c.name)
            var worst = 0.0
            for p in lora.parameters {
                let t = try XCTUnwrap(c.params[Self.prefix + p.name])
                let expected = Self.floats(t.grad_f32), got = p.grad.array
                let scale = Double(expected.map(abs).max()!)
                XCTAssertGreaterThan(scale, 0, p.name)
                let err = zip(got, expected).map { Double(abs($0 - $1)) }.max()! / scale
                worst = max(worst, err)
                XCTAssertLessThan(err, 1e-4, "\(c.name) \(p.name)")
            }
            print("\(c.name): loss \(loss.mean) vs PEFT \(c.loss); worst gradient error \(worst) of each tensor's max")
        }
    }

    /// Per-block checkpointing recomputes DoRA's z in the backward: the same gradients, with dropout too.
    func testCheckpointingGivesTheSameGradients() throws {
        let f = Self.fixture, T = f.input_ids[0].count
        let batch = TokenBatch(inputIds: f.input_ids.flatMap { $0 }, labels: f.labels.flatMap { $0 }, sequences: f.input_ids.count, length: T)
        var grads: [[[Float]]] = []
        for checkpointing in [false, true] {
            let lora = try adapters(f.cases[0])
            let dropped = try ModelAdapters(model: LlamaTrainerTests.tiny, config: LoRAConfig(rank: 4, alpha: 8, dropout: 0.2, useDoRA: true), seed: 2)
            for (p, q) in zip(dropped.parameters, lora.parameters) { p.setValues(q.values) }
            for l in [lora, dropped] {
                let trainer = Trainer(model: LlamaTrainerTests.tiny, lora: l, gradientCheckpointing: checkpointing)
                _ = try trainer.accumulateGradients(batch, gradScale: 1 / Float(batch.scoredTokens), dropoutSeed: l === dropped ? 17 : nil)
            }
            grads.append((lora.parameters + dropped.parameters).map(\.grad.array))
        }
        XCTAssertEqual(grads[0], grads[1])
        XCTAssertNotEqual(grads[0][0], grads[0][42], "dropout changes the gradients")
    }

    /// The folder PEFT saved: read as DoRA, the values PEFT had, and PEFT's logits.
    func testPEFTWrittenDoRAAdapterLoadsWithPEFTLogits() throws {
        let c = try XCTUnwrap(Self.fixture.cases.first { $0.name == "dora_all" })
        let (config, norms) = try AdapterFiles.config(in: Self.peftAdapter)
        XCTAssertTrue(config.useDoRA)
        XCTAssertFalse(norms)
        let lora = try ModelAdapters(model: LlamaTrainerTests.tiny, config: config, seed: 0)
        try AdapterFiles.load(into: lora, from: Self.peftAdapter)
        XCTAssertEqual(lora.parameters.count, 42)
        for p in lora.parameters {
            XCTAssertEqual(p.values, Self.floats(try XCTUnwrap(c.params[Self.prefix + p.name]).value_f32), p.name)
        }
        let logits = try XCTUnwrap(c.logits_last)
        let want = Self.floats(logits.f32), V = logits.shape[1]
        let model = DecoderModel(LlamaTrainerTests.tiny, adapters: lora)
        let got = try Self.fixture.input_ids.flatMap { ids in Array(try model.forward(tokens: ids.map(Int.init), logits: .all).suffix(V)) }
        let plain = try Self.fixture.input_ids.flatMap { ids in Array(try LlamaTrainerTests.tiny.forward(tokens: ids.map(Int.init), logits: .all).suffix(V)) }
        let scale = Double(want.map(abs).max()!)
        let err = zip(got, want).map { Double(abs($0 - $1)) }.max()! / scale
        let moved = zip(plain, want).map { Double(abs($0 - $1)) }.max()! / scale
        XCTAssertLessThan(err, 1e-5)
        XCTAssertGreaterThan(moved, 1e-3, "the adapter hardly changes the logits")
        print("DoRA logits: max |qlora − PEFT| / max |PEFT| = \(err) (adapter moves them by \(moved))")
    }

    /// What qlora writes is what PEFT wrote: the same tensor names, use_dora, and it reads back.
    func testSavedAdapterHasPEFTsNamesAndRoundTrips() throws {
        let (config, _) = try AdapterFiles.config(in: Self.peftAdapter)
        let lora = try ModelAdapters(model: LlamaTrainerTests.tiny, config: config, seed: 0)
        try AdapterFiles.load(into: lora, from: Self.peftAdapter)
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("dora-\(UUID().uuidString)").path
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try AdapterFiles.save(lora, to: dir, baseModel: "tiny")
        let ours = Set(try SafetensorsFile(path: dir + "/" + AdapterFiles.weightsFile).tensors.map(\.name))
        let peft = Set(try SafetensorsFile(path: Self.peftAdapter + "/" + AdapterFiles.weightsFile).tensors.map(\.name))
        XCTAssertEqual(ours, peft)
        let (j, _) = try AdapterFiles.configJSON(in: dir)
        XCTAssertEqual(j["use_dora"] as? Bool, true)
        let back = try ModelAdapters(model: LlamaTrainerTests.tiny, config: try AdapterFiles.config(in: dir).config, seed: 5)
        try AdapterFiles.load(into: back, from: dir)
        XCTAssertEqual(back.parameters.map(\.values), lora.parameters.map(\.values))
    }

    /// The merged weight: m_j·(W_j + s·B_j·A)/‖W_j + s·B_j·A‖, as PEFT's merge_and_unload wrote it.
    func testMergeMatchesPEFT() throws {
        let c = try XCTUnwrap(Self.fixture.cases.first { $0.name == "dora_all" })
        let model = try QuantizedModel(path: LlamaTrainerTests.fixtures.appendingPathComponent("tiny-llama-bnb-nf4").path)
        let tensors = try AdapterTensors(directory: Self.peftAdapter, model: model)
        for (name, m) in try XCTUnwrap(c.merged) {
            let w = try XCTUnwrap(model.linears[name + ".weight"]), f = try XCTUnwrap(tensors.factors[name + ".weight"])
            XCTAssertNotNil(f.magnitude)
            var rows = w.dequantize(rows: 0..<w.rows)
            let base = rows
            try f.apply(rows: 0..<w.rows, into: &rows, cols: w.cols)
            let want = Self.floats(m.f32)
            XCTAssertEqual(m.shape, [w.rows, w.cols])
            let scale = Double(want.map(abs).max()!)
            let err = zip(rows, want).map { Double(abs($0 - $1)) }.max()! / scale
            let moved = zip(base, want).map { Double(abs($0 - $1)) }.max()! / scale
            XCTAssertLessThan(err, 2e-6, name)
            XCTAssertGreaterThan(moved, 1e-3, name)
        }
    }

    /// PEFT's formula recomputed in float64 for one linear, n held fixed (detached):
    /// y = x·Wᵀ + (c − 1)⊙x'·Wᵀ + c⊙s·(x'·Aᵀ)·Bᵀ, c = m/n, x' = drop(x).
    struct Reference {
        let w: [Double], n: [Double], out: Int, inF: Int, r: Int, T: Int, s: Double
        let keep: [Double]   // drop(x) = keep ⊙ x (0 or 1/(1 − p); all 1 without dropout)

        func forward(x: [Double], a: [Double], b: [Double], m: [Double]) -> [Double] {
            var y = [Double](repeating: 0, count: T * out)
            for t in 0..<T {
                let xd = (0..<inF).map { x[t * inF + $0] * keep[t * inF + $0] }
                let u = (0..<r).map { k in (0..<inF).reduce(0.0) { $0 + xd[$1] * a[k * inF + $1] } }
                for j in 0..<out {
                    var wx = 0.0, wxd = 0.0
                    for i in 0..<inF { wx += w[j * inF + i] * x[t * inF + i]; wxd += w[j * inF + i] * xd[i] }
                    let lora = s * (0..<r).reduce(0.0) { $0 + u[$1] * b[j * r + $1] }
                    let c = m[j] / n[j]
                    y[t * out + j] = wx + (c - 1) * wxd + c * lora
                }
            }
            return y
        }
    }

    func checkOneLinear(dropout p: Float) throws {
        let out = 24, inF = 64, r = 4, T = 6
        var g = SplitMix64(seed: 42)
        func uniform(_ n: Int, _ scale: Double) -> [Float] { (0..<n).map { _ in Float((g.nextUnitDouble() * 2 - 1) * scale) } }
        let weight = try QuantizedMatrix(quantizing: uniform(out * inF, 0.2), rows: out, cols: inF, format: .nf4, blockSize: 64)
        var rng = SplitMix64(seed: 7)
        let config = LoRAConfig(rank: r, alpha: 8, dropout: p, useDoRA: true)
        let adapter = LoRAAdapter(name: "l", rows: out, cols: inF, config: config, rng: &rng, base: weight)
        adapter.b.setValues(uniform(out * r, 0.1))
        let m0 = try XCTUnwrap(adapter.magnitude).values
        adapter.magnitude!.setValues(zip(m0, uniform(out, 0.1)).map { $0 * (1 + $1) })
        let x = uniform(T * inF, 1), dy = uniform(T * out, 1)
        let seed: UInt64? = p > 0 ? 99 : nil

        // Forward and backward through the same closures LinearRun passes.
        let saved = LoRAAdapter.Saved(tokens: T, rank: r, doraRows: out)
        let baseForward: LoRAAdapter.BaseProduct = { x, y, acc in
            try weight.forward(UnsafeBufferPointer(start: x, count: T * inF), into: UnsafeMutableBufferPointer(start: y, count: T * out),
                               tokens: T, accumulate: acc)
        }
        let baseBackward: LoRAAdapter.BaseProduct = { dy, dx, acc in
            try weight.backward(UnsafeBufferPointer(start: dy, count: T * out), into: UnsafeMutableBufferPointer(start: dx, count: T * inF),
                                tokens: T, accumulate: acc)
        }
        var y = [Float](repeating: 0, count: T * out), dx = [Float](repeating: 0, count: T * inF)
        try x.withUnsafeBufferPointer { x in
            try y.withUnsafeMutableBufferPointer { y in
                try adapter.doraForward(x: x.baseAddress!, y: y.baseAddress!, tokens: T, accumulate: false, saved: saved, dropoutSeed: seed,
                                        base: weight, baseForward: baseForward)
            }
            try dy.withUnsafeBufferPointer { dy in
                try dx.withUnsafeMutableBufferPointer { dx in
                    try adapter.doraBackward(dy: dy.baseAddress!, x: x.baseAddress!, dx: dx.baseAddress!, tokens: T, accumulate: false,
                                             saved: saved, dropoutSeed: seed, baseBackward: baseBackward)
                }
            }
        }

        // The reference: W dequantized, n = ‖W + s·B·A‖ in float64, the same dropout mask.
        let w = weight.dequantize().map(Double.init)
        let a64 = adapter.a.values.map(Double.init), b64 = adapter.b.values.map(Double.init), m64 = adapter.magnitude!.values.map(Double.init)
        let s = Double(adapter.scale)
        let n = (0..<out).map { j in
            (0..<inF).reduce(0.0) { acc, i in
                let v = w[j * inF + i] + s * (0..<r).reduce(0.0) { $0 + b64[j * r + $1] * a64[$1 * inF + i] }
                return acc + v * v
            }.squareRoot()
        }
        var keep = [Float](repeating: 1, count: T * inF)
        if let seed {
            let ones = [Float](repeating: 1, count: T * inF)
            keep.withUnsafeMutableBufferPointer { k in
                LoRAAdapter.applyDropout(into: k.baseAddress!, from: ones, count: T * inF, p: p, seed: seed)
            }
            XCTAssertTrue(keep.contains(0) && keep.contains { $0 > 1 }, "the mask drops some and scales the rest")
        }
        let ref = Reference(w: w, n: n, out: out, inF: inF, r: r, T: T, s: s, keep: keep.map(Double.init))
        let dy64 = dy.map(Double.init), x64 = x.map(Double.init)
        XCTAssertEqual(zip(try adapter.doraNorm(base: weight), n).map { abs(Double($0) - $1) / $1 }.max()!, 0, accuracy: 1e-6, "n")
        let yRef = ref.forward(x: x64, a: a64, b: b64, m: m64)
        func rel(_ got: [Float], _ want: [Double]) -> Double {
            zip(got, want).map { abs(Double($0) - $1) }.max()! / want.map(abs).max()!
        }
        XCTAssertLessThan(rel(y, yRef), 1e-5, "forward, dropout \(p)")
        func fd(_ at: [Double], _ f: ([Double]) -> [Double]) -> [Double] {
            at.indices.map { i in
                var plus = at, minus = at
                plus[i] += 1e-5
                minus[i] -= 1e-5
                return zip(dy64, zip(f(plus), f(minus))).reduce(0.0) { $0 + $1.0 * ($1.1.0 - $1.1.1) } / 2e-5
            }
        }
        XCTAssertLessThan(rel(dx, fd(x64) { ref.forward(x: $0, a: a64, b: b64, m: m64) }), 1e-4, "dx, dropout \(p)")
        XCTAssertLessThan(rel(adapter.a.grad.array, fd(a64) { ref.forward(x: x64, a: $0, b: b64, m: m64) }), 1e-4, "dA, dropout \(p)")
        XCTAssertLessThan(rel(adapter.b.grad.array, fd(b64) { ref.forward(x: x64, a: a64, b: $0, m: m64) }), 1e-4, "dB, dropout \(p)")
        XCTAssertLessThan(rel(adapter.magnitude!.grad.array, fd(m64) { ref.forward(x: x64, a: a64, b: b64, m: $0) }), 1e-4, "dm, dropout \(p)")
    }

    func testOneLinearAgainstFloat64WithoutDropout() throws { try checkOneLinear(dropout: 0) }
    func testOneLinearAgainstFloat64WithDropout() throws { try checkOneLinear(dropout: 0.3) }

    /// A DoRA adapter's norm follows A and B: changing B recomputes it (no stale cache).
    func testNormFollowsTheFactors() throws {
        var g = SplitMix64(seed: 3)
        let weight = try QuantizedMatrix(quantizing: (0..<(16 * 64)).map { _ in Float(g.nextUnitDouble() - 0.5) }, rows: 16, cols: 64,
                                         format: .nf4, blockSize: 64)
        var rng = SplitMix64(seed: 1)
        let adapter = LoRAAdapter(name: "l", rows: 16, cols: 64, config: LoRAConfig(rank: 2, alpha: 4, useDoRA: true), rng: &rng, base: weight)
        let n0 = try adapter.doraNorm(base: weight)
        XCTAssertEqual(n0, adapter.magnitude!.values, "B = 0: n = ‖W‖ = the initial magnitude")
        adapter.b.value.base[5] = 0.5
        let n1 = try adapter.doraNorm(base: weight)
        XCTAssertNotEqual(n1[2], n0[2], "row 2 holds B's changed value")
        XCTAssertEqual(n1[0], n0[0])
    }

    /// A fresh DoRA adapter (B = 0, m = ‖W_j‖) leaves the model as it is, as PEFT's does.
    func testFreshDoRAAdapterLeavesTheModelUnchanged() throws {
        let base = LlamaTrainerTests.tiny
        let lora = try ModelAdapters(model: base, config: LoRAConfig(rank: 4, alpha: 8, targets: .allLinear, useDoRA: true), seed: 3)
        let ids = Self.fixture.input_ids[0].map(Int.init)
        let plain = try base.forward(tokens: ids, logits: .all), adapted = try DecoderModel(base, adapters: lora).forward(tokens: ids, logits: .all)
        let scale = plain.map(abs).max()!
        XCTAssertLessThan(zip(plain, adapted).map { abs($0 - $1) }.max()! / scale, 1e-6)
    }

    /// DoRA adapters are refused where they have no meaning: stacked frozen, combined, as a llama.cpp LoRA.
    func testRefusedWhereItCannotApply() throws {
        let (config, _) = try AdapterFiles.config(in: Self.peftAdapter)
        let dora = try ModelAdapters(model: LlamaTrainerTests.tiny, config: config, seed: 0)
        let plain = try ModelAdapters(model: LlamaTrainerTests.tiny, config: LoRAConfig(rank: 2), seed: 0)
        XCTAssertThrowsError(try plain.stacking([("d", dora)])) { XCTAssertEqual($0 as? AdapterStackError, .dora(name: "d")) }
        XCTAssertThrowsError(try AdapterCombination.combine([("d", dora, 1)], base: LlamaTrainerTests.tiny, method: .concat)) {
            XCTAssertEqual($0 as? AdapterCombinationError, .dora(name: "d"))
        }
        XCTAssertNoThrow(try dora.stacking([("p", plain)]), "a DoRA adapter may train on top of plain ones")
    }
}
