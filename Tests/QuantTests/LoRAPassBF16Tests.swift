import Quant
import XCTest

/// A LoRA adapter run in the frozen bf16 product's pass (forwardBF16/backwardBF16 with
/// `lora:`): u = x·Aᵀ (or g = scale·dY·B) bit for bit what `SideProduct` gives, and the output
///   forward   y = x·Wᵀ + bf16(scale·u)·bf16(B)ᵀ (+ y0)
///   backward dx = dY·W + bf16(g)·bf16(A) (+ dx0)
/// within the accumulation bound of its exact value from the same rounded operands (the
/// scalar reference for the frozen part, float64 for the low-rank term): K + r products, each
/// exact in fp32, summed in fp32 (BF16GEMMTests' γ with m = K + r).
extension BF16GEMMTests {
    func testLoRAInTheFrozenPassMatchesItsExactValue() throws {
        try requireBF16()
        var rng = NormalSource(seed: 57)
        // K past one 768-wide slice both ways, cols not a multiple of 16 (tiles), odd K and rank.
        for (format, bs, out, inp) in [(QuantFormat.nf4, 64, 192, 576), (.q4_1, 32, 801, 96), (.q4_0, 32, 64, 1024), (.fp4, 32, 19, 37),
                                       (.q8_0, 32, 48, 64)] {
            let w = try testMatrix(format, blockSize: bs, rows: out, cols: inp, scale: 0.05, doubleQuant: false, rng: &rng)
            let wd = w.dequantize()
            for (rank, T, threads) in [(16, 130, 2), (8, 9, 2), (5, 64, 1), (16, 256, 1), (3, 17, 2), (40, 33, 2)] {
                let a = rng.array(rank * inp, scale: 0.1), b = rng.array(out * rank, scale: 0.1)
                let x = rng.array(T * inp), dy = rng.array(T * out), y0 = rng.array(T * out), dx0 = rng.array(T * inp)
                let scale: Float = rank == 5 ? 0.3 : 2
                let ld = rank + 3   // u's and g's rows are wider than rank: the rest stays untouched
                for accumulate in [false, true] {
                    let at = "\(format) \(out)x\(inp) r\(rank) T=\(T) threads=\(threads) accumulate=\(accumulate)"
                    // forward, u computed in the pass, then u given (as after dropout)
                    for computeU in [true, false] {
                        var y = accumulate ? y0 : [Float](repeating: .nan, count: T * out)
                        var u = computeU ? [Float](repeating: .nan, count: T * ld) : rng.array(T * ld)
                        let uGiven = u
                        try run(w, a, b, rank, scale) { lora in
                            try x.withUnsafeBufferPointer { xp in
                                try y.withUnsafeMutableBufferPointer {
                                    try w.forwardBF16(xp, into: $0, tokens: T, accumulate: accumulate, threads: threads, lora: lora,
                                                      u: &u, ldu: ld, computeU: computeU)
                                }
                            }
                        }
                        let way = "forward (u \(computeU ? "computed" : "given")) " + at
                        if computeU {
                            let side = try sideProduct(w, e: a, count: rank, alpha: 1, backward: false, input: x, T: T, threads: threads)
                            for t in 0..<T {
                                XCTAssertEqual(Array(u[(t * ld)..<(t * ld + rank)]), Array(side[(t * rank)..<((t + 1) * rank)]), "u of \(way), row \(t)")
                                XCTAssertTrue(u[(t * ld + rank)..<((t + 1) * ld)].allSatisfy(\.isNaN), "\(way): u's row \(t) written past rank")
                            }
                        } else {
                            XCTAssertEqual(u, uGiven, "\(way): a given u is read only")
                        }
                        var frozen = accumulate ? y0 : [Float](repeating: 0, count: T * out)
                        try w.forwardBF16Reference(x, into: &frozen, tokens: T, accumulate: accumulate)
                        let (ref, absSum) = Self.exact(frozen: frozen, input: x, width: inp, weights: wd, forward: true,
                                                      low: u, ld: ld, lowScale: scale, factor: b, rank: rank, out: out, T: T)
                        assertWithinLowRankAccumulation(y, ref, absSum, frozen: frozen, y0: accumulate ? y0 : nil, K: inp + rank, way)
                    }
                    // backward: g in the pass
                    var dx = accumulate ? dx0 : [Float](repeating: .nan, count: T * inp)
                    var g = [Float](repeating: .nan, count: T * ld)
                    try run(w, a, b, rank, scale) { lora in
                        try dy.withUnsafeBufferPointer { dyp in
                            try dx.withUnsafeMutableBufferPointer {
                                try w.backwardBF16(dyp, into: $0, tokens: T, accumulate: accumulate, threads: threads, lora: lora, g: &g, ldg: ld)
                            }
                        }
                    }
                    let way = "backward " + at
                    let side = try sideProduct(w, e: b, count: rank, alpha: scale, backward: true, input: dy, T: T, threads: threads)
                    for t in 0..<T {
                        XCTAssertEqual(Array(g[(t * ld)..<(t * ld + rank)]), Array(side[(t * rank)..<((t + 1) * rank)]), "g of \(way), row \(t)")
                        XCTAssertTrue(g[(t * ld + rank)..<((t + 1) * ld)].allSatisfy(\.isNaN), "\(way): g's row \(t) written past rank")
                    }
                    var frozen = accumulate ? dx0 : [Float](repeating: 0, count: T * inp)
                    try w.backwardBF16Reference(dy, into: &frozen, tokens: T, accumulate: accumulate)
                    let (ref, absSum) = Self.exact(frozen: frozen, input: dy, width: out, weights: wd, forward: false,
                                                  low: g, ld: ld, lowScale: 1, factor: a, rank: rank, out: inp, T: T)
                    assertWithinLowRankAccumulation(dx, ref, absSum, frozen: frozen, y0: accumulate ? dx0 : nil, K: out + rank, way)
                }
            }
        }
    }

    /// A run with the factors' pointers.
    private func run(_ w: QuantizedMatrix, _ a: [Float], _ b: [Float], _ rank: Int, _ scale: Float,
                     _ body: (QuantizedMatrix.LoRAFactors) throws -> Void) throws {
        try a.withUnsafeBufferPointer { ap in
            try b.withUnsafeBufferPointer { bp in
                try body(QuantizedMatrix.LoRAFactors(a: ap.baseAddress!, b: bp.baseAddress!, rank: rank, scale: scale))
            }
        }
    }

    /// The side product alone (SideProductBF16Tests checks it against the dense bf16 product).
    private func sideProduct(_ w: QuantizedMatrix, e: [Float], count: Int, alpha: Float, backward: Bool, input: [Float], T: Int,
                             threads: Int) throws -> [Float] {
        var main = [Float](repeating: 0, count: T * (backward ? w.cols : w.rows)), side = [Float](repeating: 0, count: T * count)
        try input.withUnsafeBufferPointer { ip in
            try e.withUnsafeBufferPointer { ep in
                try main.withUnsafeMutableBufferPointer { mp in
                    try side.withUnsafeMutableBufferPointer { sp in
                        let s = QuantizedMatrix.SideProduct(e: ep.baseAddress!, count: count, output: sp.baseAddress!, ld: count, alpha: alpha)
                        if backward {
                            try w.backwardBF16(ip, into: mp, tokens: T, threads: threads, side: s)
                        } else {
                            try w.forwardBF16(ip, into: mp, tokens: T, threads: threads, side: s)
                        }
                    }
                }
            }
        }
        return side
    }

    /// The exact output from the rounded operands: the scalar reference's frozen part (fp64
    /// sums, stored in fp32) plus Σ_i bf16(lowScale·low[t][i])·bf16(factor) in fp64 — forward
    /// factor B [out, r] (low·Bᵀ), backward factor A [r, out] (low·A) — and Σ|terms| of both.
    static func exact(frozen: [Float], input: [Float], width: Int, weights wd: [Float], forward: Bool, low: [Float], ld: Int,
                      lowScale: Float, factor: [Float], rank: Int, out: Int, T: Int) -> ([Double], [Double]) {
        let r16 = GGMLBlockTilePathTests.roundBF16
        var ref = frozen.map(Double.init), absSum = [Double](repeating: 0, count: T * out)
        let cols = forward ? width : out   // W [rows, cols]
        for t in 0..<T {
            for j in 0..<out {
                var s = 0.0
                for k in 0..<width {   // Σ|x||w| of the frozen product
                    let wv = forward ? wd[j * cols + k] : wd[k * cols + j]
                    s += abs(Double(r16(input[t * width + k])) * Double(r16(wv)))
                }
                var lowSum = 0.0
                for i in 0..<rank {
                    let f = forward ? factor[j * rank + i] : factor[i * out + j]
                    let p = Double(r16(lowScale * low[t * ld + i])) * Double(r16(f))
                    lowSum += p
                    s += abs(p)
                }
                ref[t * out + j] += lowSum
                absSum[t * out + j] = s
            }
        }
        return (ref, absSum)
    }

    /// |got − exact| ≤ γ_{K+r}·(Σ|terms| + |y0|) + the reference's own error: half an fp32 ulp
    /// of its stored frozen part and (K + 2)·2⁻⁵³·Σ|terms| of its fp64 sums.
    func assertWithinLowRankAccumulation(_ got: [Float], _ ref: [Double], _ absSum: [Double], frozen: [Float], y0: [Float]?, K: Int,
                                         _ message: String, file: StaticString = #filePath, line: UInt = #line) {
        let g = Self.gamma(K: K)
        assertBound(got, ref, bound: {
            g * (absSum[$0] + abs(Double(y0?[$0] ?? 0))) + Double(K + 2) * 0x1p-53 * absSum[$0] + Double(frozen[$0].ulp) / 2
        }, message, file: file, line: line)
    }
}
