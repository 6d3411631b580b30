import Foundation
import QLoRA
import Quant
import XCTest

final class GGUFFileTests: XCTestCase {
    let dir = TempDir()

    /// A small valid file: metadata of every value type (nested arrays too) and three tensors.
    func sampleWriter() -> (GGUFWriter, [[UInt8]], [Float]) {
        var w = GGUFWriter()
        w.metadata = [
            ("general.architecture", .string("llama")),
            ("u8", .uint8(200)), ("i8", .int8(-5)), ("u16", .uint16(60000)), ("i16", .int16(-300)),
            ("u32", .uint32(4_000_000_000)), ("i32", .int32(-7)), ("f32", .float32(0.25)), ("b", .bool(true)),
            ("u64", .uint64(1 << 40)), ("i64", .int64(-1 << 40)), ("f64", .float64(1e-300)),
            ("tokens", .array([.string("a"), .string("é"), .string("<|im_start|>")])),
            ("nested", .array([.array([.int32(1), .int32(2)]), .array([.int32(3)])])),
        ]
        var rng = SystemRandomNumberGenerator()
        let values = (0..<(4 * 64)).map { _ in Float.random(in: -1...1, using: &rng) }
        let q8 = try! QuantizedMatrix(quantizing: values, rows: 4, cols: 64, format: .q8_0)
        let norm: [Float] = (0..<64).map { Float($0) / 64 }
        w.tensors = [
            .init(name: "norm.weight", ne: [64], type: .f32),
            .init(name: "blk.0.attn_q.weight", ne: [64, 4], type: .q8_0),
            .init(name: "odd", ne: [3], type: .f32),
        ]
        let data = [norm.withUnsafeBytes { Array($0) }, q8.data.array(of: UInt8.self), [Float(1), 2, 3].withUnsafeBytes { Array($0) }]
        return (w, data, q8.dequantize())
    }

    func testRoundTripThroughWriterAndReader() throws {
        let (w, data, dequantized) = sampleWriter()
        let path = dir.path + "/m.gguf"
        try w.write(to: path) { data[$0] }
        let g = try GGUFFile(path: path)
        XCTAssertEqual(g.version, 3)
        XCTAssertEqual(g.metadataKeys, w.metadata.map(\.key))
        for (k, v) in w.metadata { XCTAssertEqual(g.metadata[k], v, k) }
        XCTAssertEqual(g.tensors.map(\.name), ["norm.weight", "blk.0.attn_q.weight", "odd"])
        let q = try XCTUnwrap(g.tensor("blk.0.attn_q.weight"))
        XCTAssertEqual(q.shape, [4, 64])
        XCTAssertEqual(q.offset % 32, 0)
        XCTAssertEqual(try g.dequantize(q), dequantized)
        XCTAssertEqual(try g.dequantize(g.tensor("norm.weight")!), (0..<64).map { Float($0) / 64 })
        XCTAssertEqual(try g.dequantize(g.tensor("odd")!), [1, 2, 3])
        XCTAssertFalse(FileManager.default.fileExists(atPath: path + ".partial"))
    }

    /// Every prefix of a valid file is refused with an error, never a crash or a read past the end.
    func testEveryTruncationThrows() throws {
        let (w, data, _) = sampleWriter()
        let bytes = w.serialize { data[$0] }
        for n in stride(from: 0, to: bytes.count, by: 1) {
            let path = dir.write("t.gguf", Array(bytes[0..<n]))
            XCTAssertThrowsError(try GGUFFile(path: path), "prefix of \(n) bytes")
        }
    }

    func header(version: UInt32 = 3, tensors: UInt64 = 0, kvs: UInt64 = 0) -> Bytes {
        var b = Bytes()
        b.u32(0x4655_4747); b.u32(version); b.u64(tensors); b.u64(kvs)
        return b
    }

    func open(_ b: Bytes) -> Error? {
        do { _ = try GGUFFile(path: dir.write("bad.gguf", b.data)); return nil } catch { return error }
    }

    func testBadMagicAndVersion() {
        var b = Bytes(); b.u32(0x1234_5678); b.u32(3); b.u64(0); b.u64(0)
        XCTAssertEqual(open(b) as? GGUFError, .badMagic(path: dir.path + "/bad.gguf", found: 0x1234_5678))
        guard case .unsupportedVersion(_, 1, nil)? = open(header(version: 1)) as? GGUFError else { return XCTFail() }
        guard case .unsupportedVersion(_, 4, nil)? = open(header(version: 4)) as? GGUFError else { return XCTFail() }
        guard case .unsupportedVersion(_, _, "a big-endian file"?)? = open(header(version: UInt32(3).byteSwapped)) as? GGUFError else { return XCTFail() }
    }

    func testLengthsPastTheEnd() {
        var b = header(kvs: 1)
        b.u64(1 << 40)  // key length
        b.raw([UInt8](repeating: 65, count: 16))
        guard case .truncated(_, "key of metadata entry 0", _, _, _)? = open(b) as? GGUFError else { return XCTFail("\(String(describing: open(b)))") }

        b = header(kvs: 1); b.str("tokens"); b.u32(9); b.u32(8); b.u64(1 << 50)  // array of strings, absurd count
        guard case .countTooLarge(_, "elements of 'tokens'", _, _)? = open(b) as? GGUFError else { return XCTFail("\(String(describing: open(b)))") }

        b = header(kvs: 1 << 60)
        guard case .countTooLarge(_, "metadata key-value pairs", _, _)? = open(b) as? GGUFError else { return XCTFail() }

        b = header(kvs: 1); b.str("k"); b.u32(8); b.u64(100); b.raw(Array("short".utf8))
        guard case .truncated? = open(b) as? GGUFError else { return XCTFail() }
    }

    func tensorFile(_ infos: [(String, [UInt64], UInt32, UInt64)], dataBytes: Int, alignment: UInt32? = nil) -> Bytes {
        var b = header(tensors: UInt64(infos.count), kvs: alignment == nil ? 0 : 1)
        if let alignment { b.str("general.alignment"); b.u32(4); b.u32(alignment) }
        for (name, ne, type, offset) in infos {
            b.str(name); b.u32(UInt32(ne.count)); ne.forEach { b.u64($0) }; b.u32(type); b.u64(offset)
        }
        b.pad(to: Int(alignment ?? 32))
        b.raw([UInt8](repeating: 0, count: dataBytes))
        return b
    }

    func testTensorOffsetsAndShapes() {
        XCTAssertNil(open(tensorFile([("a", [8, 2], 0, 0)], dataBytes: 64)))
        guard case .tensorOutOfBounds(_, "a", 32, 64, 64)? = open(tensorFile([("a", [8, 2], 0, 32)], dataBytes: 64)) as? GGUFError
        else { return XCTFail() }
        guard case .overlappingTensors? = open(tensorFile([("a", [16], 0, 0), ("b", [16], 0, 32)], dataBytes: 96)) as? GGUFError
        else { return XCTFail() }
        guard case .badDimensions(_, "a", _)? = open(tensorFile([("a", [1 << 32, 1 << 32, 1 << 32], 0, 0)], dataBytes: 64)) as? GGUFError
        else { return XCTFail() }
        // Found by fuzz-gguf: an element count that fits but a byte count that does not.
        guard case .badDimensions(_, "a", _)? = open(tensorFile([("a", [1 << 61, 2], 0, 0)], dataBytes: 64)) as? GGUFError
        else { return XCTFail() }
        guard case .badDimensions(_, "a", _)? = open(tensorFile([("a", [1, 1, 1, 1, 1], 0, 0)], dataBytes: 64)) as? GGUFError
        else { return XCTFail() }
        guard case .unsupportedTensorType(_, "a", 77)? = open(tensorFile([("a", [8], 77, 0)], dataBytes: 64)) as? GGUFError
        else { return XCTFail() }
        guard case .rowNotMultipleOfBlock(_, "a", 48, 32)? = open(tensorFile([("a", [48, 2], 8, 0)], dataBytes: 128)) as? GGUFError
        else { return XCTFail() }
        guard case .duplicateTensor(_, "a")? = open(tensorFile([("a", [8], 0, 0), ("a", [8], 0, 32)], dataBytes: 64)) as? GGUFError
        else { return XCTFail() }
        guard case .tensorOutOfBounds? = open(tensorFile([("a", [8], 0, 8)], dataBytes: 64)) as? GGUFError  // misaligned offset
        else { return XCTFail() }
        guard case .badAlignment? = open(tensorFile([("a", [8], 0, 0)], dataBytes: 64, alignment: 24)) as? GGUFError
        else { return XCTFail() }
        XCTAssertNil(open(tensorFile([("a", [8], 0, 0)], dataBytes: 64, alignment: 64)))
    }

    func testBadMetadataValues() {
        var b = header(kvs: 2); b.str("k"); b.u32(4); b.u32(1); b.str("k"); b.u32(4); b.u32(2)
        XCTAssertEqual(open(b) as? GGUFError, .duplicateKey(path: dir.path + "/bad.gguf", key: "k"))
        b = header(kvs: 1); b.str("k"); b.u32(13); b.u32(0)
        guard case .badValue(_, "k", _)? = open(b) as? GGUFError else { return XCTFail() }
        b = header(kvs: 1); b.u64(2); b.raw([0xC3, 0x28]); b.u32(4); b.u32(0)  // invalid UTF-8 key
        guard case .invalidUTF8? = open(b) as? GGUFError else { return XCTFail() }
        b = header(kvs: 1); b.str("deep"); b.u32(9)
        for _ in 0..<20 { b.u32(9); b.u64(1) }  // arrays of arrays of ...
        b.raw([UInt8](repeating: 0, count: 64))
        guard case .badValue(_, "deep", _)? = open(b) as? GGUFError else { return XCTFail("\(String(describing: open(b)))") }
        b = header(kvs: 1); b.str("flag"); b.u32(7); b.u8(2)
        guard case .badValue(_, "flag", _)? = open(b) as? GGUFError else { return XCTFail() }
    }

    func testErrorMessagesNameTheFileAndTheTensor() {
        let e = open(tensorFile([("blk.3.ffn_up.weight", [8, 2], 0, 32)], dataBytes: 64))
        let message = "\(e!)"
        XCTAssertTrue(message.contains("bad.gguf") && message.contains("blk.3.ffn_up.weight"), message)
    }
}
