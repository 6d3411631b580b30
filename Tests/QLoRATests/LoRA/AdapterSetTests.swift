import Foundation
@testable import QLoRA
import XCTest

/// Several adapters over one base on the tiny NF4 model, with the PEFT-written fixtures of
/// tools/make_peft_adapter_fixtures.py: all linears r 4 (`peft`), q/v of block 0 r 2 with
/// rsLoRA (`layer0`), six linears r 4 (`export`). A stack must act as the merged weights
/// W + Σ s_i·B_i·A_i, forward and backward; switching must reuse the base.
final class AdapterSetTests: XCTestCase {
    static var base: DecoderModel { LlamaTrainerTests.tiny }
    static let peft = AdapterFilesTests.peftAdapter
    static let layer0 = AdapterFilesTests.peftLayer0Adapter
    static let export = AdapterFilesTests.fixture("tiny-llama-export-adapter")

    func set() throws -> AdapterSet {
        let s = AdapterSet(base: Self.base)
        try s.load(Self.peft, name: "peft")
        try s.load(Self.layer0, name: "layer0")
        try s.load(Self.export, name: "export")
        return s
    }

    /// Logits [T, V] of every position of the fixture's sequences.
    func logits(_ m: DecoderModel) throws -> [Float] {
        try AdapterFilesTests.expected.input_ids.flatMap { try m.forward(tokens: $0, logits: .all) }
    }

    static func relativeMaxDiff(_ a: [Double], _ b: [Double]) -> Double {
        precondition(a.count == b.count)
        return zip(a, b).map { abs($0 - $1) }.max()! / max(b.map(abs).max()!, 1e-300)
    }

    // MARK: - Stacked = merged

    /// One linear (block 0, q_proj: all three adapters have it) run with `peft` trained and the
    /// others stacked frozen, against Float64 on the merged weight W + Σ s_i·B_i·A_i:
    /// y = x·W'ᵀ, dx = dy·W', and the trained adapter's dA, dB; the frozen ones get no gradient.
    func testStackedLinearMatchesMergedWeightInFloat64() throws {
        let s = try set()
        let trained = try s.adapters("peft"), frozen = [try s.adapters("layer0"), try s.adapters("export")]
        let stack = try trained.stacking([("layer0", frozen[0]), ("export", frozen[1])])
        let c = Self.base.config, T = 5, w = Self.base.weights.layers[0].matrix(.q)
        let (n, m) = (w.cols, w.rows)
        var rng = SplitMix64(seed: 3)
        let x = FloatBuffer(count: T * n), dy = FloatBuffer(count: T * m)
        for i in 0..<(T * n) { x.base[i] = Float(rng.nextUnitDouble() * 2 - 1) }
        for i in 0..<(T * m) { dy.base[i] = Float(rng.nextUnitDouble() * 2 - 1) }
        let acts = BlockActivations(config: c, tokens: T, keys: T, keepsProbabilities: false, adapters: stack.layers[0])
        let run = LinearRun(w, .q, context: LayerContext(adapters: stack.layers[0], acts: acts, dropoutSeed: nil, order: LinearSpec.llamaBlock))
        XCTAssertEqual(run.frozen.count, 2)
        let y = FloatBuffer(count: T * m), dx = FloatBuffer(count: T * n)
        stack.parameters.forEach { $0.zeroGrad() }
        frozen.forEach { $0.parameters.forEach { $0.zeroGrad() } }
        try run.forward(x, into: y.base, tokens: T)
        try run.backward(dy.base, x: x, into: dx.base, tokens: T, accumulate: false)

        var merged = w.dequantize().map(Double.init)                      // W' [m, n]
        for lora in [trained] + frozen {
            let a = try XCTUnwrap(lora.layers[0].adapters[.q]), r = a.rank, sc = Double(a.scale)
            let A = a.a.values.map(Double.init), B = a.b.values.map(Double.init)
            for i in 0..<m { for j in 0..<n { for k in 0..<r { merged[i * n + j] += sc * B[i * r + k] * A[k * n + j] } } }
        }
        let xd = x.array.map(Double.init), dyd = dy.array.map(Double.init)
        var yRef = [Double](repeating: 0, count: T * m), dxRef = [Double](repeating: 0, count: T * n)
        for t in 0..<T { for i in 0..<m { for j in 0..<n {
            yRef[t * m + i] += xd[t * n + j] * merged[i * n + j]
            dxRef[t * n + j] += dyd[t * m + i] * merged[i * n + j]
        } } }
        let a = try XCTUnwrap(trained.layers[0].adapters[.q]), r = a.rank, sc = Double(a.scale)
        let A = a.a.values.map(Double.init), B = a.b.values.map(Double.init)
        var u = [Double](repeating: 0, count: T * r), g = [Double](repeating: 0, count: T * r)   // x·Aᵀ, s·dy·B
        for t in 0..<T { for k in 0..<r {
            for j in 0..<n { u[t * r + k] += xd[t * n + j] * A[k * n + j] }
            for i in 0..<m { g[t * r + k] += sc * dyd[t * m + i] * B[i * r + k] }
        } }
        var dB = [Double](repeating: 0, count: m * r), dA = [Double](repeating: 0, count: r * n)
        for t in 0..<T { for k in 0..<r {
            for i in 0..<m { dB[i * r + k] += sc * dyd[t * m + i] * u[t * r + k] }
            for j in 0..<n { dA[k * n + j] += g[t * r + k] * xd[t * n + j] }
        } }
        let errors = [
            ("y", Self.relativeMaxDiff(y.array.map(Double.init), yRef)),
            ("dx", Self.relativeMaxDiff(dx.array.map(Double.init), dxRef)),
            ("dA", Self.relativeMaxDiff(a.a.grad.array.map(Double.init), dA)),
            ("dB", Self.relativeMaxDiff(a.b.grad.array.map(Double.init), dB)),
        ]
        for (what, e) in errors { XCTAssertLessThan(e, 1e-5, what) }
        // Without the frozen adapters the output differs by far more than that.
        var single = yRef
        for lora in frozen {
            let f = try XCTUnwrap(lora.layers[0].adapters[.q]), fr = f.rank
            let fA = f.a.values.map(Double.init), fB = f.b.values.map(Double.init)
            for t in 0..<T { for i in 0..<m { for k in 0..<fr {
                let xa = (0..<n).reduce(0.0) { $0 + xd[t * n + $1] * fA[k * n + $1] }
                single[t * m + i] -= Double(f.scale) * fB[i * fr + k] * xa
            } } }
        }
        XCTAssertGreaterThan(Self.relativeMaxDiff(single, yRef), 1e-3, "the frozen adapters hardly change q_proj")
        for lora in frozen { for p in lora.parameters { XCTAssertTrue(p.grad.array.allSatisfy { $0 == 0 }, p.name) } }
    }

    /// The whole model with three adapters stacked gives the logits of one adapter holding the
    /// three concatenated (rank 10, scale 1: the same ΔW in every linear), which goes through
    /// the single-adapter path PEFT's logits check.
    func testStackedModelMatchesConcatenatedAdapter() throws {
        let s = try set()
        let names = ["peft", "layer0", "export"]
        let stacked = try logits(s.model(active: names))
        let concat = try AdapterCombination.combine(names.map { (name: $0, adapters: try s.adapters($0), weight: 1) },
                                                    base: s.base, method: .concat)
        XCTAssertEqual(concat.adapters.config.rank, 10)
        let reference = try logits(DecoderModel(s.base, adapters: concat.adapters))
        let err = Self.relativeMaxDiff(stacked.map(Double.init), reference.map(Double.init))
        XCTAssertLessThan(err, 1e-5)
        for n in names {
            let alone = try logits(s.model(active: [n]))
            XCTAssertGreaterThan(Self.relativeMaxDiff(alone.map(Double.init), reference.map(Double.init)), 100 * err, n)
        }
    }

    // MARK: - Switching

    /// Models handed out in any order give bit for bit the logits of adapters loaded afresh, and
    /// all share the base's 4-bit matrices (the same objects: nothing reloaded or copied).
    func testSwitchingAdaptersIsBitIdenticalToFreshLoadsAndSharesTheBase() throws {
        let s = try set()
        func fresh(_ dirs: [String]) throws -> DecoderModel {
            let f = AdapterSet(base: Self.base)
            let names = try dirs.map { try f.load($0) }
            return try f.model(active: names)
        }
        let order: [([String], [String])] = [
            (["peft"], [Self.peft]), (["layer0"], [Self.layer0]), (["peft", "export"], [Self.peft, Self.export]),
            ([], []), (["peft"], [Self.peft]), (["export", "peft"], [Self.export, Self.peft]), (["layer0"], [Self.layer0]),
        ]
        var seen: [[Float]] = []
        for (names, dirs) in order {
            let m = try s.model(active: names)
            XCTAssertEqual(try logits(m), try logits(fresh(dirs)), "\(names)")
            seen.append(try logits(m))
            for (l, layer) in m.weights.layers.enumerated() {
                for linear in LinearSpec.llamaBlock {
                    XCTAssertTrue(layer.matrix(linear) === s.base.weights.layers[l].matrix(linear), "\(names): block \(l) \(linear) copied")
                }
            }
        }
        XCTAssertEqual(seen[0], seen[4])
        XCTAssertNotEqual(seen[0], seen[1])
        XCTAssertEqual(try logits(s.model(active: [])), try logits(Self.base))
    }

    // MARK: - Refusals

    func testDuplicateNamesUnknownNamesAndRepeatsAreRefused() throws {
        let s = AdapterSet(base: Self.base)
        XCTAssertEqual(try s.load(Self.peft), "tiny-llama-peft-adapter")
        XCTAssertThrowsError(try s.load(Self.peft + "/")) { error in
            XCTAssertEqual(error as? AdapterStackError, .duplicateName("tiny-llama-peft-adapter", first: Self.peft, second: Self.peft + "/"))
            XCTAssertTrue("\(error)".contains("NAME=DIR"), "\(error)")
        }
        XCTAssertEqual(try s.load(Self.peft, name: "again"), "again")
        XCTAssertThrowsError(try s.model(active: ["nope"])) { XCTAssertEqual($0 as? AdapterStackError, .unknownName("nope", loaded: ["tiny-llama-peft-adapter", "again"])) }
        XCTAssertThrowsError(try s.model(active: ["again", "again"])) { XCTAssertEqual($0 as? AdapterStackError, .listedTwice("again")) }
    }

    /// An adapter of another rank than its config says, or for another model, is refused with
    /// the file and the tensor named; one training norms may lead a stack but not follow.
    func testMismatchedAdaptersAndStackedNormsAreRefused() throws {
        let tmp = TempDir(), dir = tmp.path + "/r8"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        var config = try XCTUnwrap(JSONSerialization.jsonObject(
            with: Data(contentsOf: URL(fileURLWithPath: Self.peft + "/" + AdapterFiles.configFile))) as? [String: Any])
        config["r"] = 8
        try JSONSerialization.data(withJSONObject: config).write(to: URL(fileURLWithPath: dir + "/" + AdapterFiles.configFile))
        try FileManager.default.copyItem(atPath: Self.peft + "/" + AdapterFiles.weightsFile, toPath: dir + "/" + AdapterFiles.weightsFile)
        let s = AdapterSet(base: Self.base)
        XCTAssertThrowsError(try s.load(dir)) { error in
            guard case let .wrongRank(path, tensor, found, rank, _) = error as? AdapterError else { return XCTFail("\(error)") }
            XCTAssertEqual(path, dir + "/" + AdapterFiles.weightsFile)
            XCTAssertTrue(tensor.hasPrefix("base_model.model.model.layers.0."), tensor)
            XCTAssertEqual([found, rank], [4, 8])
        }
        XCTAssertEqual(s.names, [])

        let norms = try ModelAdapters(model: Self.base, config: LoRAConfig(rank: 2), trainNorms: true, seed: 1)
        let plain = try ModelAdapters(model: Self.base, config: LoRAConfig(rank: 2), seed: 2)
        XCTAssertNoThrow(try norms.stacking([("plain", plain)]))
        XCTAssertThrowsError(try plain.stacking([("norms", norms)])) { XCTAssertEqual($0 as? AdapterStackError, .trainedNorms(name: "norms")) }
        // The same for a PEFT adapter with norms in modules_to_save, loaded by name.
        let stack = try set()
        try stack.load(AdapterFilesTests.peftNormsAdapter, name: "peft-norms")
        XCTAssertNoThrow(try stack.model(active: ["peft-norms", "layer0"]))
        XCTAssertThrowsError(try stack.model(active: ["layer0", "peft-norms"])) {
            XCTAssertEqual($0 as? AdapterStackError, .trainedNorms(name: "peft-norms"))
            XCTAssertTrue("\($0)".contains("modules_to_save"), "\($0)")
        }
    }

    // MARK: - Training on a stack

    /// Training `peft` with `layer0` and `export` stacked frozen (export reaches block 1, whose
    /// input gradient feeds block 0's adapters): loss and gradients equal those of the
    /// concatenated adapter [peft | layer0 | export] trained whole, restricted to peft's block (A rows as
    /// they are; B columns scaled by peft's s, since the concatenation carries s·B at scale 1).
    func testTrainingWithAFrozenAdapterMatchesTheConcatenatedAdaptersGradients() throws {
        let s = try set()
        let trained = try s.adapters("peft"), layer0 = try s.adapters("layer0"), export = try s.adapters("export")
        let stack = try trained.stacking([("layer0", layer0), ("export", export)])
        let concat = try AdapterCombination.combine([("peft", trained, 1), ("layer0", layer0, 1), ("export", export, 1)],
                                                    base: s.base, method: .concat)
        var rng = SplitMix64(seed: 7)
        let ids = (0..<18).map { _ in Int32(rng.next() % 256) }
        var labels = ids
        for i in [0, 1, 2, 9, 10] { labels[i] = -100 }
        let b = TokenBatch(inputIds: ids, labels: labels, sequences: 2, length: 9)
        func run(_ l: ModelAdapters) throws -> LossSum {
            l.parameters.forEach { $0.zeroGrad() }
            return try Trainer(model: s.base, lora: l, headChunkRows: 5).accumulateGradients(b, gradScale: 1 / Float(b.scoredTokens), dropoutSeed: nil)
        }
        let lossStack = try run(stack), lossConcat = try run(concat.adapters)
        XCTAssertEqual(lossStack.mean, lossConcat.mean, accuracy: 1e-5 * abs(lossConcat.mean))
        let lossAlone = try Trainer(model: s.base, lora: trained).loss(b).mean
        XCTAssertGreaterThan(abs(lossAlone - lossStack.mean), 1e-4, "the frozen adapters hardly change the loss")
        let concatByName = Dictionary(uniqueKeysWithValues: concat.adapters.adapters.map { ($0.linear.moduleName(layer: $0.layer), $0.adapter) })
        var worst = 0.0
        for (l, m, a) in trained.adapters {
            let c = try XCTUnwrap(concatByName[m.moduleName(layer: l)]), r = a.rank, R = c.rank
            let dA = c.a.grad.array[0..<(r * a.inFeatures)].map(Double.init)
            let dB = (0..<a.outFeatures).flatMap { i in (0..<r).map { Double(a.scale) * Double(c.b.grad.array[i * R + $0]) } }
            worst = max(worst, Self.relativeMaxDiff(a.a.grad.array.map(Double.init), dA), Self.relativeMaxDiff(a.b.grad.array.map(Double.init), dB))
        }
        XCTAssertLessThan(worst, 1e-4)
        print("stacked vs concatenated gradients: max relative difference \(worst)")
    }
}
