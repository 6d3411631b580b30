import Quant
import XCTest

/// The bf16 GEMMs (AVX512_BF16 kernels) against a float64 product with the dequantized matrix,
/// within a bound derived from bf16 rounding, and against the scalar bf16 reference, within
/// the fp32 accumulation error alone.
///
/// The bound, per output y = Σ_k x_k·w_k (+ y0 when accumulating), K terms:
/// - u = 2⁻⁸, bf16's unit roundoff (8-bit significand, nearest even): x̂ = x(1+α), ŵ = w(1+β),
///   |α|, |β| ≤ u (normal numbers; the kernel flushes fp32 subnormals to zero, and these tests
///   have none), so |x̂ŵ − xw| ≤ (2u + u²)|xw|.
/// - The bf16 products are exact in fp32; vdpbf16ps adds them one at a time to an fp32
///   accumulator, the K slices (at least 32 wide) are added into the output, then y0: each
///   term passes through at most m = K + K/32 + 2 fp32 additions, so the sum is within
///   γ_m = m·2⁻²⁴/(1 − m·2⁻²⁴) of Σ|terms| (recursive summation, Higham §4.2).
/// - Together: |ŷ − y| ≤ (2u + u² + γ_m(1+u)²)·Σ|x||w| + γ_m·|y0| = c·2⁻⁸·Σ|x||w| + γ_m·|y0|,
///   c = 2 + 2⁻⁸ + γ_m(1+u)²·2⁸, i.e. c ≤ 2.02 for K ≤ 1024 and 2.07 for K = 4096.
/// Against the scalar reference (same rounded inputs, fp64 sums) only the accumulation is
/// left: |ŷ − ŷ_ref| ≤ γ_m·((1+u)²·Σ|x||w| + |y0|) + fp64's own error, which m·2⁻⁵³ covers.
class BF16GEMMTests: XCTestCase {
    /// The micro-kernel this class runs the bf16 GEMMs on (subclasses below); nil: the process's own.
    class var kernel: ComputeRuntime.BF16Kernel? { nil }

    override func invokeTest() {
        guard let kernel = Self.kernel, (try? ComputeRuntime.withBF16Kernel(kernel, { super.invokeTest() })) != nil else {
            return super.invokeTest()  // requireBF16 skips when the kernel could not be set
        }
    }

    /// GEMMTests' shapes and, for bf16's kernel: cols not a multiple of 16 (W read through
    /// dequantized tiles), K beyond one 768-wide slice both ways, an odd K (a zero pair half).
    static let shapes: [(QuantFormat, Int, Int, Int)] = GEMMTests.shapes + [
        (.nf4, 64, 100, 1000), (.q4_0, 32, 801, 96), (.fp4, 32, 19, 37), (.q8_0, 32, 5, 32),
    ]

    func requireBF16() throws {
        guard ComputeRuntime.bf16Available else {
            let w = try QuantizedMatrix(quantizing: [Float](repeating: 0.5, count: 32 * 32), rows: 32, cols: 32, format: .q4_0)
            XCTAssertThrowsError(try w.forward([Float](repeating: 1, count: 32), tokens: 1, dtype: .bf16)) {
                XCTAssertEqual($0 as? QuantError, .bf16Unavailable(cpu: CPUInfo.current.brand))
            }
            throw XCTSkip("this CPU (\(CPUInfo.current.brand)) lacks AVX512_BF16: the bf16 GEMMs are refused, as checked")
        }
        if let kernel = Self.kernel, ComputeRuntime.threadBF16Kernel != kernel {
            throw XCTSkip("the bf16 GEMMs cannot run on \(kernel) here (\(CPUInfo.current.brand)): \(ComputeRuntime.bf16KernelReason)")
        }
    }

    func testForwardAndBackwardMatchFloat64AndTheScalarReference() throws {
        try requireBF16()
        var rng = NormalSource(seed: 23)
        for (format, bs, out, inp) in Self.shapes {
            let w = try testMatrix(format, blockSize: bs, rows: out, cols: inp, scale: 0.05,
                                   doubleQuant: format == .nf4 && out > 100, rng: &rng)
            let wd = w.dequantize().map(Double.init)
            for T in [1, 3, 9, 17, 256] {
                let x = rng.array(T * inp), dy = rng.array(T * out)
                let y0 = rng.array(T * out), dx0 = rng.array(T * inp)  // for accumulate
                let (yRef, yAbs, dxRef, dxAbs) = Self.float64Products(x: x, dy: dy, w: wd, rows: out, cols: inp, tokens: T)
                var yScalar = [Float](repeating: 0, count: T * out), dxScalar = [Float](repeating: 0, count: T * inp)
                try w.forwardBF16Reference(x, into: &yScalar, tokens: T)
                try w.backwardBF16Reference(dy, into: &dxScalar, tokens: T)
                var yaScalar = y0, dxaScalar = dx0
                try w.forwardBF16Reference(x, into: &yaScalar, tokens: T, accumulate: true)
                try w.backwardBF16Reference(dy, into: &dxaScalar, tokens: T, accumulate: true)
                let zeroY = [Float](repeating: 0, count: T * out), zeroDX = [Float](repeating: 0, count: T * inp)

                for threads in [1, 2] {
                    let opt = GEMMOptions(threads: threads)
                    let at = "\(format) bs\(bs) \(out)x\(inp) T=\(T) threads=\(threads)"
                    let y = try w.forward(x, tokens: T, options: opt, dtype: .bf16)
                    assertWithinBF16Bound(y, yRef, yAbs, y0: zeroY, K: inp, "forward " + at)
                    assertWithinAccumulation(y, yScalar, yAbs, y0: zeroY, K: inp, "forward vs scalar " + at)
                    let dx = try w.backward(dy, tokens: T, options: opt, dtype: .bf16)
                    assertWithinBF16Bound(dx, dxRef, dxAbs, y0: zeroDX, K: out, "backward " + at)
                    assertWithinAccumulation(dx, dxScalar, dxAbs, y0: zeroDX, K: out, "backward vs scalar " + at)

                    var ya = y0
                    try x.withUnsafeBufferPointer { xp in
                        try ya.withUnsafeMutableBufferPointer {
                            try w.forward(xp, into: $0, tokens: T, accumulate: true, options: opt, dtype: .bf16)
                        }
                    }
                    assertWithinBF16Bound(ya, zip(yRef, y0).map { $0 + Double($1) }, yAbs, y0: y0, K: inp, "forward accumulate " + at)
                    assertWithinAccumulation(ya, yaScalar, yAbs, y0: y0, K: inp, "forward accumulate vs scalar " + at)
                    var dxa = dx0
                    try dy.withUnsafeBufferPointer { dyp in
                        try dxa.withUnsafeMutableBufferPointer {
                            try w.backward(dyp, into: $0, tokens: T, accumulate: true, options: opt, dtype: .bf16)
                        }
                    }
                    assertWithinBF16Bound(dxa, zip(dxRef, dx0).map { $0 + Double($1) }, dxAbs, y0: dx0, K: out, "backward accumulate " + at)
                    assertWithinAccumulation(dxa, dxaScalar, dxAbs, y0: dx0, K: out, "backward accumulate vs scalar " + at)
                }
            }
        }
    }

    /// Ties go to the even bf16 and fp32 subnormals to zero, in the kernel and the reference:
    /// with W all ones (NF4: absmax 1, code 1) every output is the exact sum of the rounded
    /// inputs 1 + 2⁻⁸ → 1, 1 + 3·2⁻⁸ → 1 + 2⁻⁶, −(1 + 2⁻⁸) → −1, 2⁻¹³⁰ → 0, 1 + 2⁻⁷ + 2⁻⁹ → 1 + 2⁻⁷.
    func testRoundsToNearestEvenAndFlushesSubnormals() throws {
        try requireBF16()
        let (out, inp) = (48, 64)
        let w = try QuantizedMatrix(quantizing: [Float](repeating: 1, count: out * inp), rows: out, cols: inp, format: .nf4)
        let inputs: [Float] = [1 + 0x1p-8, 1 + 3 * 0x1p-8, -(1 + 0x1p-8), 0x1p-130, 1 + 0x1p-7 + 0x1p-9]
        let expected: Float = 1 + 0x1p-6 + 1 + 0x1p-7
        var x = [Float](repeating: 0, count: inp), dy = [Float](repeating: 0, count: out)
        for (i, v) in inputs.enumerated() { (x[3 * i], dy[7 * i]) = (v, v) }
        XCTAssertEqual(try w.forward(x, tokens: 1, dtype: .bf16), [Float](repeating: expected, count: out))
        XCTAssertEqual(try w.backward(dy, tokens: 1, dtype: .bf16), [Float](repeating: expected, count: inp))
        var y = [Float](repeating: 0, count: out), dx = [Float](repeating: 0, count: inp)
        try w.forwardBF16Reference(x, into: &y, tokens: 1)
        try w.backwardBF16Reference(dy, into: &dx, tokens: 1)
        XCTAssertEqual(y, [Float](repeating: expected, count: out))
        XCTAssertEqual(dx, [Float](repeating: expected, count: inp))
    }

    /// A NaN in X makes its row of Y NaN and leaves the others finite (bf16 rounding keeps NaN).
    func testNaNInTheInputStaysNaN() throws {
        try requireBF16()
        var rng = NormalSource(seed: 5)
        let (out, inp, T) = (48, 64, 20)
        let w = try QuantizedMatrix(quantizing: rng.array(out * inp), rows: out, cols: inp, format: .nf4)
        var x = rng.array(T * inp), dy = rng.array(T * out)
        x[3 * inp + 7] = .nan
        dy[11 * out + 40] = .nan
        let y = try w.forward(x, tokens: T, dtype: .bf16), dx = try w.backward(dy, tokens: T, dtype: .bf16)
        for t in 0..<T {
            XCTAssertEqual(y[t * out..<(t + 1) * out].allSatisfy(\.isNaN), t == 3, "forward row \(t)")
            XCTAssertFalse(t != 3 && y[t * out..<(t + 1) * out].contains { !$0.isFinite }, "forward row \(t)")
            XCTAssertEqual(dx[t * inp..<(t + 1) * inp].allSatisfy(\.isNaN), t == 11, "backward row \(t)")
            XCTAssertFalse(t != 11 && dx[t * inp..<(t + 1) * inp].contains { !$0.isFinite }, "backward row \(t)")
        }
    }

    /// γ_m for K terms: m = K + K/32 + 2 fp32 additions at most.
    static func gamma(K: Int) -> Double {
        let m = Double(K + K / 32 + 2) * 0x1p-24
        return m / (1 - m)
    }

    /// |got − ref| ≤ (2u + u² + γ_m(1+u)²)·Σ|x||w| + γ_m·|y0| per output, u = 2⁻⁸.
    /// The exact products in float64 and Σ|terms| per output, for the bounds: y = x·Wᵀ [T, rows]
    /// and dx = dy·W [T, cols], W [rows, cols].
    static func float64Products(x: [Float], dy: [Float], w: [Double], rows: Int, cols: Int, tokens T: Int)
        -> (y: [Double], yAbs: [Double], dx: [Double], dxAbs: [Double]) {
        var y = [Double](repeating: 0, count: T * rows), yAbs = y
        var dx = [Double](repeating: 0, count: T * cols), dxAbs = dx
        for t in 0..<T {
            for r in 0..<rows {
                for c in 0..<cols {
                    let p = Double(x[t * cols + c]) * w[r * cols + c], q = Double(dy[t * rows + r]) * w[r * cols + c]
                    y[t * rows + r] += p
                    yAbs[t * rows + r] += abs(p)
                    dx[t * cols + c] += q
                    dxAbs[t * cols + c] += abs(q)
                }
            }
        }
        return (y, yAbs, dx, dxAbs)
    }

    func assertWithinBF16Bound(_ got: [Float], _ ref: [Double], _ absSum: [Double], y0: [Float], K: Int, _ message: String,
                               file: StaticString = #filePath, line: UInt = #line) {
        let u = 0x1p-8, g = Self.gamma(K: K)
        let c = 2 * u + u * u + g * (1 + u) * (1 + u)
        assertBound(got, ref, bound: { c * absSum[$0] + g * abs(Double(y0[$0])) }, message, file: file, line: line)
    }

    /// |got − scalar| ≤ γ_m·((1+u)²·Σ|x||w| + |y0|) + 2⁻⁵³·m·Σ|x||w| (the reference's fp64 sum)
    /// + half an fp32 ulp of the reference (it is stored in fp32).
    func assertWithinAccumulation(_ got: [Float], _ scalar: [Float], _ absSum: [Double], y0: [Float], K: Int, _ message: String,
                                  file: StaticString = #filePath, line: UInt = #line) {
        let u = 0x1p-8, g = Self.gamma(K: K)
        assertBound(got, scalar.map(Double.init), bound: {
            g * ((1 + u) * (1 + u) * absSum[$0] + abs(Double(y0[$0]))) + Double(K + 2) * 0x1p-53 * absSum[$0]
                + Double(scalar[$0].ulp) / 2
        }, message, file: file, line: line)
    }

    func assertBound(_ got: [Float], _ ref: [Double], bound: (Int) -> Double, _ message: String,
                     file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertEqual(got.count, ref.count, message, file: file, line: line)
        var worst = (ratio: 0.0, index: 0)
        for i in got.indices {
            let d = abs(Double(got[i]) - ref[i]), r = d == 0 ? 0 : d / bound(i)
            if !(r <= worst.ratio) { worst = (r, i) }  // NaN counts as the worst
        }
        XCTAssertLessThanOrEqual(worst.ratio, 1, "\(message): output \(worst.index) is \(got[worst.index]), reference \(ref[worst.index]), "
            + "\(worst.ratio) times the bound \(bound(worst.index))", file: file, line: line)
    }
}

/// Every bf16 GEMM test above on the software model of the AMX tiles (tdpbf16ps as the SDM
/// defines it): the AMX path's row-packed A panel, tile strides, zero-padded last pairs, 16-row
/// blocks, second outputs and low-rank pairs, on any AVX512_BF16 CPU. The bounds are the same:
/// per pair two fp32 additions, as vdpbf16ps. XCTest runs the inherited tests in each subclass.
final class AMXModelBF16GEMMTests: BF16GEMMTests {
    override class var kernel: ComputeRuntime.BF16Kernel? { .amxModel }

    /// (Its own test also makes XCTest find the class.) The start-up check that admits the AMX tiles passes their model (its sums run in another
    /// order than vdpbf16ps's, within the bound) and vdpbf16ps itself exactly; and the process
    /// says which kernel it chose and why.
    func testStartUpCheckAdmitsTheModel() throws {
        try requireBF16()
        let model = ComputeRuntime.bf16KernelCheck(.amxModel)
        XCTAssertLessThanOrEqual(model, 1)
        XCTAssertGreaterThan(model, 0, "the model sums even then odd products, vdpbf16ps odd then even: some outputs differ")
        XCTAssertEqual(ComputeRuntime.bf16KernelCheck(.avx512), 0)
        let chosen = try XCTUnwrap(ComputeRuntime.bf16Kernel)
        XCTAssertTrue(ComputeRuntime.bf16KernelReason.hasPrefix(chosen == .amx ? "amx (tdpbf16ps)" : "avx512_bf16 (vdpbf16ps)"),
                      ComputeRuntime.bf16KernelReason)
        XCTAssertEqual(ComputeRuntime.bf16KernelCheck(.amx).isFinite, CPUInfo.current.amx && !ComputeRuntime.bf16KernelReason.contains("refused"))
    }
}

/// The same on the AMX tiles themselves, where the CPU has them and Linux grants their state
/// (Sapphire Rapids and later); skipped with the reason elsewhere.
final class AMXTileBF16GEMMTests: BF16GEMMTests {
    override class var kernel: ComputeRuntime.BF16Kernel? { .amx }

    /// Where the tiles run, the start-up check admits them and the process chose them (unless
    /// QLORA_BF16_KERNEL=avx512 said otherwise): a CPU whose tiles disagree fails here rather
    /// than falling back unseen. (A class needs a test of its own for XCTest to find it.)
    func testTheTilesPassTheStartUpCheckAndAreChosen() throws {
        try requireBF16()
        XCTAssertLessThanOrEqual(ComputeRuntime.bf16KernelCheck(.amx), 1, ComputeRuntime.bf16KernelReason)
        if ProcessInfo.processInfo.environment["QLORA_BF16_KERNEL"] != "avx512" {
            XCTAssertEqual(ComputeRuntime.bf16Kernel, .amx, ComputeRuntime.bf16KernelReason)
        }
    }
}
