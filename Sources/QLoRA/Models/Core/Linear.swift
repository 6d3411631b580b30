import Foundation
import Quant
import QuantKernels

/// A frozen linear of a block: W [out, in] 4-bit (or 8-bit) in Hugging Face layout, and an
/// optional fp32 bias [out]. Its adapters are not here: they sit in the slot the block's
/// `LayerContext` gives it, so one base serves any number of adapter sets.
public struct Linear: Sendable {
    public let spec: LinearSpec
    public let weight: QuantizedMatrix
    public let bias: [Float]?

    public init(_ spec: LinearSpec, weight: QuantizedMatrix, bias: [Float]? = nil) {
        self.spec = spec
        self.weight = weight
        self.bias = bias
    }
}

/// A frozen RMSNorm weight of a block.
public struct Norm: Sendable {
    public let spec: NormSpec
    public let weight: [Float]
}

/// One decoder layer's frozen weights, by name. Legend: C hidden.
public struct LayerWeights: Sendable {
    public let linears: [LinearSpec: Linear]
    public let norms: [String: Norm]

    public init(linears: [Linear], norms: [Norm]) {
        self.linears = Dictionary(uniqueKeysWithValues: linears.map { ($0.spec, $0) })
        self.norms = Dictionary(uniqueKeysWithValues: norms.map { ($0.spec.path, $0) })
    }

    /// The linear `s` (the family guarantees every one of its linears is there).
    public subscript(_ s: LinearSpec) -> Linear {
        guard let l = linears[s] else { preconditionFailure("layer has no \(s.path)") }
        return l
    }

    /// The norm `s`.
    public subscript(_ s: NormSpec) -> Norm {
        guard let n = norms[s.path] else { preconditionFailure("layer has no \(s.path)") }
        return n
    }

    /// The frozen weight of linear `s`.
    public func matrix(_ s: LinearSpec) -> QuantizedMatrix { self[s].weight }
}

/// What a block's forward and backward run their linears and norms through: the adapter
/// slots of one layer (LoRA adapters, adapters stacked frozen on them, trained norms), what
/// the adapters keep for the backward, and the dropout stream. Model code calls `forward`,
/// `backward` and `norm` and never sees which adapters there are, if any.
public struct LayerContext {
    let adapters: LayerAdapters?
    let saved: [LinearSpec: LoRAAdapter.Saved]
    let dropoutSeed: UInt64?
    /// The family's linears, whose order numbers the dropout streams.
    let order: [LinearSpec]
    /// What the frozen 4-bit products compute in (bf16: inputs and weights rounded to bf16,
    /// fp32 sums and outputs); adapters, norms and everything else stay fp32.
    let dtype: ComputeDType

    init(adapters: LayerAdapters?, acts: BlockActivations, dropoutSeed: UInt64?, order: [LinearSpec], dtype: ComputeDType = .fp32) {
        self.adapters = adapters
        saved = acts.lora
        self.dropoutSeed = dropoutSeed
        self.order = order
        self.dtype = dtype
    }

    /// The weight a norm computes with: its trained copy, or the frozen one.
    func norm(_ n: Norm) -> Parameter? { adapters?.norms[n.spec.path] }

    /// y[T, out] (+)= x·Wᵀ + adapters' deltas + bias.
    func forward(_ l: Linear, _ x: FloatBuffer, into y: UnsafeMutablePointer<Float>, tokens T: Int,
                 accumulate: Bool = false) throws {
        try LinearRun(l.weight, l.spec, context: self).forward(x, into: y, tokens: T, accumulate: accumulate)
        if let b = l.bias { b.withUnsafeBufferPointer { qk_add_bias(y, $0.baseAddress, Int64(T), Int64(l.weight.rows)) } }
    }

    /// dx[T, in] (+)= dy·W + adapters' shares; their gradients accumulated. `x`: the forward's input.
    func backward(_ l: Linear, _ dy: UnsafePointer<Float>, x: FloatBuffer, into dx: UnsafeMutablePointer<Float>, tokens T: Int,
                  accumulate: Bool) throws {
        try LinearRun(l.weight, l.spec, context: self).backward(dy, x: x, into: dx, tokens: T, accumulate: accumulate)
    }

    /// The seed of linear `m`'s dropout mask within a layer whose step seed is `seed`.
    static func dropoutSeed(_ seed: UInt64?, index: Int) -> UInt64? { seed.map { DropoutStream.linear($0, index: index) } }
}

/// One frozen linear, its adapter and the adapters stacked frozen on it, run together:
///   forward   y[T, out] (+)= x·Wᵀ + scale·(drop(x)·Aᵀ)·Bᵀ + Σ s_i·(x·A_iᵀ)·B_iᵀ
///   backward  dx[T, in] (+)= dy·W + LoRA's share + Σ s_i·(dy·B_i)·A_i; dA, dB accumulated
/// A DoRA adapter runs the frozen product itself (it rescales it: DoRA.swift); the stacked
/// adapters add after it.
struct LinearRun {
    let weight: QuantizedMatrix
    let adapter: LoRAAdapter?
    let frozen: [LoRAAdapter]
    let saved: LoRAAdapter.Saved?
    let dropoutSeed: UInt64?
    let dtype: ComputeDType

    init(_ weight: QuantizedMatrix, _ m: LinearSpec, context ctx: LayerContext) {
        self.weight = weight
        dtype = ctx.dtype
        adapter = ctx.adapters?.adapters[m]
        frozen = ctx.adapters?.frozen[m] ?? []
        saved = ctx.saved[m]
        dropoutSeed = adapter == nil ? nil : LayerContext.dropoutSeed(ctx.dropoutSeed, index: ctx.order.firstIndex(of: m) ?? 0)
        precondition(adapter == nil || saved != nil, "activations were allocated without room for the \(m) adapter")
    }

    func forward(_ x: FloatBuffer, into y: UnsafeMutablePointer<Float>, tokens T: Int, accumulate: Bool = false) throws {
        if let adapter, let saved, adapter.magnitude != nil {
            try StepProfile.measure(.lora) {
                try adapter.doraForward(x: x.base, y: y, tokens: T, accumulate: accumulate, saved: saved, dropoutSeed: dropoutSeed,
                                        base: weight, baseForward: frozenProduct(tokens: T, backward: false))
            }
        } else if let adapter, let saved, dtype.effective(tokens: T) == .bf16 {
            // bf16: LoRA in the frozen product's pass — u = x·Aᵀ from its rounded x (without
            // dropout; with it, drop(x)·Aᵀ first), scale·u·Bᵀ summed in its accumulators.
            let computeU = adapter.readsFrozenInput(dropoutSeed)
            if !computeU {
                try StepProfile.measure(.lora) { try adapter.computeU(x: x.base, tokens: T, saved: saved, dropoutSeed: dropoutSeed) }
            }
            try frozenProduct(tokens: T, backward: false, pass: .loraForward(adapter.factors, u: saved.u.base, computeU: computeU))(
                x.base, y, accumulate)
        } else {
            try frozenProduct(tokens: T, backward: false)(x.base, y, accumulate)
            if let adapter, let saved {
                try StepProfile.measure(.lora) {
                    try adapter.forward(x: x.base, y: y, tokens: T, saved: saved, dropoutSeed: dropoutSeed)
                }
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
        if let adapter, let saved, adapter.magnitude != nil {
            try StepProfile.measure(.lora) {
                try adapter.doraBackward(dy: dy, x: x.base, dx: dx, tokens: T, accumulate: accumulate, saved: saved,
                                         dropoutSeed: dropoutSeed, baseBackward: frozenProduct(tokens: T, backward: true))
            }
        } else if let adapter, let saved, dtype.effective(tokens: T) == .bf16 {
            // bf16: g = scale·dy·B in the frozen backward's pass, from its rounded dy; without
            // dropout g·A summed in its accumulators too (with it, dx gets drop'(g·A) after).
            let g = FloatBuffer(count: T * adapter.rank), foldsGA = adapter.readsFrozenInput(dropoutSeed)
            let pass: Pass = foldsGA
                ? .loraBackward(adapter.factors, g: g.base)
                : .side(QuantizedMatrix.SideProduct(e: adapter.b.value.base, count: adapter.rank, output: g.base, ld: adapter.rank,
                                                    alpha: adapter.scale))
            try frozenProduct(tokens: T, backward: true, pass: pass)(dy, dx, accumulate)
            try StepProfile.measure(.lora) {
                try adapter.backward(dy: dy, x: x.base, dx: foldsGA ? nil : dx, tokens: T, saved: saved, dropoutSeed: dropoutSeed,
                                     computedG: g, dtype: .bf16)
            }
        } else {
            try frozenProduct(tokens: T, backward: true)(dy, dx, accumulate)
            if let adapter, let saved {
                try StepProfile.measure(.lora) {
                    try adapter.backward(dy: dy, x: x.base, dx: dx, tokens: T, saved: saved, dropoutSeed: dropoutSeed)
                }
            }
        }
        if !frozen.isEmpty {
            try StepProfile.measure(.lora) {
                for f in frozen { try f.backwardFrozen(dy: dy, dx: dx, tokens: T) }
            }
        }
    }

    /// What runs in a frozen bf16 product's pass besides it, from the same rounded input: g =
    /// scale·dy·B beside the backward (`side`, when dropout keeps g·A out of it), or the adapter
    /// itself (u = x·Aᵀ unless given, and scale·u·Bᵀ; g = scale·dy·B and g·A).
    enum Pass {
        case plain
        case side(QuantizedMatrix.SideProduct)
        case loraForward(QuantizedMatrix.LoRAFactors, u: UnsafeMutablePointer<Float>, computeU: Bool)
        case loraBackward(QuantizedMatrix.LoRAFactors, g: UnsafeMutablePointer<Float>)
    }

    /// The frozen product over T rows in the context's dtype, profiled: y (+)= x·Wᵀ, or with
    /// `backward` the input gradient dx (+)= dy·W; with a `pass` other than plain (bf16 only)
    /// LoRA's products in the same pass (their multiply-adds counted with the frozen ones).
    private func frozenProduct(tokens T: Int, backward: Bool, pass: Pass = .plain) -> LoRAAdapter.BaseProduct {
        let (inWidth, outWidth) = backward ? (weight.rows, weight.cols) : (weight.cols, weight.rows)
        let extra: Int
        switch pass {
        case .plain: extra = 0
        case .side(let side): extra = inWidth * side.count
        case .loraForward(let f, _, let computeU): extra = (computeU ? inWidth : 0) * f.rank + outWidth * f.rank
        case .loraBackward(let f, _): extra = (inWidth + outWidth) * f.rank
        }
        let flops = 2 * Double(T * (weight.rows * weight.cols + extra))
        return { input, output, accumulate in
            try StepProfile.measure(backward ? .gemmBackward : .gemmForward, flops: flops) {
                let x = UnsafeBufferPointer(start: input, count: T * inWidth), y = UnsafeMutableBufferPointer(start: output, count: T * outWidth)
                let dtype = dtype.effective(tokens: T)
                if case .plain = pass {} else {
                    precondition(dtype == .bf16, "LoRA in the frozen product's pass runs in the bf16 kernels")
                }
                switch pass {
                case .plain where backward: try weight.backward(x, into: y, tokens: T, accumulate: accumulate, dtype: dtype)
                case .plain: try weight.forward(x, into: y, tokens: T, accumulate: accumulate, dtype: dtype)
                case .side(let side):
                    precondition(backward, "g beside the frozen product given to a forward")
                    try weight.backwardBF16(x, into: y, tokens: T, accumulate: accumulate, side: side)
                case .loraForward(let f, let u, let computeU):
                    precondition(!backward, "a LoRA forward pass given to a backward")
                    try weight.forwardBF16(x, into: y, tokens: T, accumulate: accumulate, lora: f, u: u, ldu: f.rank, computeU: computeU)
                case .loraBackward(let f, let g):
                    precondition(backward, "a LoRA backward pass given to a forward")
                    try weight.backwardBF16(x, into: y, tokens: T, accumulate: accumulate, lora: f, g: g, ldg: f.rank)
                }
            }
        }
    }
}
