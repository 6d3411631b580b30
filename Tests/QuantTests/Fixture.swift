import Quant
import Foundation
import XCTest

/// A JSON fixture written by tools/make_quant_fixtures.py. Arrays are hex strings of
/// little-endian bytes.
struct Fixture {
    let name: String
    let json: [String: Any]

    static func load(_ name: String, file: StaticString = #filePath, line: UInt = #line) throws -> Fixture {
        guard let url = Bundle.module.url(forResource: name, withExtension: "json", subdirectory: "Fixtures") else {
            throw missing("fixture \(name).json", file: file, line: line)
        }
        let object = try JSONSerialization.jsonObject(with: Data(contentsOf: url))
        return Fixture(name: name, json: object as! [String: Any])
    }

    /// Every fixture whose name starts with `prefix`.
    static func all(prefix: String, file: StaticString = #filePath, line: UInt = #line) throws -> [Fixture] {
        guard let dir = Bundle.module.url(forResource: "Fixtures", withExtension: nil) else {
            throw missing("Tests/QuantTests/Fixtures", file: file, line: line)
        }
        return try FileManager.default.contentsOfDirectory(atPath: dir.path).sorted()
            .filter { $0.hasPrefix(prefix) && $0.hasSuffix(".json") }
            .map { try load(String($0.dropLast(5))) }
    }

    /// The fixtures are committed, so one missing is a failure, not a skip: records it with the
    /// command that writes them again and returns the error that stops the test.
    static func missing(_ what: String, file: StaticString = #filePath, line: UInt = #line) -> Error {
        let message = "\(what) missing: run tools/make_quant_fixtures.py and commit what it writes"
        XCTFail(message, file: file, line: line)
        return Missing(description: message)
    }

    struct Missing: Error, CustomStringConvertible { let description: String }

    func int(_ key: String) -> Int { json[key] as! Int }
    func string(_ key: String) -> String { json[key] as! String }
    func bool(_ key: String) -> Bool { json[key] as! Bool }
    func has(_ key: String) -> Bool { json[key] != nil }
    var shape: (rows: Int, cols: Int) { let s = json["shape"] as! [Int]; return (s[0], s[1]) }

    func bytes(_ key: String) -> [UInt8] {
        let hex = Array(string(key).utf8)
        func nibble(_ c: UInt8) -> UInt8 { c <= 57 ? c - 48 : c - 87 }
        return stride(from: 0, to: hex.count, by: 2).map { nibble(hex[$0]) << 4 | nibble(hex[$0 + 1]) }
    }

    func floats(_ key: String) -> [Float] {
        let b = bytes(key)
        return stride(from: 0, to: b.count, by: 4).map {
            Float(bitPattern: UInt32(b[$0]) | UInt32(b[$0 + 1]) << 8 | UInt32(b[$0 + 2]) << 16 | UInt32(b[$0 + 3]) << 24)
        }
    }
}

/// Index of the first element where two float arrays differ bit for bit, or nil.
/// `signedZeros: false` takes +0 and −0 as equal (bitsandbytes' FP4 gives either for the
/// same nibble, depending on which of its CPU paths ran).
func firstBitDifference(_ a: [Float], _ b: [Float], signedZeros: Bool = true) -> Int? {
    if a.count != b.count { return min(a.count, b.count) }
    return a.indices.first { a[$0].bitPattern != b[$0].bitPattern && (signedZeros || a[$0] != 0 || b[$0] != 0) }
}

/// Deterministic normal samples (Box–Muller over a 64-bit LCG), so failures reproduce.
struct NormalSource {
    var state: UInt64
    init(seed: UInt64) { state = seed &* 6364136223846793005 &+ 1442695040888963407 }
    mutating func uniform() -> Double {
        state = state &* 6364136223846793005 &+ 1442695040888963407
        return (Double(state >> 11) + 0.5) / Double(1 << 53)
    }
    mutating func next() -> Float {
        Float((-2 * log(uniform())).squareRoot() * cos(2 * Double.pi * uniform()))
    }
    mutating func array(_ n: Int, scale: Float = 1) -> [Float] { (0..<n).map { _ in next() * scale } }
}

/// Random blocks of a ggml format qlora only reads (Q5_0, Q5_1, K-quants), as a matrix:
/// random code bytes, fp16 scales of ±[0.01, 0.1]·`scale` written at ggml-common.h's offsets
/// (spelled out here, not taken from the library, so a wrong table there shows up as NaNs or
/// a mismatch). Every code, sub-scale and min takes values across its range.
func randomGGMLBlocks(_ format: QuantFormat, rows: Int, cols: Int, scale: Float = 1, rng: inout NormalSource) throws -> QuantizedMatrix {
    let (blockBytes, blockSize, scaleOffsets): (Int, Int, [Int]) = switch format {
    case .q5_0: (22, 32, [0])
    case .q5_1: (24, 32, [0, 2])
    case .q2_K: (84, 256, [80, 82])
    case .q3_K: (110, 256, [108])
    case .q4_K: (144, 256, [0, 2])
    case .q5_K: (176, 256, [0, 2])
    case .q6_K: (210, 256, [208])
    default: preconditionFailure("\(format) has a quantizer: use QuantizedMatrix(quantizing:)")
    }
    let blocks = rows * cols / blockSize
    var bytes = (0..<(blocks * blockBytes)).map { _ in UInt8(truncatingIfNeeded: Int(rng.uniform() * 256)) }
    for b in 0..<blocks {
        for offset in scaleOffsets {
            let d = Float(0.01 + 0.09 * rng.uniform()) * scale * (rng.uniform() < 0.5 ? -1 : 1)
            let h = FP16.bits(from: d)
            bytes[b * blockBytes + offset] = UInt8(h & 0xFF)
            bytes[b * blockBytes + offset + 1] = UInt8(h >> 8)
        }
    }
    return try QuantizedMatrix(rows: rows, cols: cols, format: format, data: ByteStorage(copying: bytes), scales: .inBlocks)
}

/// A matrix of `format` holding values near N(0, scale²): quantized where qlora has a
/// quantizer, else random blocks of that format.
func testMatrix(_ format: QuantFormat, blockSize: Int, rows: Int, cols: Int, scale: Float, doubleQuant: Bool,
                rng: inout NormalSource) throws -> QuantizedMatrix {
    if format.canQuantize {
        return try QuantizedMatrix(quantizing: rng.array(rows * cols, scale: scale), rows: rows, cols: cols, format: format,
                                   blockSize: blockSize, doubleQuant: doubleQuant)
    }
    return try randomGGMLBlocks(format, rows: rows, cols: cols, scale: scale, rng: &rng)
}
