import Foundation

/// Errors of an objective given a batch it cannot score.
public enum ObjectiveError: Error, CustomStringConvertible {
    case needsPairs(String)
    case needsReference
    case needsScoreHead

    public var description: String {
        switch self {
        case let .needsPairs(o): "the \(o) objective trains on preference pairs (rows {prompt, chosen, rejected}), not single sequences"
        case .needsReference: "DPO needs the reference log-probabilities of every pair (computed before training; see ReferenceLogProbs)"
        case .needsScoreHead: "the reward objective needs adapters with a score head (ModelAdapters(..., scoreHead: true))"
        }
    }
}

/// Preference training on pairs from the log-probabilities of their completions, as TRL
/// computes it: DPO (DPOTrainer), SimPO (CPOTrainer, loss_type "simpo", cpo_alpha 0) and ORPO
/// (ORPOTrainer). A batch holds P pairs as 2P rows (chosen sides, then rejected:
/// `TokenBatch.pairs`); the loss of a batch is summed over its pairs (the run divides by the
/// pairs of an update, TRL's mean). Legend: P pairs; π a completion's summed log-probability,
/// π̄ = π / its length; ρ the reference's π.
///
///   DPO    loss_p = PreferenceLoss.dpo(kind; π_c, π_r, ρ_c, ρ_r, β)   (ipo: on π̄ and ρ̄, as TRL)
///          rewards/chosen = β(π_c − ρ_c), rewards/rejected = β(π_r − ρ_r)
///   SimPO  loss_p = −log σ(β(π̄_c − π̄_r) − γ)                       rewards = β·π̄
///   ORPO   loss = NLL(chosen rows, prompt and completion, mean over their tokens)
///                 − mean_p β·log σ(log odds(π̄_c) − log odds(π̄_r))    rewards = β·π̄
///          per pair: loss_p = (P / N_chosen)·NLL_p + odds-ratio term_p
///
/// Metrics (sums over pairs, as `LossSum.metrics`): rewards/chosen, rewards/rejected,
/// rewards/accuracies (chosen reward > rejected, strictly), rewards/margins, logps/chosen,
/// logps/rejected (π for DPO, π̄ for SimPO and ORPO, as TRL logs them); ORPO adds nll_loss,
/// log_odds_ratio, log_odds_chosen.
public struct PreferenceObjective: TrainingObjective {
    public enum Kind: Sendable, Equatable {
        case dpo(PreferenceLoss.DPOKind, labelSmoothing: Double)
        case simpo(gamma: Double, labelSmoothing: Double)
        case orpo
    }

    public var kind: Kind
    public var beta: Double
    /// Rows of logits computed at once (nil: LMHead.defaultChunkRows for the vocabulary).
    public var headChunkRows: Int?

    public init(_ kind: Kind, beta: Double, headChunkRows: Int? = nil) {
        self.kind = kind
        self.beta = beta
        self.headChunkRows = headChunkRows
    }

    public var name: String {
        switch kind {
        case let .dpo(k, _): "dpo (\(k.rawValue))"
        case .simpo: "simpo"
        case .orpo: "orpo"
        }
    }

    /// Whether the loss needs the reference log-probabilities (`TokenBatch.PairRows.reference`).
    public var needsReference: Bool { if case .dpo = kind { true } else { false } }

    public func normalizer(_ batch: TokenBatch) -> Int { batch.pairs?.count ?? 0 }

    public func loss(hidden x: FloatBuffer, batch: TokenBatch, model: DecoderModel, adapters: ModelAdapters, gradScale: Float,
                     dx: FloatBuffer?, arena: FloatArena) throws -> LossSum {
        guard let pairs = batch.pairs else { throw ObjectiveError.needsPairs(name) }
        let P = pairs.count
        let orpo = kind == .orpo
        let seq = try SequenceLogProbs(hidden: x, batch: batch, model: model, adapters: adapters, chunkRows: headChunkRows,
                                       wholeRows: orpo ? 0..<P : 0..<0, withGradient: dx != nil, arena: arena)
        let pi = seq.sums, mean = seq.means, n = seq.counts.map(Double.init)
        var dSums = [Double](repeating: 0, count: 2 * P)
        var total = 0.0
        var m: [String: Double] = [:]
        func add(_ key: String, _ v: Double) { m[key, default: 0] += v }
        func rewards(_ c: Double, _ r: Double) {
            add("rewards/chosen", c)
            add("rewards/rejected", r)
            add("rewards/accuracies", c > r ? 1 : 0)
            add("rewards/margins", c - r)
        }
        var dPosition: [Double]? = nil
        switch kind {
        case let .dpo(k, eps):
            guard let ref = pairs.reference else { throw ObjectiveError.needsReference }
            for p in 0..<P {
                let (c, r) = (p, P + p)
                let v: PreferenceLoss.Value
                if k == .ipo {
                    v = PreferenceLoss.dpo(.ipo, policyChosen: pi[c] / n[c], policyRejected: pi[r] / n[r], referenceChosen: ref[c] / n[c],
                                           referenceRejected: ref[r] / n[r], beta: beta, labelSmoothing: eps)
                    (dSums[c], dSums[r]) = (v.dChosen / n[c], v.dRejected / n[r])
                } else {
                    v = PreferenceLoss.dpo(k, policyChosen: pi[c], policyRejected: pi[r], referenceChosen: ref[c], referenceRejected: ref[r],
                                           beta: beta, labelSmoothing: eps)
                    (dSums[c], dSums[r]) = (v.dChosen, v.dRejected)
                }
                total += v.loss
                let w = PreferenceLoss.dpoRewards(policyChosen: pi[c], policyRejected: pi[r], referenceChosen: ref[c],
                                                  referenceRejected: ref[r], beta: beta)
                rewards(w.chosen, w.rejected)
                add("logps/chosen", pi[c])
                add("logps/rejected", pi[r])
            }
        case let .simpo(gamma, eps):
            for p in 0..<P {
                let (c, r) = (p, P + p)
                let v = PreferenceLoss.simpo(meanChosen: mean[c], meanRejected: mean[r], beta: beta, gamma: gamma, labelSmoothing: eps)
                total += v.loss
                (dSums[c], dSums[r]) = (v.dChosen / n[c], v.dRejected / n[r])
                rewards(beta * mean[c], beta * mean[r])
                add("logps/chosen", mean[c])
                add("logps/rejected", mean[r])
            }
        case .orpo:
            // The NLL: every scored position of the chosen rows (prompt and completion).
            let chosenPositions = 0..<(P * seq.length)
            let nllTokens = chosenPositions.reduce(0) { seq.targets[$1] == -100 ? $0 : $0 + 1 }
            let nllSum = chosenPositions.reduce(0.0) { $0 + seq.positionLoss[$1] }
            let nll = nllTokens > 0 ? nllSum / Double(nllTokens) : 0
            total += Double(P) * nll
            add("nll_loss", Double(P) * nll)
            for p in 0..<P {
                let (c, r) = (p, P + p)
                let v = PreferenceLoss.orpoOddsRatio(meanChosen: mean[c], meanRejected: mean[r], beta: beta)
                total += v.loss
                (dSums[c], dSums[r]) = (v.dChosen / n[c], v.dRejected / n[r])
                rewards(beta * mean[c], beta * mean[r])
                add("logps/chosen", mean[c])
                add("logps/rejected", mean[r])
                let logOdds = (mean[c] - log(-expm1(mean[c]))) - (mean[r] - log(-expm1(mean[r])))
                add("log_odds_ratio", PreferenceLoss.logSigmoid(logOdds))
                add("log_odds_chosen", logOdds)
            }
            var d = seq.positionGradient(dSums: dSums)
            // ∂(P·NLL)/∂CE_t = P / N_chosen at each scored position of a chosen row.
            if nllTokens > 0 { for t in chosenPositions where seq.targets[t] != -100 { d[t] += Double(P) / Double(nllTokens) } }
            dPosition = d
        }
        if let dx {
            seq.backward(dPosition: dPosition ?? seq.positionGradient(dSums: dSums), gradScale: gradScale, dx: dx, model: model,
                         adapters: adapters)
        }
        return LossSum(sum: total, tokens: P, metrics: m)
    }

    /// The log-probabilities of every row's completion (chosen sides, then rejected) with the
    /// weights `trainer` runs: the reference pass of DPO, with no gradients.
    public static func completionLogProbs(_ batch: TokenBatch, trainer: Trainer, headChunkRows: Int? = nil) throws -> [Double] {
        try trainer.withHiddenStates(batch) { hidden, arena in
            try SequenceLogProbs(hidden: hidden, batch: batch, model: trainer.model, adapters: trainer.lora, chunkRows: headChunkRows,
                                 withGradient: false, arena: arena).sums
        }
    }
}
