import Quant
import XCTest

/// Bit-for-bit agreement with bitsandbytes and ggml (gguf-py), on fixtures written by
/// tools/make_quant_fixtures.py.
final class FixtureTests: XCTestCase {
    /// bitsandbytes: our quantizer writes bnb's packed codes and absmax; our dequantizers, at
    /// every SIMD level, reproduce bnb's dequantized values from bnb's own bytes.
    func testBitsandbytesFixtures() throws {
        let fixtures = try Fixture.all(prefix: "bnb_").filter { $0.has("quant_type") }
        if fixtures.isEmpty { throw Fixture.missing("bitsandbytes fixtures (bnb_*.json with a quant_type)") }
        for f in fixtures {
            let format = QuantFormat(rawValue: f.string("quant_type"))!
            let (rows, cols) = f.shape, bs = f.int("blocksize"), dq = f.bool("double_quant")
            let input = f.floats("input_f32")

            let ours = try QuantizedMatrix(quantizing: input, rows: rows, cols: cols, format: format, blockSize: bs, doubleQuant: dq)
            XCTAssertEqual(ours.data.array(of: UInt8.self), f.bytes("packed_u8"), "packed codes, \(f.name)")

            let scales: QuantizedMatrix.Scales
            if dq {
                // The offset is torch's float32 mean, reproduced to the bit; the nested codes are
                // also checked with bnb's offset given, to isolate the 8-bit quantizer.
                guard case let .doubleQuantized(mine) = ours.scales else { return XCTFail("not double-quantized") }
                let bnbOffset = f.floats("offset_f32")[0]
                XCTAssertEqual(mine.offset.bitPattern, bnbOffset.bitPattern, "offset, \(f.name)")
                XCTAssertEqual(mine.codes.array(of: UInt8.self), f.bytes("absmax_u8"), "nested codes with our offset, \(f.name)")
                let exactAbsmax = try QuantizedMatrix(quantizing: input, rows: rows, cols: cols, format: format, blockSize: bs).blockAbsmax
                let same = QuantizedMatrix.DoubleQuantized(quantizing: exactAbsmax, offset: bnbOffset)
                XCTAssertEqual(same.codes.array(of: UInt8.self), f.bytes("absmax_u8"), "nested codes, \(f.name)")
                XCTAssertNil(firstBitDifference(same.nestedAbsmax.array(of: Float.self), f.floats("nested_absmax_f32")),
                             "nested absmax, \(f.name)")
                scales = .doubleQuantized(.init(codes: ByteStorage(copying: f.bytes("absmax_u8")), offset: bnbOffset,
                                                nestedAbsmax: ByteStorage(copying: f.floats("nested_absmax_f32")),
                                                nestedCode: ByteStorage(copying: f.floats("nested_code_f32"))))
            } else {
                XCTAssertNil(firstBitDifference(ours.blockAbsmax, f.floats("absmax_f32")), "absmax, \(f.name)")
                scales = .absmax(ByteStorage(copying: f.floats("absmax_f32")))
            }

            let theirs = try QuantizedMatrix(rows: rows, cols: cols, format: format, blockSize: bs,
                                             data: ByteStorage(copying: f.bytes("packed_u8")), scales: scales,
                                             code: ByteStorage(copying: f.floats("code_f32")))
            if dq {
                XCTAssertNil(firstBitDifference(theirs.blockAbsmax, f.floats("absmax_dequantized_f32")), "absmax, \(f.name)")
            }
            let expected = f.floats("dequantized_f32")
            for simd in SIMDLevel.available {
                let got = theirs.dequantize(rows: 0..<rows, simd: simd)
                if let i = firstBitDifference(got, expected, signedZeros: format == .nf4) {
                    XCTFail("\(f.name) \(simd): element \(i) is \(got[i]), bitsandbytes gives \(expected[i])")
                }
                // Row by row too: ranges that start inside a block (cols not a multiple of bs).
                let byRows = (0..<rows).flatMap { theirs.dequantize(rows: $0..<($0 + 1), simd: simd) }
                XCTAssertNil(firstBitDifference(byRows, expected, signedZeros: format == .nf4), "\(f.name) \(simd) row by row")
            }
        }
    }

    /// bitsandbytes' 8-bit blockwise quantizer with the dynamic map (what double quantization
    /// runs on absmax), on inputs placed on and around the map's midpoints.
    func testBitsandbytesBlockwise8Fixture() throws {
        let f = try Fixture.load("bnb_blockwise8_dynamic_n4100_bs256")
        let input = f.floats("input_f32")
        let dq = QuantizedMatrix.DoubleQuantized(quantizing: input, offset: 0)
        XCTAssertEqual(dq.codes.array(of: UInt8.self), f.bytes("quantized_u8"))
        XCTAssertNil(firstBitDifference(dq.nestedAbsmax.array(of: Float.self), f.floats("absmax_f32")))
        XCTAssertNil(firstBitDifference(dq.nestedCode.array(of: Float.self), f.floats("code_f32")))
        // Dequantized through the double-quantized absmax path of a matrix with one block per value.
        let m = try QuantizedMatrix(rows: input.count, cols: 64, format: .nf4, blockSize: 64,
                                    data: ByteStorage(copying: [UInt8](repeating: 0, count: input.count * 32)),
                                    scales: .doubleQuantized(dq))
        XCTAssertNil(firstBitDifference(m.blockAbsmax, f.floats("dequantized_f32"), signedZeros: false))
    }

    /// ggml: our reference quantizers write gguf-py's blocks byte for byte, and every SIMD
    /// level dequantizes them to gguf-py's values bit for bit.
    func testGGMLFixtures() throws {
        let fixtures = try Fixture.all(prefix: "ggml_")
        if fixtures.isEmpty { throw Fixture.missing("ggml fixtures (ggml_*.json)") }
        for f in fixtures {
            let format = QuantFormat(rawValue: f.string("type"))!
            let (rows, cols) = f.shape
            let ours = try QuantizedMatrix(quantizing: f.floats("input_f32"), rows: rows, cols: cols, format: format)
            XCTAssertEqual(ours.data.array(of: UInt8.self), f.bytes("blocks_u8"), "blocks, \(f.name)")
            let theirs = try QuantizedMatrix(rows: rows, cols: cols, format: format,
                                             data: ByteStorage(copying: f.bytes("blocks_u8")), scales: .inBlocks)
            let expected = f.floats("dequantized_f32")
            for simd in SIMDLevel.available {
                let got = theirs.dequantize(rows: 0..<rows, simd: simd)
                if let i = firstBitDifference(got, expected) {
                    XCTFail("\(f.name) \(simd): element \(i) is \(got[i]), gguf gives \(expected[i])")
                }
            }
        }
    }

    /// The SIMD dequantizers match the scalar reference bit for bit on random data, every format.
    func testSIMDMatchesScalarReference() throws {
        var rng = NormalSource(seed: 5)
        for format in QuantFormat.allCases {
            for dq in format.isGGML ? [false] : [false, true] {
                let m = try testMatrix(format, blockSize: format.defaultBlockSize, rows: 37, cols: format.isKQuant ? 512 : 320,
                                       scale: 0.3, doubleQuant: dq, rng: &rng)
                let reference = m.dequantize(rows: 0..<37, simd: .scalar)
                for simd in SIMDLevel.available {
                    XCTAssertNil(firstBitDifference(m.dequantize(rows: 0..<37, simd: simd), reference), "\(format) dq=\(dq) \(simd)")
                }
            }
        }
    }
}
