import Quant
import XCTest

/// Quantize → dequantize error bounds on random normal data.
final class RoundTripTests: XCTestCase {
    /// NF4/FP4: every element lands on the code nearest to x/absmax, so its error is at most
    /// half the gap between the two codes around x/absmax, times absmax.
    func testFourBitErrorIsAtMostHalfTheLocalCodeStep() throws {
        var rng = NormalSource(seed: 1)
        for format in [QuantFormat.nf4, .fp4] {
            for (rows, cols, bs) in [(16, 64, 64), (7, 100, 64), (9, 333, 32), (4, 1024, 256)] {
                for dq in [false, true] {
                    let x = rng.array(rows * cols, scale: 0.05)
                    let m = try QuantizedMatrix(quantizing: x, rows: rows, cols: cols, format: format,
                                                blockSize: bs, doubleQuant: dq)
                    let y = m.dequantize()
                    let sorted = format.codebook!.sorted()
                    // With double quantization the dequantizer uses the reconstructed absmax, which
                    // differs from the exact one by the 8-bit nested step: bound against the exact one.
                    let exact = try QuantizedMatrix(quantizing: x, rows: rows, cols: cols, format: format, blockSize: bs)
                        .blockAbsmax
                    let used = m.blockAbsmax
                    var worst = 0.0
                    for e in 0..<x.count {
                        let b = e / bs, a = exact[b]
                        let v = Double(x[e]) / Double(a)
                        let hi = sorted.firstIndex { Double($0) >= v } ?? sorted.count - 1
                        let lo = max(hi - 1, 0)
                        let halfStep = (Double(sorted[hi]) - Double(sorted[lo])) / 2
                        let nestedError = abs(Double(used[b]) - Double(a))  // ≤ 1 for any code
                        let bound = halfStep * Double(a) + nestedError + 1e-6 * Double(a)
                        let err = abs(Double(y[e]) - Double(x[e]))
                        worst = max(worst, err / bound)
                        if err > bound {
                            XCTFail("\(format) \(rows)x\(cols) bs\(bs) dq=\(dq): element \(e) error \(err) > \(bound)")
                            return
                        }
                    }
                    XCTAssertGreaterThan(worst, 0.1, "bound is loose enough to be meaningless")
                }
            }
        }
    }

    /// Double quantization keeps absmax within one nested code step of the exact value.
    func testDoubleQuantizedAbsmaxIsClose() throws {
        var rng = NormalSource(seed: 2)
        let x = rng.array(300 * 64, scale: 0.02)
        let plain = try QuantizedMatrix(quantizing: x, rows: 300, cols: 64, format: .nf4).blockAbsmax
        let dq = try QuantizedMatrix(quantizing: x, rows: 300, cols: 64, format: .nf4, doubleQuant: true).blockAbsmax
        for (a, b) in zip(plain, dq) { XCTAssertEqual(b, a, accuracy: a * 0.02) }
    }

    /// ggml: Q4_0 error ≤ d/2 except the clamped top code (≤ d); Q4_1 ≤ d/2; Q8_0 ≤ d/2 plus
    /// the fp16 rounding of d over 127 steps.
    func testGGMLErrorBounds() throws {
        var rng = NormalSource(seed: 3)
        for format in [QuantFormat.q4_0, .q4_1, .q8_0] {
            let x = rng.array(24 * 96, scale: 0.1)
            let m = try QuantizedMatrix(quantizing: x, rows: 24, cols: 96, format: format)
            let y = m.dequantize()
            for b in 0..<(x.count / 32) {
                let block = x[(b * 32)..<(b * 32 + 32)]
                let amax = block.map { abs($0) }.max()!, lo = block.min()!, hi = block.max()!
                let bound: Float = switch format {
                case .q4_0: amax / 8 * 1.001
                case .q4_1: (hi - lo) / 15 / 2 * 1.01 + 1e-3 * abs(lo)
                default: amax / 127 * (0.5 + 127.0 / 2048) * 1.001
                }
                for e in (b * 32)..<(b * 32 + 32) {
                    XCTAssertLessThanOrEqual(abs(y[e] - x[e]), bound, "\(format) block \(b) element \(e)")
                }
            }
        }
    }

    func testBitsPerParameter() throws {
        var rng = NormalSource(seed: 4)
        let x = rng.array(1024 * 1024)
        let cases: [(QuantFormat, Bool, Double)] = [
            (.nf4, false, 4.5), (.nf4, true, 4.127), (.fp4, true, 4.127), (.q4_0, false, 4.5), (.q4_1, false, 5.0), (.q8_0, false, 8.5),
        ]
        for (format, dq, bits) in cases {
            let m = try QuantizedMatrix(quantizing: x, rows: 1024, cols: 1024, format: format, doubleQuant: dq)
            XCTAssertEqual(m.bitsPerParameter, bits, accuracy: 0.01, "\(format) dq=\(dq)")
        }
    }
}
