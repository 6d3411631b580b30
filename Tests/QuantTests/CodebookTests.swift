import Quant
import XCTest

/// Codebooks and nibble order against the values in the reference sources.
final class CodebookTests: XCTestCase {
    /// bitsandbytes/functional.py, get_4bit_type("nf4"): the table as printed there.
    func testNF4CodebookMatchesBitsandbytesSource() {
        let source: [Double] = [
            -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
            -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
            0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941,
            0.7229568362236023, 1.0,
        ]
        XCTAssertEqual(QuantFormat.nf4.codebook!, source.map { Float($0) })
    }

    /// bitsandbytes/functional.py, get_4bit_type("fp4"): {0, 0.0625, 8, 12, 4, 6, 2, 3} with the
    /// sign in bit 3, divided by 12 — and index 8 is +0, since the source's `-0` is an integer.
    func testFP4CodebookMatchesBitsandbytesSource() {
        let raw: [Float] = [0, 0.0625, 8, 12, 4, 6, 2, 3]
        let expected = ([raw[0]] + raw.dropFirst() + [0] + raw.dropFirst().map { -$0 }).map { $0 / 12 }
        XCTAssertEqual(QuantFormat.fp4.codebook![8].sign, .plus)
        XCTAssertEqual(QuantFormat.fp4.codebook!, expected)
        XCTAssertEqual(QuantFormat.fp4.codebook![11], -1)
    }

    func testCodebooksMatchBitsandbytesFixtures() throws {
        let fixtures = try Fixture.all(prefix: "bnb_").filter { $0.has("quant_type") }
        if fixtures.isEmpty { throw Fixture.missing("bitsandbytes fixtures (bnb_*.json with a quant_type)") }
        for f in fixtures {
            let format = QuantFormat(rawValue: f.string("quant_type"))!
            XCTAssertNil(firstBitDifference(format.codebook!, f.floats("code_f32")), f.name)
            if f.bool("double_quant") {
                XCTAssertNil(firstBitDifference(dynamicMap8Bit, f.floats("nested_code_f32")), "dynamic map, \(f.name)")
            }
        }
    }

    func testDynamicMapShape() {
        XCTAssertEqual(dynamicMap8Bit.count, 256)
        XCTAssertEqual(dynamicMap8Bit, dynamicMap8Bit.sorted(), "bitsandbytes sorts the map")
        XCTAssertEqual(dynamicMap8Bit.last, 1)
        XCTAssertEqual(dynamicMap8Bit.first, -dynamicMap8Bit[dynamicMap8Bit.count - 2])
    }

    /// bitsandbytes puts the first element of a pair in the high nibble; ggml puts element j
    /// of a block in the low nibble of qs[j] and element j+16 in its high nibble
    /// (ggml-quants.c, dequantize_row_q4_0).
    func testNibbleOrder() throws {
        let nf4 = try QuantizedMatrix(rows: 1, cols: 64, format: .nf4, blockSize: 64,
                                      data: ByteStorage(copying: [UInt8(0xF0)] + [UInt8](repeating: 0x77, count: 31)),
                                      scales: .absmax(ByteStorage(copying: [Float(2)])))
        let v = nf4.dequantize()
        XCTAssertEqual(v[0], 2)   // code 15 = 1.0, high nibble
        XCTAssertEqual(v[1], -2)  // code 0 = -1.0, low nibble
        XCTAssertEqual(v[2], 0)   // code 7 = 0.0

        var block = [UInt8](repeating: 0, count: 18)
        block[0] = 0x00; block[1] = 0x3C  // fp16 1.0
        block[2] = 0xF1                    // element 0: low nibble 1 → -7; element 16: high nibble 15 → 7
        let q4 = try QuantizedMatrix(rows: 1, cols: 32, format: .q4_0, data: ByteStorage(copying: block), scales: .inBlocks)
        let w = q4.dequantize()
        XCTAssertEqual(w[0], -7)
        XCTAssertEqual(w[16], 7)
        XCTAssertEqual(w[1], -8)
    }

    /// fp16 conversion agrees with Swift's Float16 (IEEE, round to nearest even) everywhere.
    func testFP16ConversionsMatchFloat16() throws {
        for h in UInt16.min...UInt16.max {
            let ours = FP16.float(fromBits: h), reference = Float(Float16(bitPattern: h))
            if reference.isNaN { XCTAssertTrue(ours.isNaN); continue }
            XCTAssertEqual(ours.bitPattern, reference.bitPattern, "half \(h)")
        }
        var rng = NormalSource(seed: 7)
        let samples = rng.array(20000, scale: 3) + rng.array(20000, scale: 1e-5) + rng.array(2000, scale: 30000)
            + [65519, 65520, 65536, 1e-8, 5.96e-8, 2.98e-8, -0.0, .infinity]
        for x in samples {
            XCTAssertEqual(FP16.bits(from: x), Float16(x).bitPattern, "float \(x)")
        }
        // The row conversion (one C loop, vectorized) gives the same bits, NaN payloads included.
        let row = samples + [-.infinity, .nan, -Float.nan, Float(bitPattern: 0x7F80_0001), .leastNonzeroMagnitude]
        XCTAssertEqual(FP16.bits(from: row), row.map { FP16.bits(from: $0) })
        XCTAssertEqual(FP16.bits(from: [Float]()), [])
        XCTAssertEqual(FP16.bytes(from: row), row.flatMap { x in withUnsafeBytes(of: FP16.bits(from: x).littleEndian) { Array($0) } })
    }
}
