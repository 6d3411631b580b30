import Foundation
import Quant
import QuantKernels

/// The SwiGLU MLP of one layer, transformers' LlamaMLP, with LoRA on any of its linears.
/// Legend: T tokens, C hidden, F intermediate.
///
///   gate[T, F] = xn·Wgateᵀ,  up[T, F] = xn·Wupᵀ             (+ LoRA)
///   hidden[T, F] = silu(gate) ⊙ up
///   out[T, C] += hidden·Wdownᵀ                               (+ LoRA; out holds the residual h)
///
/// Writes acts.gate, up, mlpHidden; reads acts.mlpInput (xn).
func llamaMLPForward(out: UnsafeMutableBufferPointer<Float>, acts: LlamaBlockActivations, layer w: LlamaLayerWeights,
                     config c: ModelConfig, lora: LlamaLayerLoRA? = nil, dropoutSeed: UInt64? = nil) throws {
    let T = acts.T
    func run(_ m: QuantizedMatrix, _ role: LlamaLinear) -> LlamaLinearRun {
        LlamaLinearRun(m, role, lora: lora, acts: acts, seed: dropoutSeed)
    }
    try run(w.gate, .gate).forward(acts.mlpInput, into: acts.gate.base, tokens: T)
    try run(w.up, .up).forward(acts.mlpInput, into: acts.up.base, tokens: T)
    StepProfile.measure(.elementwise) { qk_swiglu_forward(acts.mlpHidden.base, acts.gate.base, acts.up.base, Int64(T * c.intermediateSize)) }
    try run(w.down, .down).forward(acts.mlpHidden, into: out.baseAddress!, tokens: T, accumulate: true)
}

/// The backward of `llamaMLPForward`: given dOut [T, C], writes dxn [T, C], the gradient of
/// the MLP's input xn, and accumulates the LoRA gradients.
func llamaMLPBackward(dxn: FloatBuffer, dOut: FloatBuffer, acts: LlamaBlockActivations, layer w: LlamaLayerWeights,
                      config c: ModelConfig, lora: LlamaLayerLoRA?, dropoutSeed: UInt64?, grads g: LlamaBlockGradients) throws {
    let T = acts.T
    func run(_ m: QuantizedMatrix, _ role: LlamaLinear) -> LlamaLinearRun {
        LlamaLinearRun(m, role, lora: lora, acts: acts, seed: dropoutSeed)
    }
    try run(w.down, .down).backward(dOut.base, x: acts.mlpHidden, into: g.dHidden.base, tokens: T, accumulate: false)
    StepProfile.measure(.elementwise) {
        qk_swiglu_backward(g.dGate.base, g.dUp.base, g.dHidden.base, acts.gate.base, acts.up.base, Int64(T * c.intermediateSize))
    }
    try run(w.gate, .gate).backward(g.dGate.base, x: acts.mlpInput, into: dxn.base, tokens: T, accumulate: false)
    try run(w.up, .up).backward(g.dUp.base, x: acts.mlpInput, into: dxn.base, tokens: T, accumulate: true)
}
