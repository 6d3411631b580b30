import Foundation
import Quant
import QuantKernels

/// The SwiGLU MLP of one layer, transformers' LlamaMLP. Legend: T tokens, C hidden, F intermediate.
///
///   gate[T, F] = xn·Wgateᵀ,  up[T, F] = xn·Wupᵀ
///   hidden[T, F] = silu(gate) ⊙ up
///   out[T, C] += hidden·Wdownᵀ                              (out holds the residual h)
///
/// Writes acts.gate, up, mlpHidden; reads acts.mlpInput (xn).
func llamaMLPForward(out: UnsafeMutableBufferPointer<Float>, acts: LlamaBlockActivations, layer w: LlamaLayerWeights,
                     config c: ModelConfig) throws {
    let T = acts.T
    let xn = UnsafeBufferPointer(acts.mlpInput.buffer)
    try w.gate.forward(xn, into: acts.gate.buffer, tokens: T)
    try w.up.forward(xn, into: acts.up.buffer, tokens: T)
    qk_swiglu_forward(acts.mlpHidden.base, acts.gate.base, acts.up.base, Int64(T * c.intermediateSize))
    try w.down.forward(UnsafeBufferPointer(acts.mlpHidden.buffer), into: out, tokens: T, accumulate: true)
}
