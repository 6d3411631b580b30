import Quant
import QuantKernels
import XCTest

/// Q5_0, Q5_1 and the K-quants read as GGUF files store them: every path the GEMMs take
/// dequantizes a block bit for bit as the load-time dequantizer (`GGMLType.dequantizeRow`,
/// itself bit-exact with gguf-py on the ggmltype_* fixtures, GGMLTypeTests):
/// - the block dequantizers at each SIMD level (tiles path, GEMV, bf16 reference);
/// - the fp32 micro-kernel's panels (16 elements at a time, at any 16-aligned column of a
///   super-block): a forward with X = I gives Y = Wᵀ exactly, a backward with dY = I gives W;
/// - the bf16 micro-kernel's panels: the same products give bf16(W), rounded to nearest even.
final class GGMLBlockTilePathTests: XCTestCase {
    /// (format, out, in): K-quant widths whose micro-kernel K-slices start inside a super-block
    /// (fp32 slices of ≤ 384: in = 1280 starts them at 320, 640, 960; bf16 slices of ≤ 768:
    /// in = 1280 starts the second at 640), and rows that are no multiple of 16.
    static let shapes: [(QuantFormat, Int, Int)] = [
        (.q5_0, 21, 96), (.q5_1, 18, 800), (.q2_K, 19, 1280), (.q3_K, 17, 1280),
        (.q4_K, 33, 1280), (.q5_K, 20, 768), (.q6_K, 18, 1280),
    ]

    /// The load-time dequantization of `w`'s bytes (the reference).
    func loadTimeValues(_ w: QuantizedMatrix) throws -> [Float] {
        let type = try XCTUnwrap(w.format.ggmlType)
        var y = [Float](repeating: .nan, count: w.count)
        try y.withUnsafeMutableBufferPointer { try type.dequantizeRow(w.data.bytes, columns: w.count, into: $0) }
        return y
    }

    func assertSame(_ got: [Float], _ expected: [Float], _ what: String, file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertEqual(got.count, expected.count, what, file: file, line: line)
        // == rather than bit patterns: a −0 weight times 1 plus +0 terms sums to +0
        if let i = got.indices.first(where: { got[$0] != expected[$0] }) {
            XCTFail("\(what): element \(i) is \(got[i]), expected \(expected[i])", file: file, line: line)
        }
    }

    func assertBits(_ got: [Float], _ expected: ArraySlice<Float>, _ what: String, file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertEqual(got.count, expected.count, what, file: file, line: line)
        if let i = got.indices.first(where: { got[$0].bitPattern != expected[expected.startIndex + $0].bitPattern }) {
            XCTFail("\(what): element \(i) is \(got[i]), expected \(expected[expected.startIndex + i])", file: file, line: line)
        }
    }

    func identity(_ n: Int) -> [Float] {
        var m = [Float](repeating: 0, count: n * n)
        for i in 0..<n { m[i * n + i] = 1 }
        return m
    }

    func testBlockDequantizersAreBitExactAtEverySIMDLevel() throws {
        var rng = NormalSource(seed: 31)
        for (format, out, inp) in Self.shapes {
            let w = try randomGGMLBlocks(format, rows: out, cols: inp, rng: &rng)
            let expected = try loadTimeValues(w)
            XCTAssertFalse(expected.contains { !$0.isFinite }, "\(format)")
            for simd in SIMDLevel.available {
                assertBits(w.dequantize(rows: 0..<out, simd: simd), expected[...], "\(format) \(simd)")
                assertBits(w.dequantize(rows: (out - 3)..<out, simd: simd), expected[((out - 3) * inp)...], "\(format) \(simd) last rows")
                // A range starting and ending inside blocks: its ends go element by element.
                let (start, count) = (5, 2 * inp - 7)
                var part = [Float](repeating: .nan, count: count)
                var m = qk_matrix()
                m.format = Self.kernelFormats[format]!
                (m.rows, m.cols, m.block_size) = (Int64(out), Int64(inp), Int64(format.defaultBlockSize))
                m.data = w.data.bytes.baseAddress?.assumingMemoryBound(to: UInt8.self)
                qk_dequantize_range_isa(&m, Int64(start), Int64(count), &part, qk_isa(rawValue: UInt32(simd.rawValue)))
                assertBits(part, expected[start..<(start + count)], "\(format) \(simd) elements \(start)..<\(start + count)")
            }
        }
    }

    static let kernelFormats: [QuantFormat: qk_format] = [
        .q5_0: QK_FORMAT_Q5_0, .q5_1: QK_FORMAT_Q5_1, .q2_K: QK_FORMAT_Q2_K, .q3_K: QK_FORMAT_Q3_K,
        .q4_K: QK_FORMAT_Q4_K, .q5_K: QK_FORMAT_Q5_K, .q6_K: QK_FORMAT_Q6_K,
    ]

    func testFP32MicroKernelPanelsAreBitExact() throws {
        guard SIMDLevel.best == .avx512 else { throw XCTSkip("the micro-kernel needs AVX-512; this CPU has \(SIMDLevel.best)") }
        var rng = NormalSource(seed: 37)
        for (format, out, inp) in Self.shapes {
            let w = try randomGGMLBlocks(format, rows: out, cols: inp, rng: &rng)
            let expected = try loadTimeValues(w)
            var transposed = [Float](repeating: 0, count: w.count)
            for o in 0..<out { for i in 0..<inp { transposed[i * out + o] = expected[o * inp + i] } }
            for threads in [1, 2] {
                let opt = GEMMOptions(threads: threads, path: .kernel)
                assertSame(try w.forward(identity(inp), tokens: inp, options: opt), transposed, "\(format) forward threads=\(threads)")
                assertSame(try w.backward(identity(out), tokens: out, options: opt), expected, "\(format) backward threads=\(threads)")
            }
        }
    }

    func testBF16MicroKernelPanelsAreBitExact() throws {
        guard ComputeRuntime.bf16Available else { throw XCTSkip("this CPU (\(CPUInfo.current.brand)) lacks AVX512_BF16") }
        var rng = NormalSource(seed: 41)
        for (format, out, inp) in Self.shapes {
            let w = try randomGGMLBlocks(format, rows: out, cols: inp, rng: &rng)
            let expected = try loadTimeValues(w).map(Self.roundBF16)
            var transposed = [Float](repeating: 0, count: w.count)
            for o in 0..<out { for i in 0..<inp { transposed[i * out + o] = expected[o * inp + i] } }
            for threads in [1, 2] {
                let opt = GEMMOptions(threads: threads)
                assertSame(try w.forward(identity(inp), tokens: inp, options: opt, dtype: .bf16), transposed, "\(format) bf16 forward threads=\(threads)")
                assertSame(try w.backward(identity(out), tokens: out, options: opt, dtype: .bf16), expected, "\(format) bf16 backward threads=\(threads)")
            }
            var y = [Float](repeating: 0, count: w.count)
            try w.forwardBF16Reference(identity(inp), into: &y, tokens: inp)
            assertSame(y, transposed, "\(format) bf16 scalar reference")
        }
    }

    /// fp32 → bf16, nearest even (normal finite values; the weights here have no others).
    static func roundBF16(_ f: Float) -> Float {
        let u = f.bitPattern
        return Float(bitPattern: (u &+ 0x7FFF &+ ((u >> 16) & 1)) & 0xFFFF_0000)
    }

    /// K-quant blocks need whole super-blocks per row, and refuse other block sizes; a
    /// non-finite scale anywhere in a block is named (the min of Q4_K, the d of Q6_K at its end).
    func testShapesAndScalesAreChecked() throws {
        XCTAssertThrowsError(try QuantizedMatrix(rows: 2, cols: 128, format: .q4_K, data: ByteStorage(copying: [UInt8](repeating: 0, count: 144)),
                                                 scales: .inBlocks)) {
            XCTAssertEqual($0 as? QuantError, .columnsNotMultipleOfBlock(format: .q4_K, columns: 128, blockSize: 256))
        }
        XCTAssertThrowsError(try QuantizedMatrix(rows: 1, cols: 256, format: .q6_K, blockSize: 32,
                                                 data: ByteStorage(copying: [UInt8](repeating: 0, count: 210)), scales: .inBlocks)) {
            XCTAssertEqual($0 as? QuantError, .invalidBlockSize(format: .q6_K, blockSize: 32, allowed: "256"))
        }
        XCTAssertThrowsError(try QuantizedMatrix(rows: 1, cols: 256, format: .q5_K, data: ByteStorage(copying: [UInt8](repeating: 0, count: 175)),
                                                 scales: .inBlocks)) {
            XCTAssertEqual($0 as? QuantError, .sizeMismatch(what: "q5_K blocks", expected: 176, actual: 175))
        }
        var q4 = [UInt8](repeating: 0, count: 2 * 144)
        (q4[144 + 2], q4[144 + 3]) = (0x00, 0x7C)  // block 1's dmin = +inf
        XCTAssertThrowsError(try QuantizedMatrix(rows: 1, cols: 512, format: .q4_K, data: ByteStorage(copying: q4), scales: .inBlocks)) {
            XCTAssertEqual($0 as? QuantError, .nonFiniteScale(what: "q4_K dmin", block: 1, value: .infinity))
        }
        var q6 = [UInt8](repeating: 0, count: 210)
        (q6[208], q6[209]) = (0x01, 0xFC)  // d = NaN
        XCTAssertThrowsError(try QuantizedMatrix(rows: 1, cols: 256, format: .q6_K, data: ByteStorage(copying: q6), scales: .inBlocks)) {
            guard case .nonFiniteScale("q6_K d", 0, let v)? = $0 as? QuantError, v.isNaN else { return XCTFail("\($0)") }
        }
        XCTAssertThrowsError(try QuantizedMatrix(quantizing: [Float](repeating: 0, count: 256), rows: 1, cols: 256, format: .q4_K)) {
            XCTAssertEqual($0 as? QuantError, .noQuantizer(format: .q4_K))
        }
    }
}
