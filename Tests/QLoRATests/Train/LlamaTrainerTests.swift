import Foundation
@testable import QLoRA
import Quant
import XCTest

/// The whole model's training forward and backward with LoRA, on the tiny NF4 Llama fixture
/// (2 layers, hidden 64, 4/2 heads, vocab 256): finite differences, gradient checkpointing,
/// and the batched training forward against the inference forward.
final class LlamaTrainerTests: XCTestCase {
    static let fixtures = Bundle.module.url(forResource: "Fixtures", withExtension: nil)!
    static let tiny: DecoderModel = try! DecoderModel(path: fixtures.appendingPathComponent("tiny-llama-bnb-nf4").path)

    /// A batch of two sequences of 9 tokens, some labels masked.
    func batch(seed: UInt64 = 7) -> TokenBatch {
        var rng = SplitMix64(seed: seed)
        let ids = (0..<18).map { _ in Int32(rng.next() % 256) }
        var labels = ids
        for i in [0, 1, 2, 9, 10, 11, 12, 16] { labels[i] = -100 }
        return TokenBatch(inputIds: ids, labels: labels, sequences: 2, length: 9)
    }

    /// LoRA on every linear, r 4, with B drawn at random (PEFT's zero B would leave dA = 0).
    func lora(trainNorms: Bool = false, dropout: Float = 0, targets: LoRATargets = .attentionAndMLP,
              rslora: Bool = false) throws -> ModelAdapters {
        let l = try ModelAdapters(model: Self.tiny, config: LoRAConfig(rank: 4, alpha: 8, dropout: dropout, targets: targets,
                                                                   useRSLoRA: rslora),
                              trainNorms: trainNorms, seed: 11)
        var rng = SplitMix64(seed: 99)
        for p in l.parameters where p.name.hasSuffix("lora_B.weight") {
            p.setValues((0..<p.count).map { _ in Float(rng.nextUnitDouble() - 0.5) * 0.2 })
        }
        return l
    }

    func gradients(_ l: ModelAdapters, checkpointing: Bool = false, dropoutSeed: UInt64? = nil) throws -> (LossSum, [[Float]]) {
        l.parameters.forEach { $0.zeroGrad() }
        let trainer = Trainer(model: Self.tiny, lora: l, gradientCheckpointing: checkpointing, headChunkRows: 5)
        let b = batch()
        let loss = try trainer.accumulateGradients(b, gradScale: 1 / Float(b.scoredTokens), dropoutSeed: dropoutSeed)
        return (loss, l.parameters.map { $0.grad.array })
    }

    /// Central differences of the mean loss on a sample of coordinates of every parameter.
    func checkFiniteDifferences(_ l: ModelAdapters, dropoutSeed: UInt64? = nil, file: StaticString = #filePath,
                                line: UInt = #line) throws {
        let (_, grads) = try gradients(l, dropoutSeed: dropoutSeed)
        let trainer = Trainer(model: Self.tiny, lora: l)
        let b = batch()
        func meanLoss() throws -> Double {
            if dropoutSeed != nil {
                // The loss with the same dropout masks: a gradient pass whose grads are discarded.
                let saved = l.parameters.map { $0.grad.array }
                let s = try trainer.accumulateGradients(b, gradScale: 0, dropoutSeed: dropoutSeed).mean
                for (p, g) in zip(l.parameters, saved) { g.withUnsafeBufferPointer { p.grad.base.update(from: $0.baseAddress!, count: p.count) } }
                return s
            }
            return try trainer.loss(b).mean
        }
        var rng = SplitMix64(seed: 5)
        var checked = 0, worst = 0.0
        for (pi, p) in l.parameters.enumerated() {
            for _ in 0..<3 {
                let i = Int(rng.next() % UInt64(p.count))
                let v = p.value.base[i], h: Float = 2e-3 * max(1, abs(v))
                p.value.base[i] = v + h
                let up = try meanLoss()
                p.value.base[i] = v - h
                let down = try meanLoss()
                p.value.base[i] = v
                let numeric = (up - down) / (2 * Double(h)), analytic = Double(grads[pi][i])
                let err = abs(numeric - analytic) / max(1e-3, abs(numeric))
                worst = max(worst, err)
                XCTAssertEqual(analytic, numeric, accuracy: 2e-2 * max(1e-3, abs(numeric)) + 2e-5,
                               "\(p.name)[\(i)]", file: file, line: line)
                checked += 1
            }
        }
        XCTAssertGreaterThan(checked, 20, file: file, line: line)
    }

    func testFiniteDifferencesLoRAOnEveryLinear() throws {
        try checkFiniteDifferences(try lora())
    }

    func testFiniteDifferencesWithTrainableNormsAndRSLoRA() throws {
        try checkFiniteDifferences(try lora(trainNorms: true, rslora: true))
    }

    func testFiniteDifferencesWithDropout() throws {
        try checkFiniteDifferences(try lora(dropout: 0.2, targets: .names(["q_proj", "v_proj", "down_proj"])), dropoutSeed: 1234)
    }

    /// Recomputing each block in the backward gives the very same gradients.
    func testGradientCheckpointingGivesIdenticalGradients() throws {
        let l = try lora(trainNorms: true, dropout: 0.1)
        let (lossA, a) = try gradients(l, checkpointing: false, dropoutSeed: 42)
        let (lossB, b) = try gradients(l, checkpointing: true, dropoutSeed: 42)
        XCTAssertEqual(lossA, lossB)
        XCTAssertEqual(a, b)
        XCTAssertTrue(a.contains { g in g.contains { $0 != 0 } })
    }

    /// Adapters only in the last block (--lora-layers 1), so block 0 has none: evaluation and
    /// checkpointed training share one set of activations sized for every adapted linear, and
    /// give the gradients of the unshared path.
    func testAdaptersOutsideBlockZeroWithSharedActivations() throws {
        let l = try ModelAdapters(model: Self.tiny, config: LoRAConfig(rank: 4, alpha: 8, targets: .names(["q_proj", "down_proj"]), lastLayers: 1),
                              seed: 3)
        var rng = SplitMix64(seed: 5)
        for p in l.parameters where p.name.hasSuffix("lora_B.weight") {
            p.setValues((0..<p.count).map { _ in Float(rng.nextUnitDouble() - 0.5) * 0.2 })
        }
        XCTAssertTrue(l.layers[0].adapters.isEmpty)
        let (lossA, a) = try gradients(l, checkpointing: false)
        let (lossB, b) = try gradients(l, checkpointing: true)
        XCTAssertEqual(lossA, lossB)
        XCTAssertEqual(a, b)
        let b0 = batch()
        XCTAssertEqual(try Trainer(model: Self.tiny, lora: l, headChunkRows: 5).loss(b0).sum, lossA.sum, accuracy: 1e-9 * lossA.sum)
    }

    /// The batched training loss equals cross-entropy recomputed in float64 from the inference
    /// forward's logits, sequence by sequence, and zero-initialized B leaves it unchanged.
    func testBatchedLossMatchesInferenceForward() throws {
        let l = try ModelAdapters(model: Self.tiny, config: LoRAConfig(rank: 4, alpha: 8), seed: 3)
        let b = batch()
        let loss = try Trainer(model: Self.tiny, lora: l).loss(b)
        var sum = 0.0, count = 0
        let targets = b.shiftedTargets, V = Self.tiny.config.vocabSize
        for s in 0..<b.sequences {
            let ids = b.inputIds[(s * b.length)..<((s + 1) * b.length)].map(Int.init)
            let logits = try Self.tiny.forward(tokens: ids, logits: .all)
            for t in 0..<b.length where targets[s * b.length + t] != -100 {
                let row = logits[(t * V)..<((t + 1) * V)].map(Double.init)
                let m = row.max()!
                let lse = m + log(row.reduce(0) { $0 + exp($1 - m) })
                sum += lse - row[Int(targets[s * b.length + t])]
                count += 1
            }
        }
        XCTAssertEqual(loss.tokens, count)
        XCTAssertEqual(loss.tokens, 6 + 4)   // targets t = 2…7 of row 0; t = 0, 4, 5, 6 of row 1
        XCTAssertEqual(loss.sum, sum, accuracy: 1e-4 * abs(sum))
    }

    func testTrainableParameterSummaryAsPEFTPrintsIt() throws {
        let l = try ModelAdapters(model: Self.tiny, config: LoRAConfig(rank: 4, alpha: 8), seed: 3)
        let c = Self.tiny.config
        // Per layer: q 64→64, k 64→32, v 64→32, o 64→64, gate/up 64→320, down 320→64.
        let perLayer = 4 * (64 + 64) + 4 * (64 + 32) * 2 + 4 * (64 + 64) + 4 * (64 + 320) * 2 + 4 * (320 + 64)
        XCTAssertEqual(l.trainableCount, c.numLayers * perLayer)
        let line = l.summaryLine(baseCount: Self.tiny.parameterCount)
        XCTAssertTrue(line.hasPrefix("trainable params: \(ModelAdapters.grouped(l.trainableCount)) || all params: "), line)
        XCTAssertEqual(ModelAdapters.grouped(1234567), "1,234,567")
        XCTAssertEqual(ModelAdapters.grouped(999), "999")
        // PEFT's init: A uniform within ±1/√in, B zero.
        for (_, m, a) in l.adapters {
            let bound = Float(1 / Double(a.inFeatures).squareRoot())
            XCTAssertTrue(a.a.values.allSatisfy { abs($0) <= bound }, "\(m)")
            XCTAssertGreaterThan(a.a.values.map(abs).max()!, bound * 0.8)
            XCTAssertTrue(a.b.values.allSatisfy { $0 == 0 })
        }
    }

    func testLabelsOutsideTheVocabularyAreRefused() throws {
        var b = batch()
        b.labels[5] = 256
        let trainer = Trainer(model: Self.tiny, lora: try lora())
        XCTAssertThrowsError(try trainer.loss(b)) {
            XCTAssertEqual($0 as? ModelError, .labelOutOfRange(label: 256, position: 5, vocab: 256))
        }
    }

    func testTargetsParseAsPEFTNamesThem() throws {
        XCTAssertEqual(try LoRATargets(parsing: "q_proj, v_proj"), .names(["q_proj", "v_proj"]))
        XCTAssertEqual(try LoRATargets(parsing: "attn_q,ffn_down"), .names(["q_proj", "down_proj"]))
        XCTAssertEqual(try LoRATargets(parsing: "all-linear"), .allLinear)
        XCTAssertThrowsError(try LoRATargets(parsing: "qproj"))
        let re = try LoRATargets(parsing: "re:.*\\.1\\.self_attn\\.(q|v)_proj")
        XCTAssertTrue(re.matches(.q, layer: 1))
        XCTAssertFalse(re.matches(.q, layer: 0))
        XCTAssertFalse(re.matches(.k, layer: 1))
        let last = try ModelAdapters(model: Self.tiny, config: LoRAConfig(rank: 2, targets: .names(["q_proj"]), lastLayers: 1), seed: 1)
        XCTAssertEqual(last.adapters.map(\.layer), [1])
        XCTAssertThrowsError(try ModelAdapters(model: Self.tiny, config: LoRAConfig(rank: 2, targets: .regex("nothing")), seed: 1))
    }
}

/// The training step with the frozen GEMMs in bf16 (AVX512-BF16) against the same step in fp32,
/// on the tiny NF4 Llama: the loss and every parameter's gradient agree within a few bf16
/// roundings. Each frozen product carries a relative error up to about 2·2⁻⁸ of Σ|x||w|
/// (Tests/QuantTests/BF16GEMMTests.swift derives it); a gradient passes through a handful of
/// them (two blocks, forward and backward), so the bound is 8·2⁻⁸ ≈ 3% of its norm.
final class BF16TrainerTests: XCTestCase {
    /// Without dropout the bf16 step computes LoRA's x·Aᵀ and scale·dY·B beside the frozen
    /// products (from their rounded inputs); with dropout only the second: both within the bound.
    func testBF16StepMatchesFP32WithinItsRounding() throws {
        guard ComputeRuntime.bf16Available else {
            throw XCTSkip("this CPU has no AVX512-BF16 (\((try? RuntimeReport.current().cpu) ?? "unknown")): the bf16 step is not run")
        }
        let tiny = LlamaTrainerTests.tiny
        defer { tiny.computeDType = .fp32 }  // the trainer sets the shared model's dtype
        let l = try ModelAdapters(model: tiny, config: LoRAConfig(rank: 4, alpha: 8, dropout: 0.1), trainNorms: true, seed: 11)
        var rng = SplitMix64(seed: 99)
        for p in l.parameters where p.name.hasSuffix("lora_B.weight") {
            p.setValues((0..<p.count).map { _ in Float(rng.nextUnitDouble() - 0.5) * 0.2 })
        }
        let batch = LlamaTrainerTests(name: "batch") { _ in }.batch()
        var worst = 0.0
        for dropoutSeed in [nil, UInt64(7)] {
            func step(_ dtype: ComputeDType) throws -> (Double, [[Float]]) {
                let trainer = Trainer(model: tiny, lora: l)
                trainer.computeDType = dtype
                l.parameters.forEach { $0.zeroGrad() }
                let loss = try trainer.accumulateGradients(batch, gradScale: 1 / Float(batch.scoredTokens), dropoutSeed: dropoutSeed)
                return (loss.mean, l.parameters.map { $0.grad.array })
            }
            let (loss32, grads32) = try step(.fp32)
            let (loss16, grads16) = try step(.bf16)
            XCTAssertNotEqual(loss16, loss32, "bf16 rounding shows")
            XCTAssertEqual(loss16, loss32, accuracy: 8 * 0x1p-8 * abs(loss32))
            for (p, (a, b)) in zip(l.parameters, zip(grads32, grads16)) {
                let norm = sqrt(a.reduce(0.0) { $0 + Double($1) * Double($1) })
                let diff = sqrt(zip(a, b).reduce(0.0) { $0 + Double($1.0 - $1.1) * Double($1.0 - $1.1) })
                guard norm > 0 else { continue }
                worst = max(worst, diff / norm)
                XCTAssertLessThan(diff, 8 * 0x1p-8 * norm, "\(p.name), dropout seed \(String(describing: dropoutSeed))")
            }
        }
        print("bf16 step (dropout off and on): worst relative gradient difference \(worst)")
    }
}
