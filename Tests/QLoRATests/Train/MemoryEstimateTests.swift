import Foundation
@testable import QLoRA
import Quant
import XCTest

/// The memory estimate against what a training step really allocates.
final class MemoryEstimateTests: XCTestCase {
    /// Activations + logits of the estimate cover the trainer's step arena, within 15%, with and
    /// without checkpointing, with and without dropout, LoRA and DoRA (whose z [N, out] the arena keeps).
    func testActivationEstimateMatchesTheStepArena() throws {
        let model = LlamaTrainerTests.tiny
        for (checkpointing, dropout, dora) in [(false, Float(0), false), (true, 0, false), (false, 0.1, false), (true, 0.1, false),
                                               (false, 0.1, true), (true, 0, true)] {
            let config = LoRAConfig(rank: 8, alpha: 16, dropout: dropout, useDoRA: dora)
            let lora = try ModelAdapters(model: model, config: config, seed: 1)
            let trainer = Trainer(model: model, lora: lora, gradientCheckpointing: checkpointing)
            var rng = SplitMix64(seed: 3)
            let ids = (0..<(8 * 64)).map { _ in Int32(rng.next() % 256) }
            // Twice: the arena's first step maps 4 MiB chunks, the next one chunk of what the first asked for.
            for _ in 0..<2 {
                _ = try trainer.accumulateGradients(TokenBatch(inputIds: ids, labels: ids, sequences: 8, length: 64), gradScale: 1,
                                                    dropoutSeed: dropout > 0 ? 5 : nil)
            }
            let e = MemoryEstimate(config: model.config, frozenBytes: model.frozenBytes, lora: config, trainNorms: false,
                                   sequences: 8, length: 64, gradientCheckpointing: checkpointing, ema: true)
            let estimated = Double(e.activationBytes + e.logitsBytes), actual = Double(trainer.stepBufferBytes)
            XCTAssertEqual(estimated / actual, 1, accuracy: 0.15, "checkpointing \(checkpointing), dropout \(dropout), DoRA \(dora): "
                           + "estimate \(estimated), arena \(actual)")
            XCTAssertEqual(e.adapterBytes, lora.trainableCount * 4)
            XCTAssertEqual(e.optimizerBytes, 2 * e.adapterBytes)
            XCTAssertEqual(e.totalBytes, e.frozenWeightsBytes + e.adapterBytes + e.gradientBytes + e.optimizerBytes + e.emaBytes
                           + e.activationBytes + e.logitsBytes + e.bufferBytes)
        }
    }

    /// bf16 adds the calling thread's rounded input: two k slices of at most 768 columns (the
    /// bf16 kernel's KC), bf16, rows rounded up to its 8, for the most rows a product has (the
    /// step's N; a head chunk has fewer).
    func testBF16CountsTheRoundedInputPanel() throws {
        let model = LlamaTrainerTests.tiny, c = model.config, lora = LoRAConfig(rank: 4, alpha: 8)
        for (B, T) in [(2, 16), (64, 512)] {
            func estimate(_ dtype: ComputeDType) -> MemoryEstimate {
                MemoryEstimate(config: c, frozenBytes: model.frozenBytes, lora: lora, trainNorms: false, sequences: B, length: T,
                               gradientCheckpointing: false, ema: false, computeDType: dtype)
            }
            let (fp32, bf16) = (estimate(.fp32), estimate(.bf16))
            let panel = 2 * 2 * ((B * T + 7) / 8 * 8) * 768
            XCTAssertEqual(bf16.bufferBytes - fp32.bufferBytes, panel, "batch \(B) × \(T)")
            XCTAssertEqual(bf16.totalBytes - fp32.totalBytes, panel)
        }
    }

    /// The head's chunk of logits by default: 48 MiB of rows, multiples of 64, 128 to 512 rows;
    /// the backward's gradient buffers reuse its memory, so the estimate counts only what the
    /// head holds beyond them.
    func testHeadChunkFollowsTheVocabularyAndSharesTheBackwardsMemory() throws {
        XCTAssertEqual(LMHead.defaultChunkRows(vocab: 49_152), 256)    // SmolLM2
        XCTAssertEqual(LMHead.defaultChunkRows(vocab: 262_144), 128)   // Gemma 3: the floor
        XCTAssertEqual(LMHead.defaultChunkRows(vocab: 32_000), 384)    // Llama 2
        XCTAssertEqual(LMHead.defaultChunkRows(vocab: 256), 512)       // the ceiling
        let model = LlamaTrainerTests.tiny, c = model.config
        func estimate(rows: Int?) -> MemoryEstimate {
            MemoryEstimate(config: c, frozenBytes: 0, lora: LoRAConfig(rank: 4, alpha: 8), trainNorms: false, sequences: 8, length: 64,
                           gradientCheckpointing: false, ema: false, headChunkRows: rows)
        }
        let N = 8 * 64, C = c.hiddenSize, qDim = c.numHeads * c.headDim, kvDim = c.numKVHeads * c.headDim
        let afterHead = N * (2 * C + 2 * qDim + 2 * kvDim + 3 * c.intermediateSize) + N * C
        for rows in [1, 64, 512] {
            let head = rows * c.vocabSize + 2 * N * C + N
            XCTAssertEqual(estimate(rows: rows).logitsBytes, 4 * max(0, head - afterHead), "\(rows) rows")
        }
        XCTAssertEqual(estimate(rows: nil).logitsBytes, estimate(rows: 512).logitsBytes)
    }

    /// A run that starts from `--load-lora-from` trains that directory's adapters: the estimate
    /// counts its rank, targets, layers and norms, not the lora_* flags it ignores.
    func testEstimateOfALoadedAdapterCountsItsOwnConfiguration() throws {
        let model = LlamaTrainerTests.tiny
        let dir = TempDir()
        let saved = LoRAConfig(rank: 2, alpha: 4, targets: .names(["q_proj", "v_proj"]), lastLayers: 1)
        let lora = try ModelAdapters(model: model, config: saved, trainNorms: true, seed: 1)
        try AdapterFiles.save(lora, to: dir.path + "/adapter", baseModel: "tiny")
        var config = TrainingConfig(model: "tiny", data: "synthetic")
        config.loraR = 16
        config.loadLoraFrom = dir.path + "/adapter"
        let (trained, trainsNorms) = try config.trainedLoRA
        XCTAssertEqual(trained.rank, 2)
        XCTAssertTrue(trainsNorms)
        let e = MemoryEstimate(config: model.config, frozenBytes: model.frozenBytes, lora: trained, trainNorms: trainsNorms,
                               sequences: 2, length: 16, gradientCheckpointing: false, ema: true)
        XCTAssertEqual(e.adapterBytes, lora.trainableCount * 4)
        config.loadLoraFrom = nil
        XCTAssertEqual(try config.trainedLoRA.config, try config.lora)
        XCTAssertEqual(try config.trainedLoRA.config.rank, 16)
    }

    /// Synthetic shapes: the frozen bytes computed without building equal what is built.
    func testSyntheticFrozenBytesWithoutBuilding() throws {
        let model = try SyntheticModel.make(.llama1b, layers: 1)
        XCTAssertEqual(model.config.numLayers, 1)
        XCTAssertEqual(Double(try SyntheticShape.llama1b.frozenBytes(layers: 1)) / Double(model.frozenBytes), 1, accuracy: 0.002)
        let q = model.weights.layers[0].matrix(.q)
        XCTAssertEqual(q.format, .nf4)
        XCTAssertEqual(q.rows, 2048)
        let values = q.dequantize(rows: 0..<4)
        let std = (values.reduce(0) { $0 + Double($1 * $1) } / Double(values.count)).squareRoot()
        XCTAssertEqual(std, 0.02, accuracy: 0.003)
    }

    func testLayersOutsideTheShapeAreRefused() {
        XCTAssertThrowsError(try SyntheticShape.llama7b.config(layers: 33)) {
            XCTAssertEqual("\($0)", "--layers 33: llama-7b has 32 blocks (1…32)")
        }
        XCTAssertThrowsError(try SyntheticModel.make(.llama1b, layers: 0))
        XCTAssertEqual(try SyntheticShape.llama7b.config(layers: 2).numLayers, 2)
    }

    /// A 70B-shaped run on a 32 GiB machine does not fit (its 4-bit weights alone take more),
    /// and on a 1 TiB one it does, whatever memory the machine running the test has.
    func testRefusesWhatDoesNotFit() throws {
        func estimate(available: Int) throws -> MemoryEstimate {
            MemoryEstimate(config: SyntheticShape.llama70b.config, frozenBytes: try SyntheticShape.llama70b.frozenBytes(),
                           lora: LoRAConfig(rank: 16), trainNorms: false, sequences: 1, length: 512,
                           gradientCheckpointing: true, ema: false, availableBytes: available)
        }
        let small = try estimate(available: 32 << 30)
        XCTAssertGreaterThan(small.frozenWeightsBytes, 30 << 30)
        XCTAssertEqual(small.availableBytes, 32 << 30)
        XCTAssertFalse(small.fits)
        XCTAssertTrue(small.advice(gradientCheckpointing: true).contains("smaller model"))
        let large = try estimate(available: 1 << 40)
        XCTAssertTrue(large.fits)
        XCTAssertFalse(large.advice(gradientCheckpointing: true).contains("smaller model"))
    }
}
