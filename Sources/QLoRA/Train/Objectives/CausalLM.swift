import Foundation
import QuantKernels

/// What turns the model's final hidden states into a loss: the seam every training objective
/// plugs into (causal LM, reward model, DPO, SimPO, ORPO). An objective
/// knows nothing of architectures: it gets the last block's output and the model's final norm
/// and head through `DecoderModel`, and gives back the gradient of the loss with respect to
/// that output, which the trainer carries back through the blocks. Legend: N rows, C hidden.
public protocol TrainingObjective {
    /// The summed loss of `batch` from the last block's output x [N, C] (before the final
    /// norm). With `dx` [N, C], writes gradScale · ∂loss/∂x there and adds the gradients of
    /// what trains in the head (the final norm with --train-norms). Scratch from `arena`.
    func loss(hidden x: FloatBuffer, batch: TokenBatch, model: DecoderModel, adapters: ModelAdapters, gradScale: Float,
              dx: FloatBuffer?, arena: FloatArena) throws -> LossSum

    /// What the loss of an update is a mean over, for one of its micro-batches (scored tokens
    /// for the causal LM, pairs for preference objectives): the run scales gradients by
    /// 1 / Σ normalizer over the update's micro-batches.
    func normalizer(_ batch: TokenBatch) -> Int
}

/// Supervised fine-tuning's objective: next-token cross-entropy on the labels (−100 not scored).
/// Legend: N rows, C hidden, V vocab.
///
///   logits[N, V] = rmsnorm(x)·lm_headᵀ (soft-capped where the family does), a chunk of rows
///   at a time, never [N, V] whole;  loss = Σ CE(logits, labels shifted by one)
public struct CausalLMObjective: TrainingObjective {
    /// Rows of logits computed at once: chunk × V floats at a time (nil: LMHead.defaultChunkRows
    /// for the vocabulary).
    public var headChunkRows: Int?

    public init(headChunkRows: Int? = nil) { self.headChunkRows = headChunkRows }

    /// The final norm, the LM head and the cross-entropy, in chunks of rows (`LMHead`); with
    /// `dx`, writes the gradient of the loss (times gradScale) with respect to x [N, C] there and
    /// adds the final norm's gradient when it trains.
    public func loss(hidden x: FloatBuffer, batch: TokenBatch, model: DecoderModel, adapters lora: ModelAdapters, gradScale: Float,
                     dx: FloatBuffer?, arena: FloatArena) throws -> LossSum {
        let targets = batch.shiftedTargets, N = targets.count
        let (xn, rstd) = LMHead.normalize(x, rows: N, model: model, adapters: lora, arena: arena)
        let dxn = dx == nil ? nil : arena.take(N * model.config.hiddenSize)
        let total = try LMHead.crossEntropy(xn: xn, targets: targets, model: model, chunkRows: headChunkRows, gradScale: gradScale,
                                            dxn: dxn, rowLoss: nil, arena: arena)
        if let dx, let dxn { LMHead.normBackward(dx: dx, dxn: dxn, x: x, rstd: rstd, rows: N, model: model, adapters: lora) }
        return total
    }

    /// The scored tokens: a causal LM's loss is a mean over tokens.
    public func normalizer(_ batch: TokenBatch) -> Int { batch.scoredTokens }
}
