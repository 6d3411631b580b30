import Foundation

/// A reward model (TRL's RewardTrainer on transformers' `*ForSequenceClassification` with one
/// label): a score head reads each sequence's last real token after the final norm, and pairs
/// are trained so that the chosen side scores higher. Legend: P pairs (rows 0..<P chosen,
/// P..<2P rejected), T tokens a row, C hidden, w = score.weight [1, C].
///
///   xn = rmsnorm(x)[b, len_b − 1]     (the last real token by the row's length, never by
///                                      searching for a pad id that may equal EOS)
///   r_b = w · xn_b
///   loss_p = −log σ(r_c − r_r − margin_p) + centering · (r_c + r_r)²     (PreferenceLoss.reward)
///   dw += Σ_b ∂L/∂r_b · xn_b;  dxn_b = ∂L/∂r_b · w;  dx = rmsnorm backward
///
/// The LM head is not run. Metrics (sums over pairs): accuracy (r_c > r_r strictly), margin
/// (r_c − r_r), rewards/chosen, rewards/rejected, mean_reward (of both sides); and the extremes
/// min_reward, max_reward (TRL's RewardTrainer logs accuracy, margin, min/mean/max_reward).
public struct RewardObjective: TrainingObjective {
    /// TRL's center_rewards_coefficient: pulls the scores towards 0 mean.
    public var centering: Double

    public init(centering: Double = 0) { self.centering = centering }

    public func normalizer(_ batch: TokenBatch) -> Int { batch.pairs?.count ?? 0 }

    public func loss(hidden x: FloatBuffer, batch: TokenBatch, model: DecoderModel, adapters: ModelAdapters, gradScale: Float,
                     dx: FloatBuffer?, arena: FloatArena) throws -> LossSum {
        guard let pairs = batch.pairs else { throw ObjectiveError.needsPairs("reward") }
        guard let head = adapters.scoreHead else { throw ObjectiveError.needsScoreHead }
        let P = pairs.count, C = model.config.hiddenSize, N = batch.sequences * batch.length
        let (xn, rstd) = LMHead.normalize(x, rows: N, model: model, adapters: adapters, arena: arena)
        let last = batch.lengths.enumerated().map { b, n in b * batch.length + n - 1 }
        let scores = Self.scores(xn: xn, rows: last, head: head, hidden: C)
        var total = 0.0
        var dScore = [Double](repeating: 0, count: 2 * P)
        var m: [String: Double] = [:]
        for p in 0..<P {
            let (c, r) = (scores[p], scores[P + p])
            let v = PreferenceLoss.reward(chosen: c, rejected: r, margin: Double(pairs.margins[p]), centering: centering)
            total += v.loss
            (dScore[p], dScore[P + p]) = (v.dChosen, v.dRejected)
            m["accuracy", default: 0] += c > r ? 1 : 0
            m["margin", default: 0] += c - r
            m["rewards/chosen", default: 0] += c
            m["rewards/rejected", default: 0] += r
            m["mean_reward", default: 0] += (c + r) / 2
        }
        m["min_reward"] = scores.min()!
        m["max_reward"] = scores.max()!
        if let dx {
            let dxn = arena.take(N * C)
            dxn.base.update(repeating: 0, count: N * C)
            for (b, row) in last.enumerated() {
                let g = Float(dScore[b] * Double(gradScale))
                for i in 0..<C {
                    dxn.base[row * C + i] = g * head.value.base[i]
                    head.grad.base[i] += g * xn.base[row * C + i]
                }
            }
            LMHead.normBackward(dx: dx, dxn: dxn, x: x, rstd: rstd, rows: N, model: model, adapters: adapters)
        }
        return LossSum(sum: total, tokens: P, metrics: m)
    }

    /// w · xn[row] for each row (summed in float64).
    static func scores(xn: FloatBuffer, rows: [Int], head: Parameter, hidden C: Int) -> [Double] {
        rows.map { row in (0..<C).reduce(0.0) { $0 + Double(head.value.base[$1]) * Double(xn.base[row * C + $1]) } }
    }

    /// The reward of every row of `batch` (its last real token's score) with the weights
    /// `trainer` runs, no gradients: `qlora score`, evaluation.
    public static func scores(_ batch: TokenBatch, trainer: Trainer) throws -> [Double] {
        guard let head = trainer.lora.scoreHead else { throw ObjectiveError.needsScoreHead }
        return try trainer.withHiddenStates(batch) { hidden, arena in
            let N = batch.sequences * batch.length
            let (xn, _) = LMHead.normalize(hidden, rows: N, model: trainer.model, adapters: trainer.lora, arena: arena)
            let last = batch.lengths.enumerated().map { b, n in b * batch.length + n - 1 }
            return scores(xn: xn, rows: last, head: head, hidden: trainer.model.config.hiddenSize)
        }
    }
}
