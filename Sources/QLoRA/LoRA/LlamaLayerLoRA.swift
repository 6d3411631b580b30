import Foundation
import Quant

/// What trains in one decoder layer: LoRA adapters on some of its linears, and its two
/// RMSNorm weights with `--train-norms`; and adapters stacked on them frozen (other adapters
/// applied at once: their deltas add in the forward and pass the input gradient in the
/// backward, without dropout or gradients of their own). An empty value changes nothing there.
public struct LlamaLayerLoRA {
    public var adapters: [LlamaLinear: LoRAAdapter] = [:]
    public var attentionNorm: Parameter?
    public var mlpNorm: Parameter?
    /// y += Σ s_i·B_i·A_i·x over these, after `adapters`' own delta.
    public var frozen: [LlamaLinear: [LoRAAdapter]] = [:]

    public init(adapters: [LlamaLinear: LoRAAdapter] = [:], attentionNorm: Parameter? = nil, mlpNorm: Parameter? = nil,
                frozen: [LlamaLinear: [LoRAAdapter]] = [:]) {
        self.adapters = adapters
        self.attentionNorm = attentionNorm
        self.mlpNorm = mlpNorm
        self.frozen = frozen
    }

    /// The seed of linear `m`'s dropout mask within a layer whose step seed is `seed`.
    static func dropoutSeed(_ seed: UInt64?, _ m: LlamaLinear) -> UInt64? {
        guard let seed else { return nil }
        var z = seed ^ (UInt64(LlamaLinear.allCases.firstIndex(of: m)! + 1) &* 0xD1B5_4A32_D192_ED03)
        z = (z ^ (z >> 29)) &* 0xBF58_476D_1CE4_E5B9
        return z ^ (z >> 32)
    }
}

/// One frozen linear, its adapter and the adapters stacked frozen on it, run together:
///   forward   y[T, out] (+)= x·Wᵀ + scale·(drop(x)·Aᵀ)·Bᵀ + Σ s_i·(x·A_iᵀ)·B_iᵀ
///   backward  dx[T, in] (+)= dy·W + LoRA's share + Σ s_i·(dy·B_i)·A_i; dA, dB accumulated
struct LlamaLinearRun {
    let weight: QuantizedMatrix
    let adapter: LoRAAdapter?
    let frozen: [LoRAAdapter]
    let saved: LoRAAdapter.Saved?
    let dropoutSeed: UInt64?

    init(_ weight: QuantizedMatrix, _ m: LlamaLinear, lora: LlamaLayerLoRA?, acts: LlamaBlockActivations, seed: UInt64?) {
        self.weight = weight
        adapter = lora?.adapters[m]
        frozen = lora?.frozen[m] ?? []
        saved = acts.lora[m]
        dropoutSeed = LlamaLayerLoRA.dropoutSeed(seed, m)
        precondition(adapter == nil || saved != nil, "activations were allocated without room for the \(m) adapter")
    }

    func forward(_ x: FloatBuffer, into y: UnsafeMutablePointer<Float>, tokens T: Int, accumulate: Bool = false) throws {
        try StepProfile.measure(.gemmForward, flops: 2 * Double(T * weight.rows * weight.cols)) {
            try weight.forward(UnsafeBufferPointer(start: x.base, count: T * weight.cols),
                               into: UnsafeMutableBufferPointer(start: y, count: T * weight.rows), tokens: T, accumulate: accumulate)
        }
        if let adapter, let saved {
            try StepProfile.measure(.lora) {
                try adapter.forward(x: x.base, y: y, tokens: T, saved: saved, dropoutSeed: dropoutSeed)
            }
        }
        if !frozen.isEmpty {
            try StepProfile.measure(.lora) {
                for f in frozen { try f.forwardFrozen(x: x.base, y: y, tokens: T) }
            }
        }
    }

    /// `x` is the forward's input (LoRA's dA needs it).
    func backward(_ dy: UnsafePointer<Float>, x: FloatBuffer, into dx: UnsafeMutablePointer<Float>, tokens T: Int,
                  accumulate: Bool) throws {
        try StepProfile.measure(.gemmBackward, flops: 2 * Double(T * weight.rows * weight.cols)) {
            try weight.backward(UnsafeBufferPointer(start: dy, count: T * weight.rows),
                                into: UnsafeMutableBufferPointer(start: dx, count: T * weight.cols), tokens: T, accumulate: accumulate)
        }
        if let adapter, let saved {
            try StepProfile.measure(.lora) {
                try adapter.backward(dy: dy, x: x.base, dx: dx, tokens: T, saved: saved, dropoutSeed: dropoutSeed)
            }
        }
        if !frozen.isEmpty {
            try StepProfile.measure(.lora) {
                for f in frozen { try f.backwardFrozen(dy: dy, dx: dx, tokens: T) }
            }
        }
    }
}
