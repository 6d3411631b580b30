import Foundation
import QLoRA
import XCTest

final class SafetensorsFileTests: XCTestCase {
    let dir = TempDir()

    /// A safetensors file from a header string and a data section.
    func file(header: String, data: [UInt8], headerLength: UInt64? = nil) -> [UInt8] {
        var b = Bytes()
        b.u64(headerLength ?? UInt64(header.utf8.count))
        b.raw(Array(header.utf8))
        b.raw(data)
        return b.data
    }

    func open(_ bytes: [UInt8]) -> Error? {
        do { _ = try SafetensorsFile(path: dir.write("bad.safetensors", bytes)); return nil } catch { return error }
    }

    func testReadsFloatTypes() throws {
        let f32: [Float] = [1, -2.5, 3]
        let f16: [UInt16] = [0x3C00, 0xC000]          // 1, -2
        let bf16: [UInt16] = [0x3F80, 0x4040]         // 1, 3
        let data = f32.withUnsafeBytes { Array($0) } + f16.withUnsafeBytes { Array($0) } + bf16.withUnsafeBytes { Array($0) }
        let header = """
            {"__metadata__":{"format":"pt"},"a":{"dtype":"F32","shape":[3],"data_offsets":[0,12]},\
            "b":{"dtype":"F16","shape":[1,2],"data_offsets":[12,16]},"c":{"dtype":"BF16","shape":[2],"data_offsets":[16,20]}}
            """
        let s = try SafetensorsFile(path: dir.write("ok.safetensors", file(header: header, data: data)))
        XCTAssertEqual(s.metadata, ["format": "pt"])
        XCTAssertEqual(s.tensors.map(\.name), ["a", "b", "c"])
        XCTAssertEqual(try s.floats(s.tensor("a")!), f32)
        XCTAssertEqual(try s.floats(s.tensor("b")!), [1, -2])
        XCTAssertEqual(try s.floats(s.tensor("c")!), [1, 3])
        XCTAssertEqual(s.tensor("b")!.shape, [1, 2])
    }

    func testBadHeaders() {
        let path = dir.path + "/bad.safetensors"
        XCTAssertEqual(open([1, 2, 3]) as? SafetensorsError, .truncated(path: path, detail: "3 bytes, the header size alone takes 8"))
        guard case .truncated? = open(file(header: "{}", data: [], headerLength: 1000)) as? SafetensorsError else { return XCTFail() }
        guard case .headerTooLarge? = open(file(header: "{}", data: [], headerLength: 1 << 40)) as? SafetensorsError else { return XCTFail() }
        var notUTF8 = file(header: "{\"a\":1}", data: [])
        notUTF8[10] = 0xFF  // inside the key
        XCTAssertEqual(open(notUTF8) as? SafetensorsError, .headerNotUTF8(path: path))
        guard case .badHeader? = open(file(header: "[1,2]", data: [])) as? SafetensorsError else { return XCTFail() }
        guard case .badHeader? = open(file(header: "{\"a\":{\"dtype\":\"F32\",\"shape\":[1.5],\"data_offsets\":[0,4]}}", data: [0, 0, 0, 0]))
                as? SafetensorsError else { return XCTFail() }
    }

    func testBadTensors() {
        let four = [UInt8](repeating: 0, count: 4)
        func t(_ body: String, _ data: [UInt8] = [UInt8](repeating: 0, count: 4)) -> Error? { open(file(header: "{\(body)}", data: data)) }
        guard case .unknownDType(_, "a", "F8_E4M3")? = t("\"a\":{\"dtype\":\"F8_E4M3\",\"shape\":[4],\"data_offsets\":[0,4]}") as? SafetensorsError
        else { return XCTFail() }
        guard case .badTensor(_, "a", _)? = t("\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,4]}") as? SafetensorsError
        else { return XCTFail() }
        guard case .tensorOutOfBounds(_, "a", 8, 4)? = t("\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}") as? SafetensorsError
        else { return XCTFail() }
        guard case .badTensor(_, "a", _)? = t("\"a\":{\"dtype\":\"F32\",\"shape\":[4294967296,4294967296,16],\"data_offsets\":[0,4]}")
                as? SafetensorsError else { return XCTFail() }
        guard case .overlappingTensors? = t("\"a\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[0,4]},\"b\":{\"dtype\":\"U8\",\"shape\":[2],\"data_offsets\":[2,4]}")
                as? SafetensorsError else { return XCTFail() }
        guard case .hole? = t("\"a\":{\"dtype\":\"U8\",\"shape\":[2],\"data_offsets\":[2,4]}") as? SafetensorsError else { return XCTFail() }
        guard case .hole? = t("\"a\":{\"dtype\":\"U8\",\"shape\":[2],\"data_offsets\":[0,2]}", four) as? SafetensorsError else { return XCTFail() }
        guard case .badTensor? = t("\"a\":{\"dtype\":\"U8\",\"shape\":[2],\"data_offsets\":[3,1]}", four) as? SafetensorsError else { return XCTFail() }
    }

    func testEveryTruncationThrows() throws {
        let bytes = file(header: "{\"a\":{\"dtype\":\"F32\",\"shape\":[2,2],\"data_offsets\":[0,16]}}", data: [UInt8](repeating: 1, count: 16))
        XCTAssertNil(open(bytes))
        for n in 0..<bytes.count { XCTAssertNotNil(open(Array(bytes[0..<n])), "prefix \(n)") }
    }

    func testShardedFolderNamingAMissingFile() throws {
        dir.write("config.json", """
            {"model_type":"llama","hidden_size":8,"intermediate_size":16,"num_hidden_layers":1,"num_attention_heads":2,\
            "num_key_value_heads":1,"vocab_size":10,"rms_norm_eps":1e-5,"rope_theta":10000.0,"tie_word_embeddings":true}
            """)
        dir.write("model.safetensors.index.json", """
            {"metadata":{},"weight_map":{"a":"model-00001-of-00002.safetensors","b":"model-00002-of-00002.safetensors"}}
            """)
        dir.write("model-00001-of-00002.safetensors", file(header: "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}", data: [0, 0, 128, 63]))
        XCTAssertThrowsError(try HuggingFaceFolder(path: dir.path)) {
            XCTAssertEqual($0 as? HuggingFaceFolderError,
                           .missingShard(index: dir.path + "/model.safetensors.index.json", shard: dir.path + "/model-00002-of-00002.safetensors"))
        }
        dir.write("model-00002-of-00002.safetensors", file(header: "{\"b\":{\"dtype\":\"F16\",\"shape\":[1],\"data_offsets\":[0,2]}}", data: [0, 60]))
        let folder = try HuggingFaceFolder(path: dir.path)
        XCTAssertEqual(folder.config.numKVHeads, 1)
        XCTAssertEqual(folder.config.headDim, 4)
        XCTAssertEqual(try folder.tensor("b").map { try $0.file.floats($0.tensor) }, [1])
        XCTAssertEqual(try folder.tensor("a").map { try $0.file.floats($0.tensor) }, [1])
    }
}
