import Foundation
import Quant

/// DoRA (weight-decomposed LoRA, PEFT's `use_dora`) on a frozen 4-bit linear W [out, in]: the
/// adapted weight is a direction times a trained magnitude m [out] per output row,
///
///   W' = m/n ⊙ (W + s·B·A),   n_j = ‖W_j + s·B_j·A‖, detached (no gradient flows through n)
///
/// With x' = drop(x) and z = x'·Wᵀ + s·(x'·Aᵀ)·Bᵀ, PEFT's forward (dora.py: the base product is
/// recomputed on the dropped input when dropout is on) is
///
///   y = x·Wᵀ + (m/n − 1) ⊙ x'·Wᵀ + m/n ⊙ s·(x'·Aᵀ)·Bᵀ = x·Wᵀ − x'·Wᵀ + c ⊙ z,   c = m/n
///
/// which without dropout is c ⊙ (x·Wᵀ + s·(x·Aᵀ)·Bᵀ). Backward, with dz = c ⊙ dy:
///
///   dm_j += Σ_t dy_tj · z_tj / n_j
///   dB, dA and LoRA's input gradient as plain LoRA's with dz for dy
///   dx (+)= dy·W + drop'(((c − 1) ⊙ dy)·W + s·(dz·B)·A)        without dropout: dz·W + s·(dz·B)·A
///
/// z [T, out] is kept from the forward (`Saved.z`), so the backward needs no third product.
/// n is computed without dequantizing W: n_j² = ‖W_j‖² + 2s·B_j·(W·Aᵀ)_j + s²·B_j·(A·Aᵀ)·B_jᵀ,
/// ‖W_j‖² once when the adapter is made and W·Aᵀ one r-row pass of the 4-bit GEMM; it is
/// recomputed only when A or B changed (a hash of their values), so one optimizer update
/// computes it once whatever the micro-batches, recomputations and evaluations.
extension LoRAAdapter {
    /// y (+)= x·Wᵀ over T rows (`accumulate`): the frozen product as the caller runs it.
    typealias BaseProduct = (_ input: UnsafePointer<Float>, _ output: UnsafeMutablePointer<Float>, _ accumulate: Bool) throws -> Void

    /// ‖W_j‖² of every row of `base`, in float64 (64 rows dequantized at a time).
    static func rowNormsSquared(_ base: QuantizedMatrix) -> [Double] {
        let n = base.cols
        var out = [Double](repeating: 0, count: base.rows), rows = [Float](repeating: 0, count: min(64, base.rows) * n)
        for start in stride(from: 0, to: base.rows, by: 64) {
            let range = start..<min(start + 64, base.rows)
            base.dequantize(rows: range, into: &rows)
            rows.withUnsafeBufferPointer { w in
                for (i, j) in range.enumerated() { out[j] = squaredNorm(w.baseAddress! + i * n, count: n) }
            }
        }
        return out
    }

    /// Σ x_k² over `count` values, summed in float64.
    static func squaredNorm(_ x: UnsafePointer<Float>, count: Int) -> Double {
        var s = 0.0
        for k in 0..<count { let v = Double(x[k]); s += v * v }
        return s
    }

    /// n [out]: ‖W_j + s·B_j·A‖ for the current A and B (DoRA only).
    func doraNorm(base: QuantizedMatrix) throws -> [Float] {
        guard let squares = baseRowNormsSquared else { preconditionFailure("\(a.name): not a DoRA adapter") }
        let key = Parameter.bitsHash([a, b])
        if let cache = doraNormCache, cache.key == key { return cache.norm }
        let r = rank, n = inFeatures, m = outFeatures, s = Double(scale)
        var p = [Float](repeating: 0, count: r * m), g = [Float](repeating: 0, count: r * r), bg = [Float](repeating: 0, count: m * r)
        // P [r, out] = A·Wᵀ: the 4-bit product with A's r rows as tokens, in fp32.
        try p.withUnsafeMutableBufferPointer { out in
            try base.forward(UnsafeBufferPointer(start: a.value.base, count: r * n), into: out, tokens: r)
        }
        // G [r, r] = A·Aᵀ, then BG [out, r] = B·G.
        try g.withUnsafeMutableBufferPointer { g in
            try ComputeRuntime.parallelSgemm(transposeA: false, transposeB: true, m: r, n: r, k: n, a: a.value.base, lda: n,
                                             b: a.value.base, ldb: n, beta: 0, c: g.baseAddress!, ldc: r)
            try bg.withUnsafeMutableBufferPointer { bg in
                try ComputeRuntime.parallelSgemm(transposeA: false, transposeB: false, m: m, n: r, k: r, a: b.value.base, lda: r,
                                                 b: g.baseAddress!, ldb: r, beta: 0, c: bg.baseAddress!, ldc: r)
            }
        }
        let bv = b.value.base
        let norm = (0..<m).map { j -> Float in
            var cross = 0.0, quad = 0.0
            for k in 0..<r {
                let bjk = Double(bv[j * r + k])
                cross += bjk * Double(p[k * m + j])
                quad += bjk * Double(bg[j * r + k])
            }
            return Float(max(squares[j] + 2 * s * cross + s * s * quad, 0).squareRoot())
        }
        doraNormCache = (key, norm)
        return norm
    }

    /// c = m / n, DoRA's per-row rescaling, in fp32 as PEFT divides.
    private func rescaling(_ norm: [Float]) -> [Float] {
        guard let magnitude else { preconditionFailure("\(a.name): not a DoRA adapter") }
        return (0..<outFeatures).map { magnitude.value.base[$0] / norm[$0] }
    }

    /// y[T, out] (+)= DoRA's output (the frozen product included); keeps z, n and u in `saved`.
    /// `baseForward` runs the frozen product.
    func doraForward(x: UnsafePointer<Float>, y: UnsafeMutablePointer<Float>, tokens T: Int, accumulate: Bool, saved: Saved,
                     dropoutSeed: UInt64?, base: QuantizedMatrix, baseForward: BaseProduct) throws {
        guard let z = saved.z else { preconditionFailure("activations were allocated without room for DoRA's \(a.name)") }
        let norm = try doraNorm(base: base)
        saved.doraNorm = norm
        let c = rescaling(norm), m = outFeatures
        let dropped = droppedInput(x, tokens: T, saved: saved, dropoutSeed: dropoutSeed)
        if let d = dropped {
            try baseForward(x, y, accumulate)                 // y (+)= x·Wᵀ
            try baseForward(d.base, z.base, false)            // z = x'·Wᵀ
            Self.axpy(-1, z.base, into: y, count: T * m)      // y −= x'·Wᵀ
            try addDelta(x: d.base, into: z.base, tokens: T, u: saved.u.base)
            Self.addScaledColumns(c, z.base, into: y, rows: T, cols: m, accumulate: true)
        } else {
            try baseForward(x, z.base, false)
            try addDelta(x: x, into: z.base, tokens: T, u: saved.u.base)
            Self.addScaledColumns(c, z.base, into: y, rows: T, cols: m, accumulate: accumulate)
        }
        withExtendedLifetime(dropped) {}
    }

    /// dx[T, in] (+)= DoRA's input gradient (the frozen product's included); dm, dA, dB
    /// accumulated. `saved` is the forward's; `baseBackward` runs dX (+)= dY·W.
    func doraBackward(dy: UnsafePointer<Float>, x: UnsafePointer<Float>, dx: UnsafeMutablePointer<Float>, tokens T: Int,
                      accumulate: Bool, saved: Saved, dropoutSeed: UInt64?, baseBackward: BaseProduct) throws {
        guard let magnitude, let z = saved.z, let norm = saved.doraNorm else {
            preconditionFailure("DoRA backward of \(a.name) without its forward")
        }
        let n = inFeatures, m = outFeatures
        let c = rescaling(norm)
        // dm_j += Σ_t dy_tj·z_tj / n_j
        var dots = [Float](repeating: 0, count: m)
        dots.withUnsafeMutableBufferPointer { acc in
            for t in 0..<T {
                let dyRow = dy + t * m, zRow = z.base + t * m
                for j in 0..<m { acc[j] += dyRow[j] * zRow[j] }
            }
        }
        for j in 0..<m { magnitude.grad.base[j] += dots[j] / norm[j] }
        // dz = c ⊙ dy drives LoRA's gradients.
        let dz = FloatBuffer(count: T * m), g = FloatBuffer(count: T * rank)
        Self.addScaledColumns(c, dy, into: dz.base, rows: T, cols: m, accumulate: false)
        let dropped = droppedInput(x, tokens: T, saved: saved, dropoutSeed: dropoutSeed)
        try accumulateFactorGradients(dy: dz.base, input: dropped.map { UnsafePointer($0.base) } ?? x, tokens: T, saved: saved, g: g.base)
        if let seed = dropoutSeed, let d = dropped {
            try baseBackward(dy, dx, accumulate)                                     // dx (+)= dy·W
            Self.axpy(-1, dy, into: dz.base, count: T * m)                           // (c − 1) ⊙ dy
            try baseBackward(dz.base, d.base, false)                                 // its ·W, into drop(x)'s room
            try productGA(g.base, tokens: T, into: d.base, accumulate: true)
            Self.applyDropout(into: dx, from: d.base, count: T * n, p: dropout, seed: seed, accumulate: true)
        } else {
            try baseBackward(dz.base, dx, accumulate)                                // dx (+)= dz·W
            try productGA(g.base, tokens: T, into: dx, accumulate: true)
        }
        withExtendedLifetime((dz, g, dropped)) {}
    }

    /// y[t, j] (+)= c[j]·z[t, j].
    static func addScaledColumns(_ c: [Float], _ z: UnsafePointer<Float>, into y: UnsafeMutablePointer<Float>, rows: Int, cols: Int,
                                 accumulate: Bool) {
        c.withUnsafeBufferPointer { c in
            for t in 0..<rows {
                let zRow = z + t * cols, yRow = y + t * cols
                if accumulate {
                    for j in 0..<cols { yRow[j] += c[j] * zRow[j] }
                } else {
                    for j in 0..<cols { yRow[j] = c[j] * zRow[j] }
                }
            }
        }
    }

    /// y += alpha·x over `count` values.
    static func axpy(_ alpha: Float, _ x: UnsafePointer<Float>, into y: UnsafeMutablePointer<Float>, count: Int) {
        for i in 0..<count { y[i] += alpha * x[i] }
    }
}
