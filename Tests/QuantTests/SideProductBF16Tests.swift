import Quant
import XCTest

/// A frozen bf16 product with a side product from the same rounded input (LoRA's x·Aᵀ beside
/// the forward, scale·dY·B beside the backward): each output bit for bit what the two
/// products give run apart — the quantized bf16 GEMM, and the dense bf16 product of E
/// (itself checked against float64 in DenseBF16ProductTests) times alpha, a power of two.
extension BF16GEMMTests {
    func testSideProductsEqualTheProductsRunApart() throws {
        try requireBF16()
        var rng = NormalSource(seed: 91)
        // K past one 768-wide slice both ways (1000 in, 801 out), cols not a multiple of 16 (tiles).
        for (format, bs, out, inp) in [(QuantFormat.nf4, 64, 192, 576), (.q4_1, 32, 801, 96), (.q4_0, 32, 64, 1024), (.nf4, 64, 24, 1000), (.fp4, 32, 19, 37)] {
            let w = try testMatrix(format, blockSize: bs, rows: out, cols: inp, scale: 0.05, doubleQuant: false, rng: &rng)
            for (count, T, threads) in [(16, 130, 2), (48, 9, 2), (5, 64, 1), (16, 256, 1), (3, 17, 2)] {
                let at = "\(format) \(out)x\(inp) side \(count) T=\(T) threads=\(threads)"
                let x = rng.array(T * inp), dy = rng.array(T * out), y0 = rng.array(T * out), dx0 = rng.array(T * inp)
                let eForward = rng.array(count * inp, scale: 0.1), eBackward = rng.array(out * count, scale: 0.1)
                let ld = count + 3   // the side output's rows are wider than it: the rest stays untouched
                for (accumulate, alpha) in [(false, Float(1)), (true, 0.5)] {
                    for backward in [false, true] {
                        let (input, e, start, width) = backward ? (dy, eBackward, dx0, inp) : (x, eForward, y0, out)
                        let way = (backward ? "backward " : "forward ") + at
                        var main = accumulate ? start : [Float](repeating: .nan, count: T * width)
                        var side = [Float](repeating: .nan, count: T * ld)
                        try input.withUnsafeBufferPointer { ip in
                            try e.withUnsafeBufferPointer { ep in
                                try main.withUnsafeMutableBufferPointer { mp in
                                    try side.withUnsafeMutableBufferPointer { sp in
                                        let product = QuantizedMatrix.SideProduct(e: ep.baseAddress!, count: count, output: sp.baseAddress!, ld: ld,
                                                                                  alpha: alpha)
                                        if backward {
                                            try w.backwardBF16(ip, into: mp, tokens: T, accumulate: accumulate, threads: threads, side: product)
                                        } else {
                                            try w.forwardBF16(ip, into: mp, tokens: T, accumulate: accumulate, threads: threads, side: product)
                                        }
                                    }
                                }
                            }
                        }
                        var apart = accumulate ? start : [Float](repeating: 0, count: T * width)
                        try input.withUnsafeBufferPointer { ip in
                            try apart.withUnsafeMutableBufferPointer {
                                let opt = GEMMOptions(threads: threads)
                                if backward {
                                    try w.backward(ip, into: $0, tokens: T, accumulate: accumulate, options: opt, dtype: .bf16)
                                } else {
                                    try w.forward(ip, into: $0, tokens: T, accumulate: accumulate, options: opt, dtype: .bf16)
                                }
                            }
                        }
                        XCTAssertEqual(main, apart, way)
                        let sideApart = try dense(e, rows: backward ? out : count, cols: backward ? count : inp, forward: !backward, input, T,
                                                  threads).map { $0 * alpha }
                        assertSide(side, sideApart, count: count, ld: ld, T: T, "side of " + way)
                    }
                }
            }
        }
    }

    /// The dense bf16 product of E, as ComputeRuntime.bf16Product runs it.
    private func dense(_ e: [Float], rows: Int, cols: Int, forward: Bool, _ input: [Float], _ T: Int, _ threads: Int) throws -> [Float] {
        var out = [Float](repeating: 0, count: T * (forward ? rows : cols))
        try e.withUnsafeBufferPointer { ep in
            try input.withUnsafeBufferPointer { ip in
                try out.withUnsafeMutableBufferPointer { op in
                    try ComputeRuntime.bf16Product(weights: ep.baseAddress!, rows: rows, cols: cols, transposeW: forward, input: ip.baseAddress!,
                                                   tokens: T, out: op.baseAddress!, threads: threads)
                }
            }
        }
        return out
    }

    private func assertSide(_ side: [Float], _ apart: [Float], count: Int, ld: Int, T: Int, _ at: String) {
        for t in 0..<T {
            XCTAssertEqual(Array(side[(t * ld)..<(t * ld + count)]), Array(apart[(t * count)..<((t + 1) * count)]), "\(at), row \(t)")
            XCTAssertTrue(side[(t * ld + count)..<((t + 1) * ld)].allSatisfy(\.isNaN), "\(at): row \(t) written past its \(count) columns")
            if !side[(t * ld)..<(t * ld + count)].allSatisfy({ $0.isFinite }) { return XCTFail("\(at): row \(t) not written") }
        }
    }
}
