import Foundation
import QuantKernels

/// What turns the model's final hidden states into a loss: the seam every training objective
/// plugs into (causal LM today; reward models and preference training next). An objective
/// knows nothing of architectures: it gets the last block's output and the model's final norm
/// and head through `DecoderModel`, and gives back the gradient of the loss with respect to
/// that output, which the trainer carries back through the blocks. Legend: N rows, C hidden.
public protocol TrainingObjective {
    /// The summed loss of `batch` from the last block's output x [N, C] (before the final
    /// norm). With `dx` [N, C], writes gradScale · ∂loss/∂x there and adds the gradients of
    /// what trains in the head (the final norm with --train-norms). Scratch from `arena`.
    func loss(hidden x: FloatBuffer, batch: TokenBatch, model: DecoderModel, adapters: ModelAdapters, gradScale: Float,
              dx: FloatBuffer?, arena: FloatArena) throws -> LossSum
}

/// Supervised fine-tuning's objective: next-token cross-entropy on the labels (−100 not scored).
/// Legend: N rows, C hidden, V vocab.
///
///   logits[N, V] = rmsnorm(x)·lm_headᵀ (soft-capped where the family does), a chunk of rows
///   at a time, never [N, V] whole;  loss = Σ CE(logits, labels shifted by one)
public struct CausalLMObjective: TrainingObjective {
    /// Rows of logits computed at once: chunk × V floats at a time.
    public var headChunkRows: Int

    public init(headChunkRows: Int = 128) { self.headChunkRows = headChunkRows }

    /// The final norm, the LM head and the cross-entropy, in chunks of rows; with `dx`, writes
    /// the gradient of the loss (times gradScale) with respect to x [N, C] there and adds the
    /// final norm's gradient when it trains.
    public func loss(hidden x: FloatBuffer, batch: TokenBatch, model: DecoderModel, adapters lora: ModelAdapters, gradScale: Float,
                     dx: FloatBuffer?, arena: FloatArena) throws -> LossSum {
        let targets = batch.shiftedTargets
        let c = model.config, C = c.hiddenSize, V = c.vocabSize, N = targets.count
        let xn = arena.take(N * C), rstd = arena.take(N)
        rmsNormForward(y: xn.base, rstd: rstd.base, x: x.base, weight: model.weights.finalNorm, trainable: lora.finalNorm,
                            tokens: N, eps: c.rmsNormEps)
        let dxn = dx == nil ? nil : arena.take(N * C)
        let chunk = max(1, headChunkRows)
        let logits = arena.take(min(chunk, N) * V)
        let tanhs = c.finalLogitSoftcap == nil ? nil : arena.take(min(chunk, N) * V)
        var total = LossSum()
        var first = 0
        while first < N {
            let n = min(chunk, N - first)
            let labels = Array(targets[first..<(first + n)])
            if labels.allSatisfy({ $0 == -100 }) {
                dxn?.base.advanced(by: first * C).update(repeating: 0, count: n * C)
                first += n
                continue
            }
            try model.weights.lmHead.forward(xn.base + first * C, rows: n, width: C, vocab: V, into: logits.base)
            // Gemma 2's final soft-capping: logits ← cap·tanh(logits / cap), keeping tanh for the backward.
            if let cap = c.finalLogitSoftcap, let tanhs {
                for i in 0..<(n * V) {
                    let t = tanhf(logits.base[i] / cap)
                    tanhs.base[i] = t
                    logits.base[i] = cap * t
                }
            }
            var counted: Int64 = 0
            let sum = labels.withUnsafeBufferPointer {
                qk_cross_entropy(logits.base, $0.baseAddress, Int64(n), Int64(V), gradScale, &counted, 0)
            }
            total = total + LossSum(sum: sum, tokens: Int(counted))
            if let dxn {
                if let tanhs { for i in 0..<(n * V) { logits.base[i] *= 1 - tanhs.base[i] * tanhs.base[i] } }
                try model.weights.lmHead.backward(logits.base, rows: n, width: C, vocab: V, into: dxn.base + first * C,
                                                  accumulate: false)
            }
            first += n
        }
        if let dx, let dxn {
            rmsNormBackward(dx: dx.base, dy: dxn.base, x: x.base, rstd: rstd.base, weight: model.weights.finalNorm,
                                 trainable: lora.finalNorm, tokens: N)
        }
        return total
    }
}
