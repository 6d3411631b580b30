import Foundation
import Quant
import QuantKernels

/// The linears of a gated MLP: gate, up, down.
struct GatedMLPWeights {
    let gate: Linear, up: Linear, down: Linear

    init(_ w: LayerWeights) {
        gate = w[.gate]
        up = w[.up]
        down = w[.down]
    }
}

/// The SwiGLU MLP of one layer, transformers' LlamaMLP. Legend: T tokens, C hidden, F intermediate.
///
///   gate[T, F] = xn·Wgateᵀ,  up[T, F] = xn·Wupᵀ
///   hidden[T, F] = act(gate) ⊙ up                           (silu, or Gemma's tanh-GELU)
///   out[T, C] (+)= hidden·Wdownᵀ                             (out holds the residual h)
///
/// Writes acts.gate, up, mlpHidden; reads acts.mlpInput (xn).
func gatedMLPForward(out: UnsafeMutableBufferPointer<Float>, acts: LlamaBlockActivations, weights w: GatedMLPWeights,
                     config c: ModelConfig, context ctx: LayerContext, accumulate: Bool = true) throws {
    let T = acts.T
    try ctx.forward(w.gate, acts.mlpInput, into: acts.gate.base, tokens: T)
    try ctx.forward(w.up, acts.mlpInput, into: acts.up.base, tokens: T)
    StepProfile.measure(.elementwise) {
        switch c.family.activation {
        case .silu: qk_swiglu_forward(acts.mlpHidden.base, acts.gate.base, acts.up.base, Int64(T * c.intermediateSize))
        case .geluTanh: qk_geglu_forward(acts.mlpHidden.base, acts.gate.base, acts.up.base, Int64(T * c.intermediateSize))
        }
    }
    try ctx.forward(w.down, acts.mlpHidden, into: out.baseAddress!, tokens: T, accumulate: accumulate)
}

/// The backward of `gatedMLPForward`: given dOut [T, C], writes dxn [T, C], the gradient of
/// the MLP's input xn, and accumulates the adapters' gradients.
func gatedMLPBackward(dxn: FloatBuffer, dOut: FloatBuffer, acts: LlamaBlockActivations, weights w: GatedMLPWeights,
                      config c: ModelConfig, context ctx: LayerContext, grads g: LlamaBlockGradients) throws {
    let T = acts.T
    try ctx.backward(w.down, dOut.base, x: acts.mlpHidden, into: g.dHidden.base, tokens: T, accumulate: false)
    StepProfile.measure(.elementwise) {
        switch c.family.activation {
        case .silu: qk_swiglu_backward(g.dGate.base, g.dUp.base, g.dHidden.base, acts.gate.base, acts.up.base, Int64(T * c.intermediateSize))
        case .geluTanh: qk_geglu_backward(g.dGate.base, g.dUp.base, g.dHidden.base, acts.gate.base, acts.up.base, Int64(T * c.intermediateSize))
        }
    }
    try ctx.backward(w.gate, g.dGate.base, x: acts.mlpInput, into: dxn.base, tokens: T, accumulate: false)
    try ctx.backward(w.up, g.dUp.base, x: acts.mlpInput, into: dxn.base, tokens: T, accumulate: true)
}
