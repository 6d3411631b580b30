import Foundation
@testable import QLoRA
import XCTest

/// What data parallelism rests on, without MPI: a global batch cut into rank shards
/// (`TokenBatch.shard`), each shard's gradients taken with the global batch's normalizer, and
/// the shards' gradients and losses summed, give the whole batch's gradients and loss (to
/// fp32 rounding) — for the causal LM (rows of different lengths, so shards cut their padding)
/// and for DPO (whole pairs, with their margins and reference log-probabilities).
final class DataParallelShardTests: XCTestCase {
    var tiny: DecoderModel { LlamaTrainerTests.tiny }

    func lora() throws -> ModelAdapters {
        let l = try ModelAdapters(model: tiny, config: LoRAConfig(rank: 4, alpha: 8), trainNorms: true, seed: 5)
        var rng = SplitMix64(seed: 17)
        for p in l.parameters where p.name.hasSuffix("lora_B.weight") {
            p.setValues((0..<p.count).map { _ in Float(rng.nextUnitDouble() - 0.5) * 0.2 })
        }
        return l
    }

    /// Five rows of lengths 9, 4, 7, 2, 6, padded to 9 (pad id 0, labels −100), some labels masked.
    func sftBatch() -> TokenBatch {
        var rng = SplitMix64(seed: 3)
        let lengths = [9, 4, 7, 2, 6], T = 9
        var ids = [Int32](repeating: 0, count: 5 * T), labels = [Int32](repeating: -100, count: 5 * T)
        for (b, n) in lengths.enumerated() {
            for t in 0..<n {
                ids[b * T + t] = Int32(1 + rng.next() % 255)
                labels[b * T + t] = t == 1 ? -100 : ids[b * T + t]
            }
        }
        return TokenBatch(inputIds: ids, labels: labels, sequences: 5, length: T, lengths: lengths)
    }

    func testShardsCoverTheBatchInOrderAndCutPadding() {
        let batch = sftBatch()
        for ranks in 1...6 {
            let shards = (0..<ranks).map { batch.shard(rank: $0, of: ranks) }
            XCTAssertEqual(shards.compactMap { $0?.sequences }.reduce(0, +), 5, "\(ranks) ranks")
            XCTAssertEqual(shards.compactMap { $0?.scoredTokens }.reduce(0, +), batch.scoredTokens)
            XCTAssertEqual(shards.compactMap { $0?.lengths }.flatMap { $0 }, batch.lengths)
            XCTAssertEqual(shards.filter { $0 == nil }.count, max(0, ranks - 5))
            for s in shards.compactMap({ $0 }) { XCTAssertEqual(s.length, s.lengths.max()) }
        }
        // 2 ranks: rows 0–1 (T 9) and rows 2–4 (T 7); rank 1's rows are the batch's rows cut to 7.
        let second = batch.shard(rank: 1, of: 2)!
        XCTAssertEqual(second.length, 7)
        XCTAssertEqual(Array(second.inputIds[0..<7]), Array(batch.inputIds[18..<25]))
        XCTAssertEqual(Array(second.labels[14..<21]), Array(batch.labels[36..<43]))
    }

    /// Gradients of every parameter and the loss, accumulated over `parts` with `normalizer`.
    func gradients(_ parts: [TokenBatch], normalizer: Int, objective: (any TrainingObjective)? = nil) throws -> ([[Float]], Double) {
        let l = try lora()
        let trainer = Trainer(model: tiny, lora: l, objective: objective)
        l.parameters.forEach { $0.zeroGrad() }
        var loss = LossSum()
        for part in parts { loss = loss + (try trainer.accumulateGradients(part, gradScale: 1 / Float(normalizer), dropoutSeed: nil)) }
        return (l.parameters.map { $0.grad.array }, loss.sum / Double(normalizer))
    }

    func assertClose(_ a: ([[Float]], Double), _ b: ([[Float]], Double), _ what: String) {
        XCTAssertEqual(a.1, b.1, accuracy: 1e-5 * abs(b.1), "\(what): loss")
        var worst = 0.0, scale = 0.0
        for (x, y) in zip(a.0, b.0) {
            for (u, v) in zip(x, y) {
                worst = max(worst, Double(abs(u - v)))
                scale = max(scale, Double(abs(v)))
            }
        }
        XCTAssertGreaterThan(scale, 0, "\(what): no gradient at all")
        XCTAssertLessThanOrEqual(worst, 2e-5 * scale, "\(what): largest gradient difference \(worst) of \(scale)")
    }

    func testShardGradientsSumToTheWholeBatchs() throws {
        let batch = sftBatch()
        let whole = try gradients([batch], normalizer: batch.scoredTokens)
        for ranks in [2, 3] {
            let shards = (0..<ranks).compactMap { batch.shard(rank: $0, of: ranks) }
            assertClose(try gradients(shards, normalizer: batch.scoredTokens), whole, "sft, \(ranks) ranks")
        }
        // The normalizer matters: each shard's own would weigh its tokens wrongly.
        let shards = (0..<2).compactMap { batch.shard(rank: $0, of: 2) }
        let own = try shards.map { try gradients([$0], normalizer: $0.scoredTokens) }
        XCTAssertNotEqual(own[0].0[0][0] + own[1].0[0][0], whole.0[0][0])
    }

    func testPreferenceShardsKeepWholePairs() throws {
        // Six pairs of random ids, prompts and completions of different lengths, with margins and
        // the base model's log-probabilities as the reference.
        var rng = SplitMix64(seed: 21)
        func ids(_ n: Int) -> [Int] { (0..<n).map { _ in Int(1 + rng.next() % 255) } }
        var pairs = [(3, 4, 2), (5, 2, 6), (2, 3, 3), (4, 1, 5), (1, 6, 2), (3, 3, 4)].enumerated().map { i, s in
            PreferencePair(prompt: ids(s.0), chosen: ids(s.1), rejected: ids(s.2), margin: Double(i) * 0.25 - 0.5)
        }
        let plain = TokenBatch(PreferenceBatch(pairs: pairs, indices: Array(pairs.indices), padID: 0, epoch: 0))
        let reference = try PreferenceObjective.completionLogProbs(plain, trainer: Trainer(model: tiny, lora: .disabled(for: tiny)))
        for p in pairs.indices { pairs[p].reference = (reference[p], reference[pairs.count + p]) }
        let batch = TokenBatch(PreferenceBatch(pairs: pairs, indices: Array(pairs.indices), padID: 0, epoch: 0))
        let objective = PreferenceObjective(.dpo(.sigmoid, labelSmoothing: 0), beta: 0.5)
        let shards = (0..<2).compactMap { batch.shard(rank: $0, of: 2) }
        XCTAssertEqual(shards.map { $0.pairs!.count }, [3, 3])
        XCTAssertEqual(shards[1].pairs!.margins, Array(batch.pairs!.margins[3..<6]))
        XCTAssertEqual(shards[1].pairs!.reference!, Array(batch.pairs!.reference![3..<6]) + Array(batch.pairs!.reference![9..<12]))
        // Row 0 of rank 1 is pair 3's chosen side, row 3 its rejected side.
        XCTAssertEqual(shards[1].lengths, [3, 4, 5, 9, 10, 11].map { batch.lengths[$0] })
        let whole = try gradients([batch], normalizer: 6, objective: objective)
        assertClose(try gradients(shards, normalizer: 6, objective: objective), whole, "dpo, 2 ranks")
    }
}
