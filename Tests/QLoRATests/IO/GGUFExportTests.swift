import Foundation
@testable import QLoRA
import Quant
import XCTest

/// `qlora export --format gguf` on the tiny NF4 model with its PEFT adapter (the fixtures of
/// MergedExportTests). The file is read back with our GGUFFile/ModelSource, whose q/k
/// un-permutation is the one checked against llama.cpp's own SmolLM2 file, so a wrong
/// permutation direction, name or type shows here. That llama.cpp gives the same logits is
/// checked by tools/check_gguf_export.py.
final class GGUFExportTests: XCTestCase {
    static let model = MergedExportTests.model
    static let adapter = MergedExportTests.adapter

    func export(_ dir: TempDir, model: String = model, adapter: String? = adapter, type: GGUFExport.OutputType,
                name: String? = nil) throws -> (path: String, report: MergedExport.Report, notes: [String]) {
        let out = dir.path + "/" + (name ?? "m-\(type.rawValue).gguf")
        var notes: [String] = []
        let report = try GGUFExport.run(model: model, output: out, type: type, options: .init(adapter: adapter)) {
            if case let .note(text) = $0 { notes.append(text) }
        }
        return (out, report, notes)
    }

    /// The Hugging Face folder export of the same merge: fp32 values by Hugging Face name.
    func huggingFaceExport(_ dir: TempDir) throws -> [String: [Float]] {
        let out = dir.path + "/hf"
        _ = try MergedExport.run(model: Self.model, output: out, options: .init(adapter: Self.adapter)) { _ in }
        let f = try HuggingFaceFolder(path: out)
        return try Dictionary(uniqueKeysWithValues: f.tensors.map { file, t in (t.name, try file.floats(t)) })
    }

    /// Every tensor of a GGUF in fp32 and Hugging Face layout (names mapped, q/k rows back).
    func readBack(_ path: String) throws -> (source: ModelSource, values: [String: [Float]]) {
        let source = try ModelSource(path: path)
        return (source, try Dictionary(uniqueKeysWithValues: source.tensors.map { ($0.name, try source.load($0)) }))
    }

    /// f32: every tensor equals the Hugging Face export bit for bit; norms F32; names and
    /// shapes in llama.cpp's convention; the hyperparameters read back as the base's.
    func testF32EqualsTheHuggingFaceExport() throws {
        let dir = TempDir()
        let (path, report, notes) = try export(dir, type: .f32)
        XCTAssertEqual(report.merged, 12)
        XCTAssertTrue(notes.contains { $0.contains("no tokenizer.json") }, "\(notes)")
        let hf = try huggingFaceExport(dir)
        let (source, values) = try readBack(path)
        XCTAssertEqual(Set(values.keys), Set(hf.keys))
        for (name, v) in hf { XCTAssertEqual(values[name], v, name) }
        let g = try XCTUnwrap(source.gguf)
        XCTAssertEqual(Set(g.tensors.map(\.type)), [.f32])
        XCTAssertEqual(g.tensor("blk.1.attn_q.weight")?.ne, [64, 64])
        XCTAssertEqual(g.tensor("blk.0.attn_k.weight")?.ne, [64, 32])
        XCTAssertNotNil(g.tensor("output.weight"), "the tiny model is untied")
        XCTAssertEqual(g.metadata["general.architecture"]?.string, "llama")
        XCTAssertEqual(g.metadata["general.file_type"]?.int, 0)
        XCTAssertEqual(g.metadata["llama.rope.dimension_count"]?.int, 16)
        XCTAssertEqual(source.config, try QuantizedModel(path: Self.model).config)
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: dir.path).sorted(), ["hf", "m-f32.gguf"], "no tmp left")
    }

    /// The permutation matters: q rows read without un-permuting differ from the merge.
    func testQueryRowsAreStoredInLlamaCppOrder() throws {
        let dir = TempDir()
        let (path, _, _) = try export(dir, type: .f32)
        let hf = try huggingFaceExport(dir)
        let g = try GGUFFile(path: path)
        let raw = try g.dequantize(XCTUnwrap(g.tensor("blk.0.attn_q.weight")))
        let q = try XCTUnwrap(hf["model.layers.0.self_attn.q_proj.weight"])
        XCTAssertNotEqual(raw, q)
        // GGUF row h·D + 2i + j = Hugging Face row h·D + j·D/2 + i (D = 16): row 1 is HF row 8.
        XCTAssertEqual(Array(raw[64..<128]), Array(q[8 * 64..<9 * 64]))
    }

    /// f16: each value is the fp32 export rounded to half; norms stay F32.
    func testF16IsTheF32ExportRoundedToHalf() throws {
        let dir = TempDir()
        let (path, _, _) = try export(dir, type: .f16)
        let hf = try huggingFaceExport(dir)
        let (source, values) = try readBack(path)
        for t in source.tensors {
            let want = try XCTUnwrap(hf[t.name])
            if t.role == .norm {
                XCTAssertEqual(t.storage, "F32", t.name)
                XCTAssertEqual(values[t.name], want, t.name)
            } else {
                XCTAssertEqual(t.storage, "F16", t.name)
                XCTAssertEqual(values[t.name], want.map { FP16.float(fromBits: FP16.bits(from: $0)) }, t.name)
            }
        }
        XCTAssertEqual(source.gguf?.metadata["general.file_type"]?.int, 1)
    }

    /// q8_0: each weight is ggml's Q8_0 of the fp32 export (rows quantized before the
    /// permutation come back whole); the logits stay within Q8_0's rounding of the in-memory
    /// merged model (base + adapter, unmerged), as do f32's and f16's when loaded.
    func testQ8LogitsMatchTheInMemoryMergedModel() throws {
        let dir = TempDir()
        let hf = try huggingFaceExport(dir)
        let (path, _, _) = try export(dir, type: .q8_0)
        let (source, values) = try readBack(path)
        for t in source.tensors where t.role != .norm {
            XCTAssertEqual(t.storage, "Q8_0", t.name)
            let want = try QuantizedMatrix(quantizing: XCTUnwrap(hf[t.name]), rows: t.shape[0], cols: t.shape[1], format: .q8_0)
            XCTAssertEqual(values[t.name], want.dequantize(), t.name)
        }
        let tokens = [1, 17, 99, 3, 250, 42, 7, 128, 64, 5]
        let base = try DecoderModel(path: Self.model)
        let (config, norms) = try AdapterFiles.config(in: Self.adapter)
        let lora = try ModelAdapters(model: base, config: config, trainNorms: norms, seed: 0)
        try AdapterFiles.load(into: lora, from: Self.adapter)
        let ref = try DecoderModel(base, adapters: lora).forward(tokens: tokens, logits: .all)
        let scale = Double(ref.map(abs).max()!)
        for type in GGUFExport.OutputType.allCases {
            let file = type == .q8_0 ? path : try export(dir, type: type).path
            let logits = try DecoderModel(path: file).forward(tokens: tokens, logits: .all)
            let err = zip(logits, ref).map { Double(abs($0 - $1)) }.max()! / scale
            // qlora trains on Q8_0 when given f32/f16 linears, so all three carry Q8_0's rounding
            // (≈ 0.5% rms of a random block's weights, 2⁻⁸ of its max) through the 14 linears of
            // two layers, and q8_0 through the embedding and LM head too: ≈ 2% of max |logit|.
            XCTAssertLessThan(err, 4e-2, type.rawValue)
            print("GGUF \(type.rawValue) export, loaded by qlora, vs base + adapter: max |Δlogit| \(err) of max |logit|")
        }
    }

    /// From a GGUF source every key is carried over (file_type set to the new type), and a
    /// tensor that keeps its type and gets no adapter is copied byte for byte.
    func testGGUFSourceKeepsMetadataAndCopiesUnchangedTensors() throws {
        let dir = TempDir()
        let (first, _, _) = try export(dir, type: .q8_0)
        let (second, _, _) = try export(dir, model: first, adapter: nil, type: .q8_0, name: "again.gguf")
        let (third, _, _) = try export(dir, model: first, adapter: nil, type: .f32, name: "f32.gguf")
        let a = try GGUFFile(path: first), b = try GGUFFile(path: second), c = try GGUFFile(path: third)
        XCTAssertEqual(b.metadataKeys, a.metadataKeys)
        for key in a.metadataKeys { XCTAssertEqual(b.metadata[key], a.metadata[key], key) }
        XCTAssertEqual(c.metadataKeys, a.metadataKeys)
        XCTAssertEqual(c.metadata["general.file_type"]?.int, 0)
        for t in a.tensors {
            let copy = try XCTUnwrap(b.tensor(t.name))
            XCTAssertEqual(Array(b.data(of: copy)), Array(a.data(of: t)), t.name)
            XCTAssertEqual(try c.dequantize(XCTUnwrap(c.tensor(t.name))), try a.dequantize(t), t.name)
        }
    }

    /// A folder with tokenizer.json: the GGUF's tokenizer encodes as the folder's, with
    /// llama.cpp's token types, special ids, padding to the model's vocab and the template.
    func testTokenizerMetadataRoundTrip() throws {
        let dir = TempDir()
        let folder = dir.path + "/with-tokenizer"
        try FileManager.default.copyItem(atPath: Self.model, toPath: folder)
        let chars = (0x21...0x7E).map { String(UnicodeScalar(UInt8($0))) } + ["Ġ"]
        var vocab = Dictionary(uniqueKeysWithValues: chars.enumerated().map { ($1, $0) })
        let merges = [["Ġ", "t"], ["h", "e"], ["Ġt", "he"], ["i", "n"]]
        for m in merges { vocab[m[0] + m[1]] = vocab.count }
        let start = vocab.count
        let added: [[String: Any]] = [
            ["id": start, "content": "<|im_start|>", "special": true],
            ["id": start + 1, "content": "<|im_end|>", "special": true],
            ["id": start + 2, "content": "<tool>", "special": false],
        ]
        let tokenizer: [String: Any] = [
            "version": "1.0", "normalizer": NSNull(), "added_tokens": added,
            "pre_tokenizer": ["type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true],
            "post_processor": ["type": "TemplateProcessing", "single": [["SpecialToken": ["id": "<|im_start|>", "type_id": 0]], ["Sequence": ["id": "A", "type_id": 0]]],
                               "special_tokens": ["<|im_start|>": ["id": "<|im_start|>", "ids": [start]]]],
            "decoder": ["type": "ByteLevel"],
            "model": ["type": "BPE", "vocab": vocab, "merges": merges],
        ]
        let template = "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
        let config: [String: Any] = ["bos_token": "<|im_start|>", "eos_token": "<|im_end|>", "pad_token": "<|im_end|>", "chat_template": template]
        try JSONSerialization.data(withJSONObject: tokenizer).write(to: URL(fileURLWithPath: folder + "/tokenizer.json"))
        try JSONSerialization.data(withJSONObject: config).write(to: URL(fileURLWithPath: folder + "/tokenizer_config.json"))

        let (path, _, notes) = try export(dir, model: folder, type: .f32)
        XCTAssertEqual(notes, [])
        let g = try GGUFFile(path: path)
        XCTAssertEqual(g.metadata["tokenizer.ggml.model"]?.string, "gpt2")
        XCTAssertEqual(g.metadata["tokenizer.ggml.pre"]?.string, "gpt-2")
        let tokens = try XCTUnwrap(g.metadata["tokenizer.ggml.tokens"]?.array)
        XCTAssertEqual(tokens.count, 256, "padded to the model's vocab")
        XCTAssertEqual(tokens[255].string, "[PAD255]")
        let types = try XCTUnwrap(g.metadata["tokenizer.ggml.token_type"]?.array?.compactMap(\.int))
        XCTAssertEqual(Array(types[start..<(start + 4)]), [3, 3, 4, 5])
        XCTAssertEqual(types[0], 1)
        XCTAssertEqual(g.metadata["tokenizer.ggml.merges"]?.array?.count, 4)
        XCTAssertEqual(g.metadata["tokenizer.ggml.bos_token_id"]?.int, start)
        XCTAssertEqual(g.metadata["tokenizer.ggml.eos_token_id"]?.int, start + 1)
        XCTAssertEqual(g.metadata["tokenizer.ggml.padding_token_id"]?.int, start + 1)
        XCTAssertEqual(g.metadata["tokenizer.ggml.add_bos_token"]?.bool, true)
        XCTAssertEqual(g.metadata["tokenizer.chat_template"]?.string, template)

        let fromJSON = try Tokenizer(tokenizerJSON: folder + "/tokenizer.json"), fromGGUF = try Tokenizer(gguf: g)
        for text in ["the thin theme", "<|im_start|>user\nhi there<|im_end|>", " <tool> in the tin!", "x  1 2"] {
            let ids = fromJSON.encode(text, addSpecialTokens: true)
            XCTAssertEqual(fromGGUF.encode(text, addSpecialTokens: true), ids, text)
            XCTAssertEqual(fromGGUF.decode(ids), fromJSON.decode(ids), text)
        }
        XCTAssertTrue(fromJSON.encode("the").count < 3, "merges apply")
        let lm = try LanguageModel(path: path)
        XCTAssertEqual(lm.chatTemplateText, template)
        XCTAssertTrue(lm.addsBOS)
    }

    /// What GGUF cannot say is refused by name, and the refusal leaves nothing behind.
    func testInexpressibleTokenizerIsRefusedByName() throws {
        let dir = TempDir()
        let folder = dir.path + "/suffix"
        try FileManager.default.copyItem(atPath: Self.model, toPath: folder)
        let tokenizer: [String: Any] = [
            "normalizer": NSNull(), "added_tokens": [["id": 2, "content": "<s>", "special": true], ["id": 3, "content": "</s>", "special": true]],
            "pre_tokenizer": ["type": "ByteLevel", "add_prefix_space": false, "use_regex": true],
            "post_processor": ["type": "TemplateProcessing", "single": [["Sequence": ["id": "A", "type_id": 0]], ["SpecialToken": ["id": "</s>", "type_id": 0]],
                                                                        ["SpecialToken": ["id": "</s>", "type_id": 0]]],
                               "special_tokens": ["</s>": ["id": "</s>", "ids": [3]]]],
            "decoder": ["type": "ByteLevel"], "model": ["type": "BPE", "vocab": ["a": 0, "b": 1], "merges": [String]()],
        ]
        try JSONSerialization.data(withJSONObject: tokenizer).write(to: URL(fileURLWithPath: folder + "/tokenizer.json"))
        XCTAssertThrowsError(try export(dir, model: folder, type: .f32, name: "x.gguf")) { error in
            guard case let .inexpressible(_, what)? = error as? TokenizerExportError else { return XCTFail("\(error)") }
            XCTAssertTrue(what.contains("after a text"), what)
        }
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: dir.path), ["suffix"])
    }

    func testExistingFileIsRefusedUnlessOverwrite() throws {
        let dir = TempDir()
        let out = dir.write("m.gguf", "mine")
        XCTAssertThrowsError(try export(dir, type: .f32, name: "m.gguf")) { XCTAssertEqual($0 as? MergedExportError, .outputExists(path: out)) }
        _ = try GGUFExport.run(model: Self.model, output: out, type: .f32, options: .init(adapter: Self.adapter, overwrite: true)) { _ in }
        XCTAssertNoThrow(try GGUFFile(path: out))
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: dir.path), ["m.gguf"])
    }
}
