import Quant
import XCTest

/// The quantized GEMMs against a float64 product with the dequantized matrix.
final class GEMMTests: XCTestCase {
    /// (format, block size, out, in): odd sizes, blocks straddling rows, several tiles, and
    /// for the micro-kernel edges in M (T), N and K (in > its 384-column slices). Q5_0, Q5_1
    /// and the K-quants are random blocks; K-quant K-slices start inside a super-block
    /// (in = 768: slices at 384; in = 1280: at 320, 640, 960).
    static let shapes: [(QuantFormat, Int, Int, Int)] = [
        (.nf4, 64, 48, 64), (.nf4, 32, 33, 70), (.fp4, 64, 130, 96), (.nf4, 128, 300, 160),
        (.q4_0, 32, 37, 96), (.q4_1, 32, 130, 64), (.q8_0, 32, 64, 160), (.nf4, 64, 50, 800), (.q4_1, 32, 17, 416),
        (.q5_0, 32, 37, 96), (.q5_1, 32, 65, 800), (.q2_K, 256, 33, 512), (.q3_K, 256, 19, 768),
        (.q4_K, 256, 50, 768), (.q5_K, 256, 17, 1280), (.q6_K, 256, 40, 1280),
    ]

    func testForwardAndBackwardMatchFloat64() throws {
        var rng = NormalSource(seed: 11)
        for (format, bs, out, inp) in Self.shapes {
            let w = try testMatrix(format, blockSize: bs, rows: out, cols: inp, scale: 0.05,
                                   doubleQuant: format == .nf4 && out > 100, rng: &rng)
            let wd = w.dequantize().map(Double.init)
            for T in [1, 3, 17, 256] {
                let x = rng.array(T * inp), dy = rng.array(T * out)
                let y0 = rng.array(T * out), dx0 = rng.array(T * inp)  // for accumulate
                var yRef = [Double](repeating: 0, count: T * out), dxRef = [Double](repeating: 0, count: T * inp)
                for t in 0..<T {
                    for o in 0..<out {
                        var s = 0.0
                        for i in 0..<inp { s += Double(x[t * inp + i]) * wd[o * inp + i] }
                        yRef[t * out + o] = s
                    }
                    for i in 0..<inp {
                        var s = 0.0
                        for o in 0..<out { s += Double(dy[t * out + o]) * wd[o * inp + i] }
                        dxRef[t * inp + i] = s
                    }
                }
                for simd in SIMDLevel.available {
                    SIMDLevel.current = simd
                    defer { SIMDLevel.current = .best }
                    for threads in [1, 2] {
                      // .kernel falls back to tiles below AVX-512; .auto takes the row-at-a-time GEMV at T ≤ 4
                      for path in [GEMMOptions.Path.tiles, .kernel, .auto] {
                        let where_ = "\(format) bs\(bs) \(out)x\(inp) T=\(T) \(simd) threads=\(threads) \(path)"
                        let opt = GEMMOptions(threads: threads, tileBytes: T == 17 ? 4096 : 0, path: path)  // tiny tiles: many per thread
                        let y = try w.forward(x, tokens: T, options: opt)
                        assertClose(y, yRef, "forward " + where_)
                        let dx = try w.backward(dy, tokens: T, options: opt)
                        assertClose(dx, dxRef, "backward " + where_)

                        var ya = y0
                        try x.withUnsafeBufferPointer { xp in
                            try ya.withUnsafeMutableBufferPointer { try w.forward(xp, into: $0, tokens: T, accumulate: true, options: opt) }
                        }
                        assertClose(ya, zip(yRef, y0).map { $0 + Double($1) }, "forward accumulate " + where_)
                        var dxa = dx0
                        try dy.withUnsafeBufferPointer { dyp in
                            try dxa.withUnsafeMutableBufferPointer { try w.backward(dyp, into: $0, tokens: T, accumulate: true, options: opt) }
                        }
                        assertClose(dxa, zip(dxRef, dx0).map { $0 + Double($1) }, "backward accumulate " + where_)
                      }
                    }
                }
            }
        }
    }

    /// max |got − ref| ≤ 1e-5 · max |ref|.
    func assertClose(_ got: [Float], _ ref: [Double], _ message: String, file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertEqual(got.count, ref.count, message, file: file, line: line)
        let scale = ref.map(abs).max() ?? 0
        let err = zip(got, ref).map { abs(Double($0) - $1) }.max() ?? 0
        XCTAssertLessThanOrEqual(err, 1e-5 * scale, "\(message): max error \(err), max |ref| \(scale)", file: file, line: line)
    }

    func testBuffersTooSmallThrow() throws {
        let w = try QuantizedMatrix(quantizing: [Float](repeating: 0.5, count: 32 * 64), rows: 32, cols: 64, format: .q4_0)
        XCTAssertThrowsError(try w.forward([Float](repeating: 0, count: 64 * 2 - 1), tokens: 2)) {
            XCTAssertEqual($0 as? QuantError, .bufferTooSmall(what: "X[2, 64]", needed: 128, actual: 127))
        }
        XCTAssertThrowsError(try w.backward([Float](repeating: 0, count: 31), tokens: 1)) {
            XCTAssertEqual($0 as? QuantError, .bufferTooSmall(what: "dY[1, 32]", needed: 32, actual: 31))
        }
        var y = [Float](repeating: 0, count: 10)
        XCTAssertThrowsError(try [Float](repeating: 0, count: 64).withUnsafeBufferPointer { xp in
            try y.withUnsafeMutableBufferPointer { try w.forward(xp, into: $0, tokens: 1) }
        }) { XCTAssertEqual($0 as? QuantError, .bufferTooSmall(what: "Y[1, 32]", needed: 32, actual: 10)) }
        XCTAssertThrowsError(try w.forward([], tokens: -1))
        XCTAssertEqual(try w.forward([], tokens: 0), [])
    }
}
