import Foundation
@testable import QLoRA
import Quant
import XCTest

/// `qlora export` on the tiny NF4 model with a PEFT adapter (tools/make_export_fixtures.py →
/// Fixtures/tiny-llama-export-adapter, tiny-llama-export-expected.json). That transformers
/// loads the folder and gets PEFT's logits is checked by the script's --check-export mode.
final class MergedExportTests: XCTestCase {
    static let fixtures = Bundle.module.url(forResource: "Fixtures", withExtension: nil)!.path
    static let model = fixtures + "/tiny-llama-bnb-nf4"
    static let adapter = fixtures + "/tiny-llama-export-adapter"

    struct Expected: Decodable {
        struct Logits: Decodable {
            let shape: [Int]
            let f32: String
        }
        let input_ids: [Int]
        let logits: Logits
        let scaling: Double
    }

    /// Exports into a fresh folder inside `dir`; returns its path and the notes reported.
    func export(_ dir: TempDir, adapter: String? = adapter, options: MergedExport.Options = .init(), name: String = "out")
        throws -> (path: String, notes: [String], report: MergedExport.Report) {
        var options = options
        options.adapter = adapter
        let out = dir.path + "/" + name
        var notes: [String] = []
        var seen = 0
        let report = try MergedExport.run(model: Self.model, output: out, options: options) { p in
            switch p {
            case .note(let text): notes.append(text)
            case .tensor: seen += 1
            }
        }
        XCTAssertEqual(seen, report.tensors)
        return (out, notes, report)
    }

    func tensors(_ folder: String) throws -> [String: (shape: [Int], values: [Float])] {
        let f = try HuggingFaceFolder(path: folder)
        var out: [String: (shape: [Int], values: [Float])] = [:]
        for (file, t) in f.tensors {
            XCTAssertEqual(t.dtype, .F32, t.name)
            out[t.name] = (t.shape, try file.floats(t))
        }
        return out
    }

    /// (a) Every linear is dequant(W) + s·B·A, computed here in float64 from the adapter's own
    /// file and config; everything else is the base's fp32 values bit for bit.
    func testMergedLinearsEqualFloat64Reference() throws {
        let dir = TempDir()
        let (out, _, report) = try export(dir)
        let written = try tensors(out)
        let base = try QuantizedModel(path: Self.model)
        let config = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: Self.adapter + "/adapter_config.json"))) as! [String: Any]
        let r = config["r"] as! Int, scale = (config["lora_alpha"] as! NSNumber).doubleValue / Double(r)
        let file = try SafetensorsFile(path: Self.adapter + "/adapter_model.safetensors")
        XCTAssertEqual(report.merged, 12)
        XCTAssertEqual(Set(written.keys), Set(base.linears.keys).union(base.dense.keys))
        var merged = 0, worst = 0.0
        for (name, w) in base.linears {
            let got = try XCTUnwrap(written[name], name)
            XCTAssertEqual(got.shape, [w.rows, w.cols], name)
            let dequant = w.dequantize()
            let module = "base_model.model." + name.dropLast(".weight".count)
            guard let ta = file.tensor(module + ".lora_A.weight"), let tb = file.tensor(module + ".lora_B.weight") else {
                XCTAssertEqual(got.values, dequant, "\(name) has no adapter: dequant(W) as it is")
                continue
            }
            merged += 1
            let a = try file.floats(ta), b = try file.floats(tb)
            for i in 0..<w.rows {
                for j in 0..<w.cols {
                    var delta = 0.0, magnitude = 0.0
                    for k in 0..<r {
                        let p = Double(b[i * r + k]) * Double(a[k * w.cols + j])
                        delta += p
                        magnitude += abs(p)
                    }
                    let ref = Double(dequant[i * w.cols + j]) + scale * delta
                    let err = abs(Double(got.values[i * w.cols + j]) - ref)
                    // fp32 rounding of r products, their sum, the scale and the addition
                    let bound = Double(r + 3) * Double(Float.ulpOfOne) * (abs(Double(dequant[i * w.cols + j])) + scale * magnitude)
                    XCTAssertLessThanOrEqual(err, bound, "\(name)[\(i), \(j)]")
                    worst = max(worst, err / max(bound, .leastNormalMagnitude))
                }
            }
            XCTAssertNotEqual(got.values, dequant, "\(name): the adapter changes W")
        }
        XCTAssertEqual(merged, 12)  // 6 targets × 2 layers; up_proj has none
        for (name, values) in base.dense { XCTAssertEqual(written[name]?.values, values, name) }
        print("merged linears: worst error \(worst) of the fp32 rounding bound")
    }

    /// (b) The files transformers needs, with a valid plain-fp32 config; no tokenizer (the
    /// tiny model has none) is a note, not an error; nothing left beside the folder.
    func testFolderHasWhatTransformersNeeds() throws {
        let dir = TempDir()
        let (out, notes, report) = try export(dir)
        let files = Set(try FileManager.default.contentsOfDirectory(atPath: out))
        XCTAssertEqual(files, ["config.json", "generation_config.json", "model.safetensors"])
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: dir.path), ["out"])
        XCTAssertEqual(notes.count, 1)
        XCTAssertTrue(notes[0].contains("no tokenizer.json"), notes[0])
        let data = try Data(contentsOf: URL(fileURLWithPath: out + "/config.json"))
        let json = try JSONSerialization.jsonObject(with: data) as! [String: Any]
        XCTAssertEqual(json["architectures"] as? [String], ["LlamaForCausalLM"])
        XCTAssertEqual(json["torch_dtype"] as? String, "float32")
        XCTAssertEqual(json["dtype"] as? String, "float32")
        XCTAssertEqual(json["tie_word_embeddings"] as? Bool, false)
        XCTAssertNil(json["quantization_config"])
        XCTAssertEqual(try ModelConfig(huggingFaceConfig: data, source: "config.json"), try QuantizedModel(path: Self.model).config)
        XCTAssertEqual(try Data(contentsOf: URL(fileURLWithPath: out + "/generation_config.json")),
                       try Data(contentsOf: URL(fileURLWithPath: Self.model + "/generation_config.json")))
        let st = try SafetensorsFile(path: out + "/model.safetensors")
        XCTAssertEqual(st.metadata["format"], "pt")
        XCTAssertEqual(report.shards, 1)
        XCTAssertEqual(report.outputBytes, st.file.count)
        XCTAssertEqual(st.tensors.reduce(0) { $0 + $1.shape.reduce(1, *) }, try QuantizedModel(path: Self.model).config.parameterCount)
    }

    /// (c) qlora's own forward with the adapter gives PEFT's logits: the adapter fixture is read
    /// as PEFT means it (the merge of the same tensors is checked in (a)).
    func testAdapterLogitsMatchPEFT() throws {
        let expected = try JSONDecoder().decode(Expected.self, from: Data(contentsOf: URL(fileURLWithPath: Self.fixtures + "/tiny-llama-export-expected.json")))
        let base = try DecoderModel(path: Self.model)
        let (config, norms) = try AdapterFiles.config(in: Self.adapter)
        XCTAssertEqual(Double(config.scale), expected.scaling)
        let lora = try ModelAdapters(model: base, config: config, trainNorms: norms, seed: 0)
        try AdapterFiles.load(into: lora, from: Self.adapter)
        let logits = try DecoderModel(base, adapters: lora).forward(tokens: expected.input_ids, logits: .all)
        let ref = LoRAGradientFixtureTests.floats(expected.logits.f32)
        XCTAssertEqual(logits.count, expected.logits.shape.reduce(1, *))
        let scale = Double(ref.map(abs).max()!)
        let err = zip(logits, ref).map { Double(abs($0 - $1)) }.max()! / scale
        XCTAssertLessThan(err, 1e-5)
        print("qlora forward with the adapter vs PEFT: \(err) of max |logit|")
    }

    func testWithoutAdapterExportsTheDequantizedBase() throws {
        let dir = TempDir()
        let (out, _, report) = try export(dir, adapter: nil)
        XCTAssertEqual(report.merged, 0)
        let written = try tensors(out)
        let base = try QuantizedModel(path: Self.model)
        for (name, w) in base.linears { XCTAssertEqual(written[name]?.values, w.dequantize(), name) }
        for (name, values) in base.dense { XCTAssertEqual(written[name]?.values, values, name) }
    }

    /// A reward adapter (PEFT SEQ_CLS, TRL's RewardTrainer) exports as transformers'
    /// LlamaForSequenceClassification with one label: its score head as score.weight, no LM
    /// head, every linear merged; a GGUF export is refused by name.
    func testRewardAdapterExportsASequenceClassifier() throws {
        let dir = TempDir()
        let reward = Self.fixtures + "/tiny-llama-reward-adapter"
        let (out, _, report) = try export(dir, adapter: reward)
        let written = try tensors(out)
        let model = try DecoderModel(path: Self.model)
        let set = AdapterSet(base: model)
        let adapters = try set.adapters(try set.load(reward))
        XCTAssertEqual(written["score.weight"]?.shape, [1, model.config.hiddenSize])
        XCTAssertEqual(written["score.weight"]?.values, adapters.scoreHead?.values)
        XCTAssertNil(written["lm_head.weight"])
        XCTAssertEqual(report.merged, adapters.adapters.count)
        let config = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: out + "/config.json"))) as? [String: Any])
        XCTAssertEqual(config["architectures"] as? [String], ["LlamaForSequenceClassification"])
        XCTAssertEqual(config["num_labels"] as? Int, 1)
        XCTAssertThrowsError(try GGUFExport.run(model: Self.model, output: dir.path + "/rm.gguf", type: .f32,
                                                options: .init(adapter: reward)) { _ in }) {
            XCTAssertTrue("\($0)".contains("reward model"), "\($0)")
        }
    }

    /// Norms trained by qlora (--train-norms) replace the base's; B = 0 leaves W as it is.
    func testTrainedNormsReplaceTheBaseNorms() throws {
        let dir = TempDir()
        let model = try DecoderModel(path: Self.model)
        let lora = try ModelAdapters(model: model, config: LoRAConfig(rank: 2, alpha: 4, targets: .names(["q_proj"])), trainNorms: true, seed: 3)
        for (i, p) in lora.parameters.enumerated() where p.name.hasSuffix("norm.weight") {
            p.setValues((0..<p.count).map { Float(i) + Float($0) / 64 })
        }
        try AdapterFiles.save(lora, to: dir.path + "/adapter", baseModel: Self.model)
        let (out, _, report) = try export(dir, adapter: dir.path + "/adapter")
        XCTAssertEqual(report.merged, 2 + 5)  // q_proj of 2 layers, 2 norms per layer and the final one
        let written = try tensors(out)
        for p in lora.parameters where p.name.hasSuffix("norm.weight") { XCTAssertEqual(written[p.name]?.values, p.value.array, p.name) }
        let base = try QuantizedModel(path: Self.model)
        for (name, w) in base.linears { XCTAssertEqual(written[name]?.values, w.dequantize(), "\(name): B = 0") }
    }

    /// A PEFT adapter whose modules_to_save selects only some norms (post_attention_layernorm,
    /// model.norm): those replace the base's, the input_layernorms stay the base's and are not
    /// counted as merged.
    func testPEFTNormSubsetReplacesOnlyTheSelectedNorms() throws {
        let dir = TempDir()
        let adapter = AdapterFilesTests.peftNormsSubsetAdapter
        let (out, _, report) = try export(dir, adapter: adapter)
        XCTAssertEqual(report.merged, 4 + 3)  // q_proj, v_proj of 2 layers; 2 post-attention norms and the final one
        let written = try tensors(out)
        let saved = try SafetensorsFile(path: adapter + "/" + AdapterFiles.weightsFile)
        for t in saved.tensors where t.name.hasSuffix("norm.weight") {
            XCTAssertEqual(written[String(t.name.dropFirst("base_model.model.".count))]?.values, try saved.floats(t), t.name)
        }
        let base = try QuantizedModel(path: Self.model)
        for l in 0..<2 {
            let name = "model.layers.\(l).input_layernorm.weight"
            XCTAssertEqual(written[name]?.values, base.dense[name], name)
        }
    }

    func testRefusesANonEmptyFolderUnlessOverwrite() throws {
        let dir = TempDir()
        try FileManager.default.createDirectory(atPath: dir.path + "/out", withIntermediateDirectories: true)
        dir.write("out/keep.txt", "mine")
        XCTAssertThrowsError(try export(dir)) { XCTAssertEqual($0 as? MergedExportError, .outputExists(path: dir.path + "/out")) }
        XCTAssertTrue(FileManager.default.fileExists(atPath: dir.path + "/out/keep.txt"))
        XCTAssertEqual(Set(try FileManager.default.contentsOfDirectory(atPath: dir.path)), ["out"])
        _ = try export(dir, options: .init(overwrite: true))
        XCTAssertFalse(FileManager.default.fileExists(atPath: dir.path + "/out/keep.txt"))
        XCTAssertEqual(Set(try FileManager.default.contentsOfDirectory(atPath: dir.path)), ["out"])
        // an empty folder is taken as it is
        try FileManager.default.createDirectory(atPath: dir.path + "/empty", withIntermediateDirectories: true)
        _ = try export(dir, name: "empty")
    }

    /// A failing export (here an adapter for another model) leaves neither DIR nor DIR.tmp-<pid>.
    func testAdapterForAnotherShapeIsRefusedAndLeavesNothing() throws {
        let dir = TempDir()
        let bad = dir.path + "/bad-adapter"
        try FileManager.default.createDirectory(atPath: bad, withIntermediateDirectories: true)
        try FileManager.default.copyItem(atPath: Self.adapter + "/adapter_config.json", toPath: bad + "/adapter_config.json")
        var writer = SafetensorsWriter()
        writer.tensors = [.init(name: "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight", dtype: .F32, shape: [4, 32]),
                          .init(name: "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight", dtype: .F32, shape: [64, 4])]
        try writer.write(to: bad + "/adapter_model.safetensors") { [UInt8](repeating: 0, count: writer.tensors[$0].byteCount) }
        XCTAssertThrowsError(try export(dir, adapter: bad)) {
            XCTAssertEqual($0 as? AdapterError, .wrongShape(bad + "/adapter_model.safetensors",
                                                            "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight",
                                                            expected: [4, 64], found: [4, 32]))
        }
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: dir.path), ["bad-adapter"])
    }

    /// Above the shard size: model-0000k-of-0000n.safetensors and an index the folder reader
    /// accepts, with the same tensors as one file.
    func testShardsAboveTheMaxShardSize() throws {
        let dir = TempDir()
        let (one, _, _) = try export(dir, name: "one")
        let (sharded, _, report) = try export(dir, options: .init(maxShardBytes: 300_000), name: "sharded")
        XCTAssertGreaterThan(report.shards, 1)
        let files = try FileManager.default.contentsOfDirectory(atPath: sharded)
        XCTAssertTrue(files.contains("model.safetensors.index.json"))
        XCTAssertFalse(files.contains("model.safetensors"))
        XCTAssertTrue(files.contains(String(format: "model-00001-of-%05d.safetensors", report.shards)))
        let a = try tensors(one), b = try tensors(sharded)
        XCTAssertEqual(Set(a.keys), Set(b.keys))
        for (name, t) in a { XCTAssertEqual(b[name]?.values, t.values, name) }
        let index = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: sharded + "/model.safetensors.index.json"))) as! [String: Any]
        XCTAssertEqual((index["metadata"] as? [String: Any])?["total_size"] as? Int, a.values.reduce(0) { $0 + $1.values.count * 4 })
    }

    func testShardGroupsFollowSavePretrained() {
        XCTAssertEqual(MergedExport.shardGroups([4, 4, 4], maxBytes: 10), [0..<2, 2..<3])
        XCTAssertEqual(MergedExport.shardGroups([20, 4, 4], maxBytes: 10), [0..<1, 1..<3])  // too large: a shard of its own
        XCTAssertEqual(MergedExport.shardGroups([4, 20, 4], maxBytes: 10), [0..<1, 1..<2, 2..<3])
        XCTAssertEqual(MergedExport.shardGroups([5, 5], maxBytes: 10), [0..<2])
    }

    /// The bundled SmolLM2 GGUF (Q4_1 linears, Q8_0 tied embedding, q/k rows permuted by
    /// llama.cpp): the embedding alone (tied), Hugging Face row order, tokenizer and chat template.
    func testSmolLM2ExportIsTiedWithTokenizer() throws {
        guard FileManager.default.fileExists(atPath: RealModelTests.path) else { throw XCTSkip("\(RealModelTests.path) missing: run tools/setup.sh") }
        let dir = TempDir()
        let out = dir.path + "/smol"
        let report = try MergedExport.run(model: RealModelTests.path, output: out) { _ in }
        XCTAssertEqual(report.tensors, 272)
        let files = Set(try FileManager.default.contentsOfDirectory(atPath: out))
        XCTAssertEqual(files, ["config.json", "generation_config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"])
        let config = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: out + "/config.json"))) as! [String: Any]
        XCTAssertEqual(config["tie_word_embeddings"] as? Bool, true)
        let tok = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: out + "/tokenizer_config.json"))) as! [String: Any]
        XCTAssertTrue((tok["chat_template"] as? String)?.contains("<|im_start|>") ?? false)
        let st = try SafetensorsFile(path: out + "/model.safetensors")
        XCTAssertNil(st.tensor("lm_head.weight"))
        let base = try QuantizedModel(path: RealModelTests.path)
        let embed = try XCTUnwrap(st.tensor("model.embed_tokens.weight"))
        XCTAssertEqual(embed.shape, [49152, 576])
        XCTAssertEqual(try st.floats(embed), base.tokenMatrices["model.embed_tokens.weight"]?.dequantize())
        let q = "model.layers.3.self_attn.q_proj.weight"
        XCTAssertEqual(try st.floats(XCTUnwrap(st.tensor(q))), base.linears[q]?.dequantize())
    }
}
