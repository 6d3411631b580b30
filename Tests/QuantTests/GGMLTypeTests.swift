import Quant
import QuantKernels
import XCTest

/// Every GGUF tensor type qlora reads dequantizes bit for bit as gguf-py (and so ggml's
/// dequantize_row_*; tools/make_ggml_type_fixtures.py), and bad sizes throw before a byte is read.
final class GGMLTypeTests: XCTestCase {
    /// gguf-py 0.19.0, gguf/constants.py: GGMLQuantizationType (ids) and GGML_QUANT_SIZES
    /// ((elements, bytes) per block), as ggml.c's type_traits.
    static let ggmlTable: [(name: String, id: UInt32, blockSize: Int, blockBytes: Int)] = [
        ("F32", 0, 1, 4), ("F16", 1, 1, 2), ("BF16", 30, 1, 2),
        ("Q4_0", 2, 32, 2 + 16), ("Q4_1", 3, 32, 2 + 2 + 16), ("Q5_0", 6, 32, 2 + 4 + 16),
        ("Q5_1", 7, 32, 2 + 2 + 4 + 16), ("Q8_0", 8, 32, 2 + 32),
        ("Q2_K", 10, 256, 2 + 2 + 256 / 16 + 256 / 4), ("Q3_K", 11, 256, 2 + 256 / 4 + 256 / 8 + 12),
        ("Q4_K", 12, 256, 2 + 2 + 256 / 2 + 12), ("Q5_K", 13, 256, 2 + 2 + 256 / 2 + 256 / 8 + 12),
        ("Q6_K", 14, 256, 2 + 256 / 2 + 256 / 4 + 256 / 16),
    ]

    /// Types GGUF defines that qlora does not read: Q8_1, Q8_K, the IQ and TQ families, the
    /// integer types, F64, MXFP4, NVFP4, Q1_0, the retired ids 4 and 5, and unknown ids.
    static let unreadableIDs: [UInt32] = [4, 5, 9] + Array(15...29) + [31, 34, 35, 39, 40, 41, 1000, .max]

    func testBlockSizesAndNamesMatchGGML() {
        XCTAssertEqual(GGMLType.allCases.count, Self.ggmlTable.count)
        for entry in Self.ggmlTable {
            guard let type = GGMLType(ggufID: entry.id) else { XCTFail("\(entry.name) (\(entry.id)) not readable"); continue }
            XCTAssertEqual(type.name, entry.name)
            XCTAssertEqual(type.blockSize, entry.blockSize, entry.name)
            XCTAssertEqual(type.blockBytes, entry.blockBytes, entry.name)
        }
    }

    func testUnreadableTypesAreRefused() {
        for id in Self.unreadableIDs {
            XCTAssertNil(GGMLType(ggufID: id), "id \(id)")
            XCTAssertEqual(qk_ggml_block_size(id), 0, "id \(id)")
            XCTAssertEqual(qk_ggml_block_bytes(id), 0, "id \(id)")
            XCTAssertNil(qk_ggml_type_name(id), "id \(id)")
            var y = [Float](repeating: 7, count: 256)
            XCTAssertEqual(qk_ggml_dequantize_row(id, [UInt8](repeating: 0, count: 1024), &y, 256), -1, "id \(id)")
            XCTAssertEqual(y, [Float](repeating: 7, count: 256), "id \(id) wrote output")
        }
    }

    /// The whole tensor in one call, row by row, and from an odd address all give gguf-py's bits.
    func testFixturesDequantizeBitExact() throws {
        let fixtures = try Fixture.all(prefix: "ggmltype_")
        XCTAssertEqual(Set(fixtures.map { $0.string("type") }), Set(GGMLType.allCases.map(\.name)),
                       "one fixture per type: run tools/make_ggml_type_fixtures.py")
        for f in fixtures {
            let type = try XCTUnwrap(GGMLType(ggufID: UInt32(f.int("type_id"))), f.name)
            XCTAssertEqual(type.name, f.string("type"), f.name)
            let (rows, cols) = f.shape
            let raw = f.bytes("raw_u8"), expected = f.floats("dequantized_f32")
            let rowBytes = try type.rowBytes(columns: cols)
            XCTAssertEqual(rowBytes * rows, raw.count, f.name)

            let whole = try dequantize(type, raw, columns: rows * cols)
            if let i = firstBitDifference(whole, expected) {
                XCTFail("\(f.name): element \(i) is \(whole[i]) (0x\(String(whole[i].bitPattern, radix: 16))), "
                        + "gguf-py gives \(expected[i]) (0x\(String(expected[i].bitPattern, radix: 16)))")
            }
            var byRow: [Float] = []
            for r in 0..<rows {
                byRow += try dequantize(type, Array(raw[r * rowBytes..<(r + 1) * rowBytes]), columns: cols)
            }
            XCTAssertNil(firstBitDifference(byRow, expected), "\(f.name) row by row")

            let shifted = [UInt8](repeating: 0, count: 1) + raw
            let odd = try shifted.withUnsafeBytes { buffer in
                try dequantize(type, UnsafeRawBufferPointer(rebasing: buffer[1...]), columns: rows * cols)
            }
            XCTAssertNil(firstBitDifference(odd, expected), "\(f.name) from an odd address")
        }
    }

    func testBadSizesThrowBeforeReading() throws {
        for type in GGMLType.allCases {
            let columns = 2 * type.blockSize
            let bytes = try type.rowBytes(columns: columns)
            XCTAssertEqual(bytes, 2 * type.blockBytes)
            // One byte short or long: refused before C reads anything.
            XCTAssertThrowsError(try dequantize(type, [UInt8](repeating: 0x55, count: bytes - 1), columns: columns)) {
                XCTAssertEqual($0 as? GGMLTypeError,
                               .sourceSizeMismatch(type: type, columns: columns, expected: bytes, actual: bytes - 1))
            }
            XCTAssertThrowsError(try dequantize(type, [UInt8](repeating: 0x55, count: bytes + 1), columns: columns))
            XCTAssertThrowsError(try type.rowBytes(columns: -type.blockSize)) {
                XCTAssertEqual($0 as? GGMLTypeError, .invalidColumns(type: type, columns: -type.blockSize))
            }
            // A row whose byte count overflows Int (only where a block has more bytes than elements).
            let (huge, overflow) = (Int.max / type.blockBytes + 1).multipliedReportingOverflow(by: type.blockSize)
            if !overflow {
                XCTAssertThrowsError(try type.rowBytes(columns: huge)) {
                    XCTAssertEqual($0 as? GGMLTypeError, .invalidColumns(type: type, columns: huge))
                }
            }
            var y = [Float](repeating: 0, count: columns - 1)
            XCTAssertThrowsError(try [UInt8](repeating: 0, count: bytes).withUnsafeBytes { src in
                try y.withUnsafeMutableBufferPointer { try type.dequantizeRow(src, columns: columns, into: $0) }
            }) {
                XCTAssertEqual($0 as? GGMLTypeError, .destinationTooSmall(type: type, needed: columns, actual: columns - 1))
            }
            XCTAssertEqual(try dequantize(type, [], columns: 0), [])
            guard type.blockSize > 1 else { continue }
            let ragged = columns + type.blockSize / 2
            XCTAssertThrowsError(try type.rowBytes(columns: ragged)) {
                XCTAssertEqual($0 as? GGMLTypeError,
                               .columnsNotMultipleOfBlock(type: type, columns: ragged, blockSize: type.blockSize))
            }
            XCTAssertThrowsError(try dequantize(type, [UInt8](repeating: 0, count: 3 * type.blockBytes), columns: ragged))
        }
        var y = [Float](repeating: 0, count: 64)
        XCTAssertEqual(qk_ggml_dequantize_row(GGMLType.q4_K.rawValue, [UInt8](repeating: 0, count: 144), &y, 64), -1)
        XCTAssertEqual(qk_ggml_dequantize_row(GGMLType.q8_0.rawValue, [UInt8](repeating: 0, count: 34), &y, -32), -1)
    }

    /// Q8_0 rounds x/d half away from zero, as ggml's roundf: ties (x/d = k + 0.5 exactly), the
    /// float just below a tie, and random values, against Swift's own rounding rule.
    func testQ8_0RoundsHalfAwayFromZeroLikeRoundf() {
        var values: [Float] = [127, -127, 2.5, -2.5, 0.5, -0.5, 1.5, -1.5, 126.5, -126.5,
                               Float(0.5).nextDown, -Float(0.5).nextDown, Float(2.5).nextDown, Float(2.5).nextUp,
                               0, -0, 1e-30, 3.4999998, -3.4999998, 64.5, -64.5, 100.49999, 7, -7, 0.25, 99.5,
                               -99.5, 12.5, 13.5, -13.5]
        var rng = SystemRandomNumberGenerator()
        for _ in 0..<(32 * 63 + 2) { values.append(Float.random(in: -3...3, using: &rng)) }
        var blocks = [UInt8](repeating: 0, count: values.count / 32 * 34)
        qk_quantize_row_q8_0_ref(values, &blocks, Int64(values.count))
        for b in 0..<(values.count / 32) {
            let x = values[(b * 32)..<(b * 32 + 32)]
            let d = x.map(abs).max()! / 127, id = d != 0 ? 1 / d : 0
            for (j, v) in x.enumerated() {
                let expected = Int8((v * id).rounded(.toNearestOrAwayFromZero))
                XCTAssertEqual(Int8(bitPattern: blocks[b * 34 + 2 + j]), expected, "block \(b) value \(j): \(v) × \(id)")
            }
        }
    }

    private func dequantize(_ type: GGMLType, _ raw: [UInt8], columns: Int) throws -> [Float] {
        try raw.withUnsafeBytes { try dequantize(type, $0, columns: columns) }
    }

    private func dequantize(_ type: GGMLType, _ raw: UnsafeRawBufferPointer, columns: Int) throws -> [Float] {
        var y = [Float](repeating: .nan, count: columns)
        try y.withUnsafeMutableBufferPointer { try type.dequantizeRow(raw, columns: columns, into: $0) }
        return y
    }
}
