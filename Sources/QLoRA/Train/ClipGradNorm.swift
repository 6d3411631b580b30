import Foundation

/// Scales all gradients together so that their global L2 norm is at most `maxNorm`, as
/// torch.nn.utils.clip_grad_norm_ does, and returns the norm before clipping.
///
///     norm_i = ‖grad_i‖₂ (rounded to Float)    total = ‖(norm_1, …, norm_k)‖₂ (rounded to Float)
///     coef   = (1 / (total + 1e-6)) · maxNorm   in Float, as torch's `max_norm / tensor` does
///     grad_i ← grad_i · coef                    only when coef < 1 (or NaN, which torch spreads)
///
/// Sums of squares are accumulated in Double, so the norm can differ from torch's float
/// reduction in the last bit.
@discardableResult
public func clipGradNorm(_ parameters: [Parameter], maxNorm: Double) -> Float {
    var sumOfNormSquares = 0.0
    for p in parameters {
        let g = p.grad.base
        var s = 0.0
        for i in 0..<p.count { s += Double(g[i]) * Double(g[i]) }
        let norm = Double(Float(s.squareRoot()))
        sumOfNormSquares += norm * norm
    }
    let total = Float(sumOfNormSquares.squareRoot())
    let coef = (1 / (total + Float(1e-6))) * Float(maxNorm)
    if !(coef >= 1) {
        for p in parameters {
            let g = p.grad.base
            for i in 0..<p.count { g[i] *= coef }
        }
    }
    return total
}
