import Foundation
import QuantKernels
import Quant

/// One LoRA adapter on a frozen linear W [out, in], PEFT's `lora.Linear` with bias "none":
///
///   y[T, out] = x·Wᵀ + scale · (drop(x)·Aᵀ)·Bᵀ          A [r, in], B [out, r]
///
/// Only the adapter's part is here; the frozen product runs in the 4-bit GEMM. Dropout draws
/// its mask from a counter-based hash of (seed, element), so the backward and a checkpointed
/// recomputation regenerate the same mask without storing it. With DoRA (`magnitude`) the
/// frozen product is rescaled per output row as DoRA.swift describes.
public final class LoRAAdapter {
    public let a: Parameter
    public let b: Parameter
    /// DoRA's magnitude m [out] (PEFT's `lora_magnitude_vector`); nil for plain LoRA.
    public let magnitude: Parameter?
    /// ‖W_j‖² of the frozen rows, float64, with DoRA.
    let baseRowNormsSquared: [Double]?
    /// DoRA's row norms n for the values of A and B whose hash is `key`.
    var doraNormCache: (key: UInt64, norm: [Float])?
    public let scale: Float
    public let dropout: Float
    public var rank: Int { a.shape[0] }
    public var inFeatures: Int { a.shape[1] }
    public var outFeatures: Int { b.shape[0] }

    /// A [r, in] Kaiming-uniform with a = √5 (bound 1/√in) from `rng` (with `gaussian`
    /// initialization N(0, 1/r²)), B [out, r] zero: PEFT's default, which leaves the model
    /// unchanged at step 0. With `config.useDoRA`, `base` (the
    /// frozen weight) gives DoRA's magnitude its initial value ‖W_j‖ per row, as PEFT's.
    public init(name: String, rows out: Int, cols inFeatures: Int, config: LoRAConfig,
                rng: inout SplitMix64, base: QuantizedMatrix? = nil) {
        let r = config.rank, bound = 1 / Double(inFeatures).squareRoot()
        let values: [Float] = config.initialization == .gaussian
            // PEFT's "gaussian": A ~ N(0, std 1/r).
            ? (0..<(r * inFeatures)).map { _ in Float(rng.nextNormal() / Double(r)) }
            : (0..<(r * inFeatures)).map { _ in Float((rng.nextUnitDouble() * 2 - 1) * bound) }
        a = Parameter(name: "\(name).lora_A.weight", shape: [r, inFeatures], values: values)
        b = Parameter(name: "\(name).lora_B.weight", shape: [out, r])
        scale = config.scale
        dropout = config.dropout
        if config.useDoRA {
            guard let base else { preconditionFailure("DoRA adapter \(name) needs its base weight") }
            precondition(base.rows == out && base.cols == inFeatures, "DoRA adapter \(name): base [\(base.rows), \(base.cols)]")
            let squares = Self.rowNormsSquared(base)
            baseRowNormsSquared = squares
            magnitude = Parameter(name: "\(name).lora_magnitude_vector", shape: [out], values: squares.map { Float($0.squareRoot()) })
        } else {
            baseRowNormsSquared = nil
            magnitude = nil
        }
    }

    /// What a forward keeps for the backward: u = drop(x)·Aᵀ [T, r]; and where dropout writes
    /// drop(x) (shared by every adapter, at least [T, in]; nil: allocated per call). With DoRA
    /// (`doraRows` out > 0) also z [T, out], the product before its rescaling, and the row norms.
    public final class Saved {
        public let u: FloatBuffer
        public let scratch: FloatBuffer?
        public let z: FloatBuffer?
        var doraNorm: [Float]?
        public init(tokens: Int, rank: Int, arena: FloatArena? = nil, scratch: FloatBuffer? = nil, doraRows: Int = 0) {
            u = arena?.take(tokens * rank) ?? FloatBuffer(count: tokens * rank)
            self.scratch = scratch
            z = doraRows > 0 ? arena?.take(tokens * doraRows) ?? FloatBuffer(count: tokens * doraRows) : nil
        }

        func dropped(_ count: Int) -> FloatBuffer {
            if let scratch, scratch.count >= count { return scratch }
            return FloatBuffer(count: count)
        }
    }

    /// y[T, out] += scale · (drop(x)·Aᵀ)·Bᵀ; writes saved.u. `dropoutSeed` nil: no dropout
    /// (evaluation, generation).
    func forward(x: UnsafePointer<Float>, y: UnsafeMutablePointer<Float>, tokens T: Int, saved: Saved,
                 dropoutSeed: UInt64?) throws {
        let dropped = droppedInput(x, tokens: T, saved: saved, dropoutSeed: dropoutSeed)
        let input = dropped.map { UnsafePointer($0.base) } ?? x
        try addDelta(x: input, into: y, tokens: T, u: saved.u.base)
        withExtendedLifetime(dropped) {}
    }

    /// saved.u = drop(x)·Aᵀ alone, for a frozen product that adds scale·u·Bᵀ in its own pass.
    func computeU(x: UnsafePointer<Float>, tokens T: Int, saved: Saved, dropoutSeed: UInt64?) throws {
        let dropped = droppedInput(x, tokens: T, saved: saved, dropoutSeed: dropoutSeed)
        try inputTimesA(dropped.map { UnsafePointer($0.base) } ?? x, tokens: T, into: saved.u.base)
        withExtendedLifetime(dropped) {}
    }

    /// A, B and scale as the bf16 kernels take them.
    var factors: QuantizedMatrix.LoRAFactors {
        QuantizedMatrix.LoRAFactors(a: a.value.base, b: b.value.base, rank: rank, scale: scale)
    }

    /// Whether the forward multiplies A by the frozen product's own input (no dropout this pass).
    func readsFrozenInput(_ dropoutSeed: UInt64?) -> Bool { dropoutSeed == nil || dropout == 0 }

    /// Given dy [T, out], the forward's x [T, in] and saved.u:
    ///   dB += scale · dyᵀ·u,  g = scale · dy·B [T, r],  dA += gᵀ·drop(x),  dx += drop'(g·A)
    /// `dx` may be nil when x needs no gradient. `computedG`: g already computed (beside the
    /// frozen backward, from the same dy). `dtype` bf16: dA and dB from bf16-rounded operands.
    func backward(dy: UnsafePointer<Float>, x: UnsafePointer<Float>, dx: UnsafeMutablePointer<Float>?, tokens T: Int,
                  saved: Saved, dropoutSeed: UInt64?, computedG: FloatBuffer? = nil, dtype: ComputeDType = .fp32) throws {
        let n = inFeatures
        let g = computedG ?? FloatBuffer(count: T * rank)
        let dropped = droppedInput(x, tokens: T, saved: saved, dropoutSeed: dropoutSeed)
        try accumulateFactorGradients(dy: dy, input: dropped.map { UnsafePointer($0.base) } ?? x, tokens: T, saved: saved, g: g.base,
                                      gReady: computedG != nil, dtype: dtype)
        if let dx {
            if let seed = dropoutSeed, let t = dropped {   // reuse its buffer for the product
                try productGA(g.base, tokens: T, into: t.base, accumulate: false)
                Self.applyDropout(into: dx, from: t.base, count: T * n, p: dropout, seed: seed, accumulate: true)
            } else {
                try productGA(g.base, tokens: T, into: dx, accumulate: true)
            }
        }
        withExtendedLifetime(dropped) {}
    }

    /// dB += scale · dyᵀ·u,  g [T, r] = scale · dy·B (unless `gReady`),  dA += gᵀ·input, `input`
    /// being what the forward multiplied by A (drop(x), or x) and u = input·Aᵀ the forward's.
    func accumulateFactorGradients(dy: UnsafePointer<Float>, input: UnsafePointer<Float>, tokens T: Int, saved: Saved,
                                   g: UnsafeMutablePointer<Float>, gReady: Bool = false, dtype: ComputeDType = .fp32) throws {
        let r = rank, n = inFeatures, m = outFeatures
        if !gReady { try scaledDyB(dy, tokens: T, into: g) }
        if dtype == .bf16 { return try accumulateFactorGradientsBF16(dy: dy, input: input, tokens: T, u: saved.u.base, g: g) }
        try ComputeRuntime.parallelSgemm(transposeA: true, transposeB: false, m: m, n: r, k: T, alpha: scale, a: dy, lda: m,
                                         b: saved.u.base, ldb: r, beta: 1, c: b.grad.base, ldc: r)
        try ComputeRuntime.parallelSgemm(transposeA: true, transposeB: false, m: r, n: n, k: T, a: g, lda: r,
                                         b: input, ldb: n, beta: 1, c: a.grad.base, ldc: n)
    }

    /// dB += scale·dyᵀ·u and dA += gᵀ·input in the bf16 kernels (operands rounded to bf16, fp32
    /// sums): reductions over the T rows with r on the other side, which OpenBLAS runs at half
    /// its speed (it copies dy and the input for 16 multiply-adds an element). As products of
    /// the kernels' shape: [r, out] = (scale·u)ᵀ·dy, transposed into dB, and [r, in] = gᵀ·input.
    private func accumulateFactorGradientsBF16(dy: UnsafePointer<Float>, input: UnsafePointer<Float>, tokens T: Int,
                                               u: UnsafePointer<Float>, g: UnsafePointer<Float>) throws {
        let r = rank, n = inFeatures, m = outFeatures
        let lhs = FloatBuffer(count: 2 * r * T), dBt = FloatBuffer(count: r * m)
        let us = lhs.base, gt = lhs.base + r * T
        for t in 0..<T {
            for i in 0..<r {
                us[i * T + t] = scale * u[t * r + i]
                gt[i * T + t] = g[t * r + i]
            }
        }
        try ComputeRuntime.bf16Product(weights: dy, rows: T, cols: m, transposeW: false, input: us, tokens: r, out: dBt.base)
        let db = b.grad.base
        for o in 0..<m {
            for i in 0..<r { db[o * r + i] += dBt.base[i * m + o] }
        }
        try ComputeRuntime.bf16Product(weights: input, rows: T, cols: n, transposeW: false, input: gt, tokens: r, out: a.grad.base,
                                       accumulate: true)
    }

    /// y[T, out] += scale · (x·Aᵀ)·Bᵀ for an adapter stacked frozen on another: no dropout,
    /// nothing kept (u [T, r] lives for this call only).
    func forwardFrozen(x: UnsafePointer<Float>, y: UnsafeMutablePointer<Float>, tokens T: Int) throws {
        let u = FloatBuffer(count: T * rank)
        try withExtendedLifetime(u) { try addDelta(x: x, into: y, tokens: T, u: u.base) }
    }

    /// dx[T, in] += scale · (dy·B)·A: a frozen adapter's share of the input gradient; no dA, dB.
    func backwardFrozen(dy: UnsafePointer<Float>, dx: UnsafeMutablePointer<Float>, tokens T: Int) throws {
        let g = FloatBuffer(count: T * rank)
        try withExtendedLifetime(g) {
            try scaledDyB(dy, tokens: T, into: g.base)
            try productGA(g.base, tokens: T, into: dx, accumulate: true)
        }
    }

    /// y[T, out] += scale · (x·Aᵀ)·Bᵀ, leaving x·Aᵀ in u [T, r].
    func addDelta(x: UnsafePointer<Float>, into y: UnsafeMutablePointer<Float>, tokens T: Int,
                          u: UnsafeMutablePointer<Float>) throws {
        try inputTimesA(x, tokens: T, into: u)
        try ComputeRuntime.parallelSgemm(transposeA: false, transposeB: true, m: T, n: outFeatures, k: rank, alpha: scale, a: u,
                                         lda: rank, b: b.value.base, ldb: rank, beta: 1, c: y, ldc: outFeatures)
    }

    /// u [T, r] = x·Aᵀ.
    func inputTimesA(_ x: UnsafePointer<Float>, tokens T: Int, into u: UnsafeMutablePointer<Float>) throws {
        try ComputeRuntime.parallelSgemm(transposeA: false, transposeB: true, m: T, n: rank, k: inFeatures, a: x, lda: inFeatures,
                                         b: a.value.base, ldb: inFeatures, beta: 0, c: u, ldc: rank)
    }

    /// g [T, r] = scale · dy·B.
    func scaledDyB(_ dy: UnsafePointer<Float>, tokens T: Int, into g: UnsafeMutablePointer<Float>) throws {
        try ComputeRuntime.parallelSgemm(transposeA: false, transposeB: false, m: T, n: rank, k: outFeatures, alpha: scale, a: dy,
                                         lda: outFeatures, b: b.value.base, ldb: rank, beta: 0, c: g, ldc: rank)
    }

    /// out [T, in] (+)= g·A.
    func productGA(_ g: UnsafePointer<Float>, tokens T: Int, into out: UnsafeMutablePointer<Float>, accumulate: Bool) throws {
        try ComputeRuntime.parallelSgemm(transposeA: false, transposeB: false, m: T, n: inFeatures, k: rank, a: g, lda: rank,
                                         b: a.value.base, ldb: inFeatures, beta: accumulate ? 1 : 0, c: out, ldc: inFeatures)
    }

    /// drop(x) [T, in] in the saved scratch when dropout is on (a seed and p > 0), else nil:
    /// the forward and the backward regenerate the same mask from the seed.
    func droppedInput(_ x: UnsafePointer<Float>, tokens T: Int, saved: Saved, dropoutSeed: UInt64?) -> FloatBuffer? {
        guard let seed = dropoutSeed, dropout > 0 else { return nil }
        let d = saved.dropped(T * inFeatures)
        Self.applyDropout(into: d.base, from: x, count: T * inFeatures, p: dropout, seed: seed)
        return d
    }

    /// out[i] = x[i] / (1 − p) where the hash of (seed, i) keeps it, else 0 (torch's
    /// inverted dropout), or out[i] += that when `accumulate`. Same seed, same mask:
    /// `DropoutStream.drops`, computed by the C kernel (vectorized, on the OpenMP threads).
    static func applyDropout(into out: UnsafeMutablePointer<Float>, from x: UnsafePointer<Float>, count: Int, p: Float,
                             seed: UInt64, accumulate: Bool = false) {
        let keep = 1 / (1 - p), threshold = UInt64(Double(p) * 0x1p53)
        qk_lora_dropout(out, x, Int64(count), seed, threshold, keep, accumulate ? 1 : 0, 0)
    }
}
