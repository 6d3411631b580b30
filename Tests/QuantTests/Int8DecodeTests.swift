import Quant
import QuantKernels
import XCTest

/// Decoding's products with 8-bit activations (`ComputeDType.int8`, qgemv_int8_avx512.c): X's
/// quantization against its definition recomputed here, the product against float64 of the
/// dequantized W and the quantized X, and against the fp32 product within the quantization's
/// own bound.
final class Int8DecodeTests: XCTestCase {
    static let formats: [QuantFormat] = [.q4_0, .q4_1, .q5_0, .q5_1, .q8_0, .q4_K, .q5_K, .q6_K]

    func requireInt8() throws {
        let w = try QuantizedMatrix(quantizing: [Float](repeating: 0.5, count: 32 * 32), rows: 32, cols: 32, format: .q4_0)
        XCTAssertEqual(w.int8DecodeApplies, ComputeRuntime.int8DecodingAvailable)
        guard ComputeRuntime.int8DecodingAvailable else {
            // Elsewhere .int8 runs the fp32 product: the same bits.
            let x = (0..<64).map { Float($0 % 7) - 3 }
            XCTAssertEqual(try w.forward(x, tokens: 2, dtype: .int8), try w.forward(x, tokens: 2, dtype: .fp32))
            throw XCTSkip("this CPU (\(CPUInfo.current.brand)) has no AVX512_VNNI: int8 decoding runs in fp32, as checked")
        }
    }

    /// X quantized as in C: per block of 32, d = amax/127 in fp32 (amax/127 rounded once),
    /// q = x/d rounded half away from zero, s = d·Σq; the pair layout is the same bytes with the
    /// halves of two blocks interleaved; a block holding NaN or ∞ gets d = s = NaN and q = 0.
    static func quantize(_ x: [Float]) -> (q: [Int8], d: [Float], s: [Float]) {
        var q = [Int8](), d = [Float](), s = [Float]()
        for b in stride(from: 0, to: x.count, by: 32) {
            let block = x[b..<b + 32]
            guard block.allSatisfy(\.isFinite) else {
                q += [Int8](repeating: 0, count: 32)
                d.append(.nan)
                s.append(.nan)
                continue
            }
            let db = block.map(abs).max()! / 127
            let codes = block.map { db == 0 ? Int8(0) : Int8(max(-127, min(127, ($0 / db).rounded(.toNearestOrAwayFromZero)))) }
            q += codes
            d.append(db)
            s.append(db * Float(codes.reduce(0) { $0 + Int($1) }))
        }
        return (q, d, s)
    }

    static func quantizeInC(_ x: [Float], pairLayout: Bool) -> (q: [Int8], ds: [Float]) {
        var q = [Int8](repeating: 0, count: x.count), ds = [Float](repeating: 0, count: x.count / 16)
        qk_quantize_activations_q8(x, Int64(x.count), pairLayout ? 1 : 0, &q, &ds)
        return (q, ds)
    }

    func testQuantizationFollowsItsDefinition() throws {
        var rng = NormalSource(seed: 41)
        for n in [32, 64, 96, 576] {
            var x = rng.array(n, scale: 3)
            for j in 0..<32 { x[j] = 0 }                           // an all-zero block: d = 0, q = 0
            if n >= 96 { x[70] = .nan; x[40] = .infinity }          // blocks 2 and 1 poisoned
            if n >= 576 { x[500] = 1e-42; x[100] = -x[100].magnitude * 1000 }   // a subnormal; one large value
            let want = Self.quantize(x)
            let (q, ds) = Self.quantizeInC(x, pairLayout: false)
            XCTAssertEqual(q, want.q, "n=\(n)")
            for b in 0..<n / 32 {
                XCTAssertEqual(ds[2 * b].bitPattern, want.d[b].bitPattern, "d of block \(b), n=\(n)")
                XCTAssertEqual(ds[2 * b + 1].bitPattern, want.s[b].bitPattern, "s of block \(b), n=\(n)")
            }
            if n >= 96 { XCTAssertTrue(ds[0] == 0 && ds[2].isNaN && ds[4].isNaN, "n=\(n)") }
            // The pair layout: [a0..15, b0..15, a16..31, b16..31] per pair, a lone last block as is.
            let (paired, pairedDS) = Self.quantizeInC(x, pairLayout: true)
            XCTAssertEqual(pairedDS.map(\.bitPattern), ds.map(\.bitPattern))
            let nb = n / 32
            for b in 0..<nb {
                let first = b - b % 2, lone = first + 1 >= nb
                for j in 0..<32 {
                    let at = lone ? b * 32 + j : first * 32 + (j < 16 ? 0 : 32) + (b % 2) * 16 + j % 16
                    XCTAssertEqual(paired[at], want.q[b * 32 + j], "pair layout block \(b) element \(j), n=\(n)")
                }
            }
        }
    }

    /// Y against float64 of the dequantized W and the quantized X (every format; a pair of
    /// blocks and a lone one; rows not a multiple of 16; T from 1 to past 8; 1 and 2 threads;
    /// written and accumulated), and against the fp32 product within the quantization's bound
    /// Σ_b d_x,b/2 · Σ_j∈b |w_j|.
    func testForwardMatchesFloat64OfTheQuantizedInput() throws {
        try requireInt8()
        var rng = NormalSource(seed: 7)
        for format in Self.formats {
            let shapes = format.isKQuant ? [(37, 256), (16, 768)] : [(37, 96), (48, 64), (64, 576), (16, 32)]
            for (out, inp) in shapes {
                let w = try testMatrix(format, blockSize: format.defaultBlockSize, rows: out, cols: inp, scale: 0.05, doubleQuant: false, rng: &rng)
                XCTAssertTrue(w.int8DecodeApplies)
                let wd = w.dequantize().map(Double.init)
                for T in [1, 2, 5, 9] {
                    let x = rng.array(T * inp), y0 = rng.array(T * out)
                    let fp32 = try w.forward(x, tokens: T, dtype: .fp32)
                    var ref = [Double](repeating: 0, count: T * out), abs = ref, quantBound = ref
                    for t in 0..<T {
                        let xq = Self.quantize(Array(x[t * inp..<(t + 1) * inp]))
                        for r in 0..<out {
                            for j in 0..<inp {
                                let xj = Double(xq.d[j / 32]) * Double(xq.q[j]), wj = wd[r * inp + j]
                                ref[t * out + r] += wj * xj
                                abs[t * out + r] += Swift.abs(wj * xj)
                                quantBound[t * out + r] += Swift.abs(wj) * Double(xq.d[j / 32]) / 2
                            }
                        }
                    }
                    for threads in [1, 2] {
                        let at = "\(format) \(out)x\(inp) T=\(T) threads=\(threads)"
                        let opt = GEMMOptions(threads: threads)
                        let y = try w.forward(x, tokens: T, options: opt, dtype: .int8)
                        var ya = y0
                        try x.withUnsafeBufferPointer { xp in
                            try ya.withUnsafeMutableBufferPointer { try w.forward(xp, into: $0, tokens: T, accumulate: true, options: opt, dtype: .int8) }
                        }
                        // fp32: one rounding of d_w·d_x (and of c_w·s_x) per block, W's own
                        // dequantization (d·c + m rounded), and the sums of inp/32 blocks.
                        let eps = Double(inp / 32 + 8) * 0x1p-24
                        for i in 0..<(T * out) {
                            XCTAssertLessThanOrEqual(Swift.abs(Double(y[i]) - ref[i]), 2 * eps * abs[i] + 1e-30, "\(at) [\(i)]: \(y[i]) vs \(ref[i])")
                            XCTAssertLessThanOrEqual(Swift.abs(Double(ya[i]) - ref[i] - Double(y0[i])),
                                                     2 * eps * abs[i] + 2 * 0x1p-24 * Swift.abs(Double(y0[i])) + 1e-30, "accumulate \(at) [\(i)]")
                            XCTAssertLessThanOrEqual(Swift.abs(Double(y[i]) - Double(fp32[i])), quantBound[i] + 4 * eps * abs[i] + 1e-6,
                                                     "against fp32 \(at) [\(i)]")
                        }
                    }
                }
            }
        }
    }

    /// With each block's scale set by one outlier (1000/127 ≈ 7.9 a step), X's other elements
    /// round to 0 or ±1 step: Y moves away from fp32 — the product runs on the quantized X, it
    /// is not the fp32 path under another name.
    func testTheProductRunsOnTheQuantizedInput() throws {
        try requireInt8()
        var rng = NormalSource(seed: 3)
        let (out, inp) = (64, 256)
        let w = try QuantizedMatrix(quantizing: rng.array(out * inp, scale: 0.05), rows: out, cols: inp, format: .q4_1)
        var x = rng.array(inp)
        for b in 0..<(inp / 32) { x[b * 32] = 1000 }        // each block's scale set by one outlier
        let y = try w.forward(x, tokens: 1, dtype: .int8), fp32 = try w.forward(x, tokens: 1, dtype: .fp32)
        let worst = zip(y, fp32).map { Swift.abs($0 - $1) }.max()!
        XCTAssertGreaterThan(worst, 1e-2)
    }

    /// A NaN or ∞ in a row of X makes that row of Y NaN, the other rows finite.
    func testNaNAndInfinityInTheInputGiveNaN() throws {
        try requireInt8()
        var rng = NormalSource(seed: 9)
        let (out, inp, T) = (48, 256, 4)
        for format in Self.formats {
            let w = try testMatrix(format, blockSize: format.defaultBlockSize, rows: out, cols: inp, scale: 0.05, doubleQuant: false, rng: &rng)
            var x = rng.array(T * inp)
            x[1 * inp + 230] = .nan     // the last block
            x[2 * inp + 5] = .infinity  // a pair's first block
            let y = try w.forward(x, tokens: T, dtype: .int8)
            for t in 0..<T {
                let row = y[t * out..<(t + 1) * out]
                XCTAssertEqual(row.allSatisfy(\.isNaN), t == 1 || t == 2, "\(format) row \(t)")
                XCTAssertFalse(t != 1 && t != 2 && row.contains { !$0.isFinite }, "\(format) row \(t)")
            }
        }
    }

    /// Formats without an int8 path (NF4 and FP4's codebooks; Q2_K, Q3_K not written) run
    /// the fp32 product bit for bit.
    func testOtherFormatsRunInFP32() throws {
        var rng = NormalSource(seed: 11)
        for format in [QuantFormat.nf4, .fp4, .q2_K, .q3_K] {
            let (out, inp) = (32, 256)
            let w = try testMatrix(format, blockSize: format.defaultBlockSize, rows: out, cols: inp, scale: 0.05, doubleQuant: false, rng: &rng)
            XCTAssertFalse(w.int8DecodeApplies, "\(format)")
            let x = rng.array(2 * inp)
            XCTAssertEqual(try w.forward(x, tokens: 2, dtype: .int8), try w.forward(x, tokens: 2, dtype: .fp32), "\(format)")
        }
    }
}
