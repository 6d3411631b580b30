import Foundation
import Quant
import QuantKernels

/// The linears of a gated MLP: gate and up (or one fused [gate; up], Phi-3's gate_up_proj), down.
struct GatedMLPWeights {
    let gate: Linear?, up: Linear?, gateUp: Linear?, down: Linear

    init(_ w: LayerWeights) {
        gateUp = w.linears[.gateUp]
        gate = gateUp == nil ? w[.gate] : nil
        up = gateUp == nil ? w[.up] : nil
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
func gatedMLPForward(out: UnsafeMutableBufferPointer<Float>, acts: BlockActivations, weights w: GatedMLPWeights,
                     config c: ModelConfig, context ctx: LayerContext, accumulate: Bool = true) throws {
    let T = acts.T
    if let gateUp = w.gateUp {
        guard let fused = acts.fused else { preconditionFailure("activations without room for \(gateUp.spec)") }
        try ctx.forward(gateUp, acts.mlpInput, into: fused.base, tokens: T)
        StepProfile.measure(.elementwise) {
            splitColumns(fused.base, rows: T, into: [(acts.gate.base, c.intermediateSize), (acts.up.base, c.intermediateSize)])
        }
    } else if let gate = w.gate, let up = w.up {
        try ctx.forward(gate, acts.mlpInput, into: acts.gate.base, tokens: T)
        try ctx.forward(up, acts.mlpInput, into: acts.up.base, tokens: T)
    }
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
func gatedMLPBackward(dxn: FloatBuffer, dOut: FloatBuffer, acts: BlockActivations, weights w: GatedMLPWeights,
                      config c: ModelConfig, context ctx: LayerContext, grads g: BlockGradients) throws {
    let T = acts.T
    try ctx.backward(w.down, dOut.base, x: acts.mlpHidden, into: g.dHidden.base, tokens: T, accumulate: false)
    StepProfile.measure(.elementwise) {
        switch c.family.activation {
        case .silu: qk_swiglu_backward(g.dGate.base, g.dUp.base, g.dHidden.base, acts.gate.base, acts.up.base, Int64(T * c.intermediateSize))
        case .geluTanh: qk_geglu_backward(g.dGate.base, g.dUp.base, g.dHidden.base, acts.gate.base, acts.up.base, Int64(T * c.intermediateSize))
        }
    }
    if let gateUp = w.gateUp {
        guard let dFused = g.dFused else { preconditionFailure("gradients without room for \(gateUp.spec)") }
        StepProfile.measure(.elementwise) {
            joinColumns([(UnsafePointer(g.dGate.base), c.intermediateSize), (UnsafePointer(g.dUp.base), c.intermediateSize)],
                        rows: T, into: dFused.base)
        }
        try ctx.backward(gateUp, dFused.base, x: acts.mlpInput, into: dxn.base, tokens: T, accumulate: false)
    } else if let gate = w.gate, let up = w.up {
        try ctx.backward(gate, g.dGate.base, x: acts.mlpInput, into: dxn.base, tokens: T, accumulate: false)
        try ctx.backward(up, g.dUp.base, x: acts.mlpInput, into: dxn.base, tokens: T, accumulate: true)
    }
}
