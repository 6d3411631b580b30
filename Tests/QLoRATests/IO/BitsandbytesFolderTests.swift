import Foundation
import QLoRA
import Quant
import XCTest

/// Folders written by transformers + bitsandbytes (tools/make_model_fixtures.py, a tiny
/// random Llama): qlora reads them as they are, and writes what bitsandbytes writes.
final class BitsandbytesFolderTests: XCTestCase {
    let dir = TempDir()
    let fixtures = Bundle.module.url(forResource: "Fixtures", withExtension: nil)!.path

    func path(_ name: String) -> String { fixtures + "/" + name }

    func expected(_ key: String, in object: [String: Any]? = nil) throws -> [Float] {
        let json = try object ?? (JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: path("tiny-llama-expected.json")))) as! [String: Any])
        return RopePermutationTests.floats(hex: json[key] as! String)
    }

    func dequantizedFixture(_ key: String) throws -> [Float] {
        let json = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: path("tiny-llama-expected.json")))) as! [String: Any]
        return try expected(key, in: json["dequantized"] as? [String: Any])
    }

    /// transformers 5 config (rope_parameters, dtype) and fp32, bf16 and sharded folders agree.
    func testPlainFolders() throws {
        let fp32 = try HuggingFaceFolder(path: path("tiny-llama"))
        XCTAssertEqual(fp32.config.ropeTheta, 10000)
        XCTAssertEqual([fp32.config.hiddenSize, fp32.config.intermediateSize, fp32.config.numHeads, fp32.config.numKVHeads, fp32.config.headDim],
                       [64, 320, 4, 2, 16])
        XCTAssertFalse(fp32.config.tieWordEmbeddings)
        let sharded = try HuggingFaceFolder(path: path("tiny-llama-sharded"))
        XCTAssertGreaterThan(sharded.shards.count, 1)
        let bf16 = try HuggingFaceFolder(path: path("tiny-llama-bf16"))
        for (file, t) in fp32.tensors {
            let a = try file.floats(t)
            let (sf, st) = try XCTUnwrap(sharded.tensor(t.name))
            XCTAssertEqual(try sf.floats(st), a, t.name)
            let (bf, bt) = try XCTUnwrap(bf16.tensor(t.name))
            XCTAssertEqual(bt.dtype, .BF16)
            let rounded = a.map { BF16.float(fromBits: BF16.bits(from: $0)) }
            XCTAssertEqual(try bf.floats(bt), rounded, t.name)
        }
    }

    /// bnb-4bit folders load as they are and dequantize to bitsandbytes' own values.
    func testReadsBitsandbytesFolders() throws {
        for (folder, format, key) in [("tiny-llama-bnb-nf4", QuantFormat.nf4, "bnb_nf4_f32"), ("tiny-llama-bnb-fp4", .fp4, "bnb_fp4_f32")] {
            let m = try QuantizedModel(path: path(folder))
            XCTAssertEqual(m.linears.count, 14)
            let q = try XCTUnwrap(m.linears["model.layers.0.self_attn.q_proj.weight"])
            XCTAssertEqual(q.format, format)
            XCTAssertEqual(q.dequantize(), try dequantizedFixture(key), folder)
            XCTAssertNotNil(m.dense["lm_head.weight"])
            XCTAssertEqual(try ModelSummary.load(path: path(folder)).container, "bitsandbytes-4bit")
        }
    }

    /// qlora quantize of the fp32 folder writes bitsandbytes' bytes: every tensor bit for bit,
    /// the quant state equal as JSON (ours is padded with spaces to a fixed width).
    func testWritesWhatBitsandbytesWrites() throws {
        for (folder, format, dq) in [("tiny-llama-bnb-nf4", QuantFormat.nf4, true), ("tiny-llama-bnb-fp4", .fp4, false)] {
            let out = dir.path + "/" + folder
            _ = try Quantizer.run(source: path("tiny-llama"), output: out, options: .init(format: format, doubleQuant: dq)) { _ in }
            let ours = try HuggingFaceFolder(path: out), theirs = try HuggingFaceFolder(path: path(folder))
            XCTAssertEqual(Set(ours.tensors.map(\.tensor.name)), Set(theirs.tensors.map(\.tensor.name)), folder)
            for (file, t) in theirs.tensors {
                let (of, ot) = try XCTUnwrap(ours.tensor(t.name))
                XCTAssertEqual(ot.dtype, t.dtype, t.name)
                if t.name.hasSuffix("quant_state.bitsandbytes__\(format.rawValue)") {
                    let a = try JSONSerialization.jsonObject(with: Data(of.data(of: ot))) as! NSDictionary
                    let b = try JSONSerialization.jsonObject(with: Data(file.data(of: t))) as! NSDictionary
                    XCTAssertEqual(a.count, b.count)
                    for key in ["quant_type", "blocksize", "dtype", "shape", "nested_blocksize", "nested_dtype"] {
                        XCTAssertEqual(a[key] as? NSObject, b[key] as? NSObject, "\(t.name) \(key)")
                    }
                    XCTAssertEqual(a["nested_offset"] as? Double, b["nested_offset"] as? Double, t.name)
                } else {
                    XCTAssertEqual(Array(of.data(of: ot)), Array(file.data(of: t)), t.name)
                }
            }
            let cfg = { (p: String) in (try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: p + "/config.json"))) as! [String: Any])["quantization_config"] as! NSDictionary }
            XCTAssertEqual(try cfg(out), try cfg(path(folder)), folder)
        }
    }
}

/// What transformers needs of a folder beyond the tensors (found by tools/check_bnb_output.py
/// loading qlora's output with transformers 5.23).
final class BitsandbytesConfigTests: XCTestCase {
    let dir = TempDir()

    /// A bf16 source keeps bf16 for every unquantized tensor, with the config's dtype saying
    /// so: transformers crashes on bf16 embeddings beside fp32 norms. And llm_int8_threshold
    /// must be written as a float.
    func testUnquantizedTensorsShareOneDTypeAndTheConfigIsStrict() throws {
        let fixtures = Bundle.module.url(forResource: "Fixtures", withExtension: nil)!.path
        let out = dir.path + "/bf16-nf4"
        _ = try Quantizer.run(source: fixtures + "/tiny-llama-bf16", output: out, options: .init(format: .nf4)) { _ in }
        let folder = try HuggingFaceFolder(path: out)
        let plain = folder.tensors.filter { !$0.tensor.name.contains(".weight.") && $0.tensor.dtype != .U8 }
        XCTAssertEqual(plain.count, 7)  // embed, lm_head, 4 layer norms, final norm
        XCTAssertTrue(plain.allSatisfy { $0.tensor.dtype == .BF16 }, "\(plain.map { ($0.tensor.name, $0.tensor.dtype) })")
        let text = try String(contentsOfFile: out + "/config.json", encoding: .utf8)
        XCTAssertTrue(text.contains("\"llm_int8_threshold\" : 6.0"), text)
        XCTAssertEqual(folder.rawConfig["torch_dtype"] as? String, "bfloat16")
        XCTAssertEqual(folder.rawConfig["dtype"] as? String, "bfloat16")
        let state = try XCTUnwrap(folder.tensor("model.layers.0.self_attn.q_proj.weight.quant_state.bitsandbytes__nf4"))
        let json = try JSONSerialization.jsonObject(with: Data(state.file.data(of: state.tensor))) as! [String: Any]
        XCTAssertEqual(json["dtype"] as? String, "bfloat16")
    }
}
