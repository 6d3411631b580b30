import Foundation
import QuantKernels

/// RMSNorm as transformers' LlamaRMSNorm computes it in fp32. Legend: T rows, C values a row.
///
///   rstd[t] = 1 / sqrt(mean(x[t]²) + eps)
///   y[T, C] = w[C] ⊙ (x[T, C] · rstd[T])
///
/// Writes y and rstd (kept for the backward); x and y are [T, C], w is [C]. A trained weight
/// (`--train-norms`) in the context's slot is used instead of the frozen one.
func rmsNormForward(y: UnsafeMutablePointer<Float>, rstd: UnsafeMutablePointer<Float>, x: UnsafePointer<Float>,
                    norm: Norm, context: LayerContext, tokens T: Int, eps: Float) {
    rmsNormForward(y: y, rstd: rstd, x: x, weight: norm.weight, trainable: context.norm(norm), tokens: T, eps: eps)
}

/// The backward of `rmsNormForward`: dx (+)= …, and the trained weight's gradient.
func rmsNormBackward(dx: UnsafeMutablePointer<Float>, dy: UnsafePointer<Float>, x: UnsafePointer<Float>,
                     rstd: UnsafePointer<Float>, norm: Norm, context: LayerContext, tokens T: Int, accumulate: Bool = true) {
    rmsNormBackward(dx: dx, dy: dy, x: x, rstd: rstd, weight: norm.weight, trainable: context.norm(norm), tokens: T,
                         accumulate: accumulate)
}

/// The same over a plain weight array (the final norm) and an optional trained copy.
func rmsNormForward(y: UnsafeMutablePointer<Float>, rstd: UnsafeMutablePointer<Float>, x: UnsafePointer<Float>,
                         weight: [Float], trainable: Parameter? = nil, tokens T: Int, eps: Float) {
    StepProfile.measure(.norms) {
        withNormWeight(weight, trainable) { w in
            qk_rmsnorm_forward(y, rstd, x, w, Int64(T), Int64(weight.count), eps)
        }
    }
}

/// dx[T, C] (+)= rstd·(w⊙dy − x̂·mean(w⊙dy⊙x̂)), x̂ = x·rstd, and dw += Σ_t dy⊙x̂ when the
/// weight trains. dx must not alias dy or x.
func rmsNormBackward(dx: UnsafeMutablePointer<Float>, dy: UnsafePointer<Float>, x: UnsafePointer<Float>,
                          rstd: UnsafePointer<Float>, weight: [Float], trainable: Parameter?, tokens T: Int,
                          accumulate: Bool = true) {
    StepProfile.measure(.norms) {
        withNormWeight(weight, trainable) { w in
            qk_rmsnorm_backward(dx, trainable?.grad.base, dy, x, w, rstd, Int64(T), Int64(weight.count), accumulate ? 1 : 0)
        }
    }
}

private func withNormWeight(_ frozen: [Float], _ trainable: Parameter?, _ body: (UnsafePointer<Float>) -> Void) {
    if let trainable {
        precondition(trainable.count == frozen.count, "norm '\(trainable.name)' has \(trainable.count) values, \(frozen.count) expected")
        body(trainable.value.base)
    } else {
        frozen.withUnsafeBufferPointer { body($0.baseAddress!) }
    }
}
