import Quant
import XCTest

/// `ComputeRuntime.bf16Product`: a dense fp32 W (an fp32 LM head) through the bf16 kernels.
extension BF16GEMMTests {
    /// Within the bf16 bound of a float64 product (BF16GEMMTests' derivation), both ways, with
    /// and without accumulation, for shapes that cross the kernel's 768-wide K slices, an odd K
    /// and widths that are not multiples of 16; and bit for bit what the quantized bf16 kernel
    /// gives for a Q8_0 matrix whose dequantized values are the dense W (same rounding, same
    /// summation order: the dense path is the quantized one reading W in place).
    func testDenseProductMatchesFloat64AndTheQuantizedKernel() throws {
        try requireBF16()
        var rng = NormalSource(seed: 77)
        for (rows, cols) in [(1000, 64), (96, 1600), (37, 19), (64, 801)] {
            let q8 = cols % 32 == 0 ? try QuantizedMatrix(quantizing: rng.array(rows * cols, scale: 0.05), rows: rows, cols: cols, format: .q8_0) : nil
            let w = q8?.dequantize() ?? rng.array(rows * cols, scale: 0.05)
            for T in [1, 5, 130] {
                let x = rng.array(T * cols), dy = rng.array(T * rows), y0 = rng.array(T * rows), dx0 = rng.array(T * cols)
                let (yRef, yAbs, dxRef, dxAbs) = Self.float64Products(x: x, dy: dy, w: w.map(Double.init), rows: rows, cols: cols, tokens: T)
                for threads in [1, 2] {
                    let at = "\(rows)x\(cols) T=\(T) threads=\(threads)"
                    var y = [Float](repeating: .nan, count: T * rows), dx = [Float](repeating: .nan, count: T * cols)
                    var ya = y0, dxa = dx0
                    try product(w, rows, cols, forward: true, x, T, &y, accumulate: false, threads)
                    try product(w, rows, cols, forward: false, dy, T, &dx, accumulate: false, threads)
                    try product(w, rows, cols, forward: true, x, T, &ya, accumulate: true, threads)
                    try product(w, rows, cols, forward: false, dy, T, &dxa, accumulate: true, threads)
                    let zeroY = [Float](repeating: 0, count: T * rows), zeroDX = [Float](repeating: 0, count: T * cols)
                    assertWithinBF16Bound(y, yRef, yAbs, y0: zeroY, K: cols, "dense forward " + at)
                    assertWithinBF16Bound(dx, dxRef, dxAbs, y0: zeroDX, K: rows, "dense backward " + at)
                    assertWithinBF16Bound(ya, zip(yRef, y0).map { $0 + Double($1) }, yAbs, y0: y0, K: cols, "dense forward accumulate " + at)
                    assertWithinBF16Bound(dxa, zip(dxRef, dx0).map { $0 + Double($1) }, dxAbs, y0: dx0, K: rows,
                                          "dense backward accumulate " + at)
                    if let q8 {
                        let opt = GEMMOptions(threads: threads)
                        XCTAssertEqual(y, try q8.forward(x, tokens: T, options: opt, dtype: .bf16), "dense vs q8_0 forward " + at)
                        XCTAssertEqual(dx, try q8.backward(dy, tokens: T, options: opt, dtype: .bf16), "dense vs q8_0 backward " + at)
                    }
                }
            }
        }
    }

    private func product(_ w: [Float], _ rows: Int, _ cols: Int, forward: Bool, _ input: [Float], _ T: Int, _ out: inout [Float],
                         accumulate: Bool, _ threads: Int) throws {
        try w.withUnsafeBufferPointer { wp in
            try input.withUnsafeBufferPointer { ip in
                try out.withUnsafeMutableBufferPointer { op in
                    try ComputeRuntime.bf16Product(weights: wp.baseAddress!, rows: rows, cols: cols, transposeW: forward, input: ip.baseAddress!,
                                                   tokens: T, out: op.baseAddress!, accumulate: accumulate, threads: threads)
                }
            }
        }
    }
}
