import Foundation

/// The pairwise losses of preference training, as TRL computes them, on per-pair summaries
/// (sequence log-probabilities or reward scores) rather than tensors: each returns the pair's
/// loss and its derivatives with respect to those summaries, which an objective then carries
/// back through the log-softmax (or the score head) and the model. In Float64: a pair's loss is
/// a handful of operations, and the derivatives feed fp32 gradients.
///
/// Notation per pair: c chosen, r rejected; π = the policy's log-probability of the completion
/// (sum over its tokens, or its mean for ORPO and SimPO); ρ = the reference's; β the
/// temperature; ε label smoothing.
public enum PreferenceLoss {
    /// A pair's loss and ∂loss/∂(first summary), ∂loss/∂(second summary).
    public struct Value: Equatable, Sendable {
        public var loss: Double
        public var dChosen: Double
        public var dRejected: Double
    }

    /// DPO's loss types (TRL's `loss_type`): `sigmoid` (the paper's, with conservative label
    /// smoothing ε), `robust` (rDPO, unbiased under label noise ε), `hinge` (SLiC), `ipo`.
    public enum DPOKind: String, Codable, Sendable, CaseIterable {
        case sigmoid, robust, hinge, ipo
    }

    /// log σ(x), stable for large |x|.
    static func logSigmoid(_ x: Double) -> Double { x >= 0 ? -log1p(exp(-x)) : x - log1p(exp(x)) }
    static func sigmoid(_ x: Double) -> Double { x >= 0 ? 1 / (1 + exp(-x)) : exp(x) / (1 + exp(x)) }

    /// DPO (TRL's DPOTrainer.dpo_loss): h = (π_c − π_r) − (ρ_c − ρ_r), then
    ///   sigmoid: −(1−ε)·log σ(βh) − ε·log σ(−βh)
    ///   robust:  (−(1−ε)·log σ(βh) + ε·log σ(−βh)) / (1 − 2ε)
    ///   hinge:   max(0, 1 − βh)
    ///   ipo:     (h − 1/(2β))²        (TRL feeds IPO length-averaged log-probabilities)
    /// Derivatives with respect to π_c and π_r (the reference is a constant).
    public static func dpo(_ kind: DPOKind, policyChosen pc: Double, policyRejected pr: Double, referenceChosen rc: Double,
                           referenceRejected rr: Double, beta: Double, labelSmoothing eps: Double = 0) -> Value {
        let h = (pc - pr) - (rc - rr), z = beta * h
        let loss: Double, dh: Double
        switch kind {
        case .sigmoid:
            loss = -(1 - eps) * logSigmoid(z) - eps * logSigmoid(-z)
            dh = beta * (-(1 - eps) * sigmoid(-z) + eps * sigmoid(z))
        case .robust:
            loss = (-(1 - eps) * logSigmoid(z) + eps * logSigmoid(-z)) / (1 - 2 * eps)
            dh = beta * (-(1 - eps) * sigmoid(-z) - eps * sigmoid(z)) / (1 - 2 * eps)
        case .hinge:
            loss = max(0, 1 - z)
            dh = 1 - z > 0 ? -beta : 0
        case .ipo:
            let d = h - 1 / (2 * beta)
            loss = d * d
            dh = 2 * d
        }
        return Value(loss: loss, dChosen: dh, dRejected: -dh)
    }

    /// DPO's implicit rewards, TRL's rewards/chosen and rewards/rejected: β·(π − ρ).
    public static func dpoRewards(policyChosen pc: Double, policyRejected pr: Double, referenceChosen rc: Double,
                                  referenceRejected rr: Double, beta: Double) -> (chosen: Double, rejected: Double) {
        (beta * (pc - rc), beta * (pr - rr))
    }

    /// SimPO (TRL's CPOTrainer, loss_type "simpo"), reference-free on length-averaged
    /// log-probabilities: h = (π̄_c − π̄_r) − γ/β, loss = −(1−ε)·log σ(βh) − ε·log σ(−βh).
    public static func simpo(meanChosen pc: Double, meanRejected pr: Double, beta: Double, gamma: Double,
                             labelSmoothing eps: Double = 0) -> Value {
        let z = beta * ((pc - pr) - gamma / beta)
        let loss = -(1 - eps) * logSigmoid(z) - eps * logSigmoid(-z)
        let dh = beta * (-(1 - eps) * sigmoid(-z) + eps * sigmoid(z))
        return Value(loss: loss, dChosen: dh, dRejected: -dh)
    }

    /// ORPO's odds-ratio term (TRL's ORPOTrainer.odds_ratio_loss) on length-averaged
    /// log-probabilities π̄ (< 0): log odds(π̄) = π̄ − log(1 − e^π̄), and the pair's term is
    /// −β·log σ(log odds(π̄_c) − log odds(π̄_r)); the objective adds the chosen completion's NLL.
    public static func orpoOddsRatio(meanChosen pc: Double, meanRejected pr: Double, beta: Double) -> Value {
        func logOdds(_ p: Double) -> Double { p - log(-expm1(p)) }
        func dLogOdds(_ p: Double) -> Double { 1 + exp(p) / -expm1(p) }   // d/dp [p − log(1 − e^p)]
        let x = logOdds(pc) - logOdds(pr)
        let loss = -beta * logSigmoid(x)
        let dx = -beta * sigmoid(-x)
        return Value(loss: loss, dChosen: dx * dLogOdds(pc), dRejected: -dx * dLogOdds(pr))
    }

    /// A reward model's pairwise loss (TRL's RewardTrainer): −log σ(r_c − r_r − margin), plus
    /// `centering` · (r_c + r_r)² (its center_rewards_coefficient, per pair; TRL takes the mean
    /// over the batch, as an objective does by averaging pairs).
    public static func reward(chosen rc: Double, rejected rr: Double, margin: Double = 0, centering: Double = 0) -> Value {
        let x = rc - rr - margin
        let s = rc + rr
        let loss = -logSigmoid(x) + centering * s * s
        let dx = -sigmoid(-x)
        return Value(loss: loss, dChosen: dx + 2 * centering * s, dRejected: -dx + 2 * centering * s)
    }
}
