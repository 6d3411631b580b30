import Foundation
import QuantKernels

/// RMSNorm as transformers' LlamaRMSNorm computes it in fp32. Legend: T tokens, C hidden.
///
///   rstd[t] = 1 / sqrt(mean(x[t]²) + eps)
///   y[T, C] = w[C] ⊙ (x[T, C] · rstd[T])
///
/// Writes y and rstd (kept for the backward); x and y are [T, C], w is [C].
func llamaRMSNormForward(y: UnsafeMutablePointer<Float>, rstd: UnsafeMutablePointer<Float>, x: UnsafePointer<Float>,
                         weight: [Float], tokens T: Int, eps: Float) {
    weight.withUnsafeBufferPointer { w in
        qk_rmsnorm_forward(y, rstd, x, w.baseAddress, Int64(T), Int64(w.count), eps)
    }
}
