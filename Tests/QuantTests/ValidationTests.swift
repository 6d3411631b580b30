import Quant
import XCTest

/// Bad sizes, shapes and scales are refused with errors that name them.
final class ValidationTests: XCTestCase {
    func absmax(_ n: Int, _ v: Float = 1) -> QuantizedMatrix.Scales { .absmax(ByteStorage(copying: [Float](repeating: v, count: n))) }
    func bytes(_ n: Int) -> ByteStorage { ByteStorage(copying: [UInt8](repeating: 0x11, count: n)) }

    func testWrongStorageSizesThrow() {
        XCTAssertThrowsError(try QuantizedMatrix(rows: 4, cols: 64, format: .nf4, data: bytes(127), scales: absmax(4))) {
            XCTAssertEqual($0 as? QuantError, .sizeMismatch(what: "nf4 packed codes", expected: 128, actual: 127))
        }
        XCTAssertThrowsError(try QuantizedMatrix(rows: 4, cols: 64, format: .nf4, data: bytes(128), scales: absmax(3))) {
            XCTAssertEqual($0 as? QuantError, .sizeMismatch(what: "absmax", expected: 16, actual: 12))
        }
        XCTAssertThrowsError(try QuantizedMatrix(rows: 2, cols: 64, format: .q4_1, data: bytes(79), scales: .inBlocks)) {
            XCTAssertEqual($0 as? QuantError, .sizeMismatch(what: "q4_1 blocks", expected: 80, actual: 79))
        }
        XCTAssertThrowsError(try QuantizedMatrix(rows: 2, cols: 64, format: .q4_0, data: bytes(72), scales: absmax(4))) {
            guard case .statisticsMismatch(.q4_0, _)? = $0 as? QuantError else { return XCTFail("\($0)") }
        }
        XCTAssertThrowsError(try QuantizedMatrix(rows: 2, cols: 64, format: .nf4, data: bytes(64), scales: .inBlocks))
        let dq = QuantizedMatrix.DoubleQuantized(codes: bytes(2), offset: 0.1, nestedAbsmax: ByteStorage(copying: [Float(1)]),
                                                 nestedCode: ByteStorage(copying: [Float](repeating: 0, count: 255)))
        XCTAssertThrowsError(try QuantizedMatrix(rows: 2, cols: 64, format: .nf4, data: bytes(64), scales: .doubleQuantized(dq))) {
            XCTAssertEqual($0 as? QuantError, .sizeMismatch(what: "nested quant map", expected: 1024, actual: 1020))
        }
        XCTAssertThrowsError(try QuantizedMatrix(rows: 2, cols: 64, format: .nf4, data: bytes(64), scales: absmax(2),
                                                 code: ByteStorage(copying: [Float](repeating: 0, count: 8))))
    }

    func testBadShapesAndBlockSizesThrow() {
        XCTAssertThrowsError(try QuantizedMatrix(rows: 0, cols: 64, format: .nf4, data: bytes(0), scales: absmax(0))) {
            XCTAssertEqual($0 as? QuantError, .invalidShape(rows: 0, cols: 64))
        }
        XCTAssertThrowsError(try QuantizedMatrix(rows: Int.max / 2, cols: 4, format: .q8_0, data: bytes(0), scales: .inBlocks)) {
            XCTAssertEqual($0 as? QuantError, .invalidShape(rows: Int.max / 2, cols: 4))
        }
        XCTAssertThrowsError(try QuantizedMatrix(rows: 2, cols: 48, format: .q4_0, data: bytes(54), scales: .inBlocks)) {
            XCTAssertEqual($0 as? QuantError, .columnsNotMultipleOfBlock(format: .q4_0, columns: 48, blockSize: 32))
        }
        for bs in [16, 48, 8192] {
            XCTAssertThrowsError(try QuantizedMatrix(quantizing: [Float](repeating: 1, count: 256), rows: 2, cols: 128,
                                                     format: .nf4, blockSize: bs)) {
                guard case .invalidBlockSize(.nf4, bs, _)? = $0 as? QuantError else { return XCTFail("\($0)") }
            }
        }
        XCTAssertThrowsError(try QuantizedMatrix(quantizing: [1, 2, 3], rows: 2, cols: 2, format: .nf4)) {
            XCTAssertEqual($0 as? QuantError, .bufferTooSmall(what: "values to quantize", needed: 4, actual: 3))
        }
    }

    func testNonFiniteScalesThrow() {
        XCTAssertThrowsError(try QuantizedMatrix(rows: 1, cols: 128, format: .nf4, data: bytes(64),
                                                 scales: .absmax(ByteStorage(copying: [Float(1), .nan])))) {
            guard case .nonFiniteScale("absmax", 1, _)? = $0 as? QuantError else { return XCTFail("\($0)") }
        }
        var blocks = [UInt8](repeating: 0, count: 2 * 20)
        blocks[20 + 2] = 0x00; blocks[20 + 3] = 0x7C  // block 1: m = +inf
        XCTAssertThrowsError(try QuantizedMatrix(rows: 1, cols: 64, format: .q4_1, data: ByteStorage(copying: blocks), scales: .inBlocks)) {
            XCTAssertEqual($0 as? QuantError, .nonFiniteScale(what: "q4_1 m", block: 1, value: .infinity))
        }
    }

    func testErrorsDescribeThemselves() {
        XCTAssertEqual(QuantError.columnsNotMultipleOfBlock(format: .q4_0, columns: 48, blockSize: 32).description,
                       "q4_0 needs the column count to be a multiple of 32 (ggml blocks never straddle rows), got 48 columns")
    }
}
