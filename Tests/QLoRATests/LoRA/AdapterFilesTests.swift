import Foundation
@testable import QLoRA
import XCTest

/// PEFT-layout adapters both ways on the tiny NF4 model (tools/make_peft_adapter_fixtures.py):
/// adapters PEFT wrote give PEFT's logits in qlora; the adapters qlora writes (committed as
/// Fixtures/tiny-llama-qlora-adapter and, with trained norms in modules_to_save,
/// Fixtures/tiny-llama-qlora-adapter-norms) give qlora's logits in PEFT. Then every way a PEFT
/// directory may differ, and every way it may be broken, on copies in temporary directories.
///
/// To rewrite the qlora-written folders after a deliberate change of AdapterFiles.save:
///   QLORA_WRITE_ADAPTER_FIXTURE=1 swift test --filter 'AdapterFilesTests/testQLoRAWritten'
///   /work/venv-fixtures/bin/python tools/make_peft_adapter_fixtures.py
final class AdapterFilesTests: XCTestCase {
    struct Expected: Decodable {
        struct Logits: Decodable { let shape: [Int]; let f32: String }
        struct Case: Decodable { let name: String; let adapter: String; let scaling: Double; let logits: Logits }
        let input_ids: [[Int]]
        let cases: [Case]
    }

    static let fixtures = LlamaTrainerTests.fixtures
    static var model: DecoderModel { LlamaTrainerTests.tiny }
    static let expected = try! JSONDecoder().decode(
        Expected.self, from: Data(contentsOf: fixtures.appendingPathComponent("tiny-llama-peft-adapter-expected.json")))
    /// The cases with trained norms (modules_to_save), same input_ids.
    static let expectedNorms = try! JSONDecoder().decode(
        Expected.self, from: Data(contentsOf: fixtures.appendingPathComponent("tiny-llama-peft-norms-expected.json")))
    static func fixture(_ name: String) -> String { fixtures.appendingPathComponent(name).path }
    static let peftAdapter = fixture("tiny-llama-peft-adapter")
    static let peftLayer0Adapter = fixture("tiny-llama-peft-adapter-layer0")
    static let qloraAdapter = fixture("tiny-llama-qlora-adapter")
    static let peftNormsAdapter = fixture("tiny-llama-peft-adapter-norms")
    static let peftNormsSubsetAdapter = fixture("tiny-llama-peft-adapter-norms-subset")
    static let qloraNormsAdapter = fixture("tiny-llama-qlora-adapter-norms")

    /// The adapters of `directory` on the tiny model, as AdapterSet.load builds them.
    func loadAdapter(_ directory: String) throws -> ModelAdapters {
        let (config, norms) = try AdapterFiles.config(in: directory)
        let lora = try ModelAdapters(model: Self.model, config: config, trainNorms: norms, seed: 0)
        try AdapterFiles.load(into: lora, from: directory)
        return lora
    }

    /// logits [B, T, V] of every position of the fixture's sequences.
    func logits(_ lora: ModelAdapters?) throws -> [Float] {
        let m = lora.map { DecoderModel(Self.model, adapters: $0) } ?? Self.model
        return try Self.expected.input_ids.flatMap { try m.forward(tokens: $0, logits: .all) }
    }

    /// max |got − expected| / max |expected| over the case's logits, checked below `tolerance`;
    /// the adapter must move the logits far more than that from the base model's.
    @discardableResult
    func checkLogits(_ lora: ModelAdapters, case name: String, tolerance: Double = 1e-5, in expected: Expected = expected) throws -> Double {
        let c = try XCTUnwrap(expected.cases.first { $0.name == name })
        let want = LoRAGradientFixtureTests.floats(c.logits.f32)
        XCTAssertEqual(want.count, c.logits.shape.reduce(1, *))
        let got = try logits(lora), base = try logits(nil)
        XCTAssertEqual(got.count, want.count)
        let scale = Double(want.map(abs).max()!)
        let err = zip(got, want).map { Double(abs($0 - $1)) }.max()! / scale
        let moved = zip(base, want).map { Double(abs($0 - $1)) }.max()! / scale
        XCTAssertLessThan(err, tolerance, name)
        XCTAssertGreaterThan(moved, 100 * tolerance, "\(name): the adapter hardly changes the logits")
        print("\(name): max |qlora − PEFT| / max |PEFT| = \(err) (adapter moves logits by \(moved))")
        return err
    }

    // MARK: - Both directions against PEFT

    func testPEFTWrittenAdapterGivesPEFTLogits() throws {
        let lora = try loadAdapter(Self.peftAdapter)
        XCTAssertEqual(lora.config.rank, 4)
        XCTAssertEqual(lora.config.scale, 2)
        XCTAssertEqual(lora.adapters.count, 14)
        try checkLogits(lora, case: "peft_all_linears")
    }

    func testPEFTWrittenLayerSubsetGivesPEFTLogits() throws {
        let lora = try loadAdapter(Self.peftLayer0Adapter)
        XCTAssertEqual(lora.config.layerIndices, [0])
        XCTAssertEqual(lora.config.alpha, 3.5)
        XCTAssertTrue(lora.config.useRSLoRA)
        XCTAssertEqual(Double(lora.config.scale), Self.expected.cases.first { $0.name == "peft_layer0_qv_rslora" }!.scaling,
                       accuracy: 1e-6)
        XCTAssertEqual(lora.adapters.map { "\($0.layer) \($0.linear)" }, ["0 q_proj", "0 v_proj"])
        try checkLogits(lora, case: "peft_layer0_qv_rslora")
    }

    /// modules_to_save ["norm"] (PEFT's suffix match: every RMSNorm) and LoRA on q/k/v/o.
    func testPEFTWrittenNormsGivePEFTLogits() throws {
        let lora = try loadAdapter(Self.peftNormsAdapter)
        XCTAssertTrue(lora.trainsNorms)
        XCTAssertEqual(lora.adapters.count, 8)
        XCTAssertEqual(try AdapterFiles.savedNorms(of: lora, in: Self.peftNormsAdapter).count, 5)
        XCTAssertNotEqual(lora.finalNorm?.values, Self.model.weights.finalNorm)
        try checkLogits(lora, case: "peft_norms", in: Self.expectedNorms)
    }

    /// modules_to_save ["post_attention_layernorm", "model.norm"]: the input_layernorms PEFT
    /// leaves alone keep the base's weights.
    func testPEFTWrittenNormSubsetGivesPEFTLogits() throws {
        let lora = try loadAdapter(Self.peftNormsSubsetAdapter)
        XCTAssertEqual(try AdapterFiles.savedNorms(of: lora, in: Self.peftNormsSubsetAdapter).map(\.name),
                       ["model.layers.0.post_attention_layernorm.weight", "model.layers.1.post_attention_layernorm.weight",
                        "model.norm.weight"])
        for (layer, w) in zip(lora.layers, Self.model.weights.layers) {
            XCTAssertEqual(layer.norms["input_layernorm"]?.values, w[.input].weight)
            XCTAssertNotEqual(layer.norms["post_attention_layernorm"]?.values, w[.postAttention].weight)
        }
        try checkLogits(lora, case: "peft_norms_subset", in: Self.expectedNorms)
    }

    /// Other spellings of "every norm", and the layout qlora wrote before modules_to_save
    /// (`qlora_trains_norms`, no modules_to_save), read the same values.
    func testNormsAsOtherModulesToSaveOrOlderQLoRALayoutLoadTheSameValues() throws {
        let reference = try loadAdapter(Self.qloraNormsAdapter)
        let forms: [(inout [String: Any]) -> Void] = [
            { $0["modules_to_save"] = ["norm"] },
            { $0["modules_to_save"] = ["layernorm", "model.norm"] },
            { $0["modules_to_save"] = ["input_layernorm", "post_attention_layernorm", "base_model.model.model.norm"] },
            { $0["modules_to_save"] = NSNull(); $0["qlora_trains_norms"] = true },
        ]
        for form in forms {
            let (tmp, dir) = try copy(Self.qloraNormsAdapter, config: form)
            let lora = try loadAdapter(dir)
            XCTAssertTrue(lora.trainsNorms)
            XCTAssertEqual(lora.parameters.map(\.name), reference.parameters.map(\.name))
            for (a, b) in zip(lora.parameters, reference.parameters) { XCTAssertEqual(a.values, b.values, a.name) }
            withExtendedLifetime(tmp) {}
        }
        try checkLogits(reference, case: "qlora_written_norms", in: Self.expectedNorms)
    }

    /// A norm tensor modules_to_save does not select is refused by name, and so is a selected
    /// norm the file lacks.
    func testNormTensorsMustMatchModulesToSave() throws {
        let (tmp, dir) = try copy(Self.qloraNormsAdapter, config: { $0["modules_to_save"] = ["post_attention_layernorm"] })
        XCTAssertThrowsError(try loadAdapter(dir)) { e in
            guard case let .unexpectedTensor(_, name, count, why)? = e as? AdapterError else { return XCTFail("\(e)") }
            XCTAssertEqual(name, "base_model.model.model.layers.0.input_layernorm.weight")
            XCTAssertEqual(count, 3)
            XCTAssertTrue(why.contains("modules_to_save"), why)
        }
        let final = "base_model.model.model.norm.weight"
        let (tmp2, dir2) = try copy(Self.qloraNormsAdapter, tensors: { $0.removeAll { $0.name == final } })
        XCTAssertThrowsError(try loadAdapter(dir2)) { XCTAssertEqual($0 as? AdapterError, .missingTensor(dir2 + "/" + AdapterFiles.weightsFile, final)) }
        withExtendedLifetime((tmp, tmp2)) {}
    }

    /// modules_to_save may select RMSNorms only: an entry that selects any other module (PEFT's
    /// suffix match) or none is refused, and the message names the entry.
    func testModulesToSaveOtherThanNormsAreRefusedNamingTheEntry() throws {
        let refused: [([String], String, String)] = [
            (["lm_head"], "lm_head", "lm_head"), (["embed_tokens"], "embed_tokens", "model.embed_tokens"),
            (["norm", "lm_head"], "lm_head", "lm_head"), (["input_layernorm", "model.embed_tokens"], "model.embed_tokens", "model.embed_tokens"),
            (["layers.1"], "layers.1", "model.layers.1"), (["q_proj"], "q_proj", "model.layers.0.self_attn.q_proj"),
            (["mlp"], "mlp", "model.layers.0.mlp"), (["self_attn"], "self_attn", "model.layers.0.self_attn"),
            (["model"], "model", "copy of base_model "), ([""], "", "copy of base_model "), (["scores"], "scores", "no RMSNorm"),
        ]
        for (entries, entry, what) in refused {
            let (tmp, dir) = try copy(Self.qloraNormsAdapter, config: { $0["modules_to_save"] = entries })
            XCTAssertThrowsError(try AdapterFiles.config(in: dir), "\(entries)") { e in
                guard case let .unsupported(_, key, value, _)? = e as? AdapterError else { return XCTFail("\(entries): \(e)") }
                XCTAssertEqual(key, "modules_to_save")
                XCTAssertEqual(value, "\"\(entry)\"")
                XCTAssertTrue("\(e)".contains("modules_to_save \"\(entry)\"") && "\(e)".contains(what), "\(e)")
            }
            withExtendedLifetime(tmp) {}
        }
        // A sequence classifier's head (PEFT's SEQ_CLS adds both names) is a reward model's score head, not a norm.
        let (tmpHead, dirHead) = try copy(Self.qloraNormsAdapter, config: { $0["modules_to_save"] = ["classifier", "score", "input_layernorm"] })
        XCTAssertTrue(try AdapterFiles.config(in: dirHead).trainsNorms)
        XCTAssertTrue(try AdapterFiles.hasScoreHead(in: dirHead))
        XCTAssertFalse(try AdapterFiles.hasScoreHead(in: Self.qloraNormsAdapter))
        withExtendedLifetime(tmpHead) {}
        let (tmp, dir) = try copy(Self.qloraNormsAdapter, config: { $0["modules_to_save"] = "norm" })
        XCTAssertThrowsError(try AdapterFiles.config(in: dir)) { e in
            guard case let .badValue(_, key, _, _)? = e as? AdapterError else { return XCTFail("\(e)") }
            XCTAssertEqual(key, "modules_to_save")
        }
        withExtendedLifetime(tmp) {}
    }

    /// The committed qlora adapter: rank 2, alpha 6, rsLoRA, every linear, A and B from SplitMix64.
    func seededQLoRAAdapter() throws -> ModelAdapters {
        let config = LoRAConfig(rank: 2, alpha: 6, dropout: 0.05, targets: .attentionAndMLP, useRSLoRA: true)
        let lora = try ModelAdapters(model: Self.model, config: config, seed: 1)
        var rng = SplitMix64(seed: 20_240_917)
        for p in lora.parameters {
            let bound = p.name.hasSuffix(".lora_A.weight") ? 0.2 : 0.05
            p.setValues((0..<p.count).map { _ in Float((rng.nextUnitDouble() * 2 - 1) * bound) })
        }
        return lora
    }

    /// The committed qlora adapter with trained norms: rank 2, alpha 4, q/v/down of every block,
    /// A and B as above, every RMSNorm weight the base's times 1 + U(−0.3, 0.3).
    func seededQLoRANormsAdapter() throws -> ModelAdapters {
        let config = LoRAConfig(rank: 2, alpha: 4, targets: .names(["q_proj", "v_proj", "down_proj"]))
        let lora = try ModelAdapters(model: Self.model, config: config, trainNorms: true, seed: 1)
        var rng = SplitMix64(seed: 20_240_918)
        for p in lora.parameters {
            let bound = p.name.hasSuffix(".lora_A.weight") ? 0.2 : 0.05
            if p.name.contains(".lora_") {
                p.setValues((0..<p.count).map { _ in Float((rng.nextUnitDouble() * 2 - 1) * bound) })
            } else {
                p.setValues(p.values.map { $0 * Float(1 + (rng.nextUnitDouble() * 2 - 1) * 0.3) })
            }
        }
        return lora
    }

    func testQLoRAWrittenAdapterMatchesCommittedFolder() throws {
        try checkCommittedFolder(try seededQLoRAAdapter(), folder: "tiny-llama-qlora-adapter", case: "qlora_written", in: Self.expected)
    }

    /// PEFT loads the norms qlora writes (modules_to_save) and uses them: its logits are qlora's.
    func testQLoRAWrittenNormsAdapterMatchesCommittedFolder() throws {
        let lora = try seededQLoRANormsAdapter()
        let tmp = TempDir()
        try AdapterFiles.save(lora, to: tmp.path + "/a", baseModel: "tiny")
        let j = try XCTUnwrap(JSONSerialization.jsonObject(
            with: Data(contentsOf: URL(fileURLWithPath: tmp.path + "/a/" + AdapterFiles.configFile))) as? [String: Any])
        XCTAssertEqual(j["modules_to_save"] as? [String], ["input_layernorm", "post_attention_layernorm", "model.norm"])
        XCTAssertNil(j["qlora_trains_norms"])
        try checkCommittedFolder(lora, folder: "tiny-llama-qlora-adapter-norms", case: "qlora_written_norms", in: Self.expectedNorms)
    }

    /// `lora` saved now gives the committed folder (tensors bit for bit, config as JSON), and
    /// the folder loaded gives PEFT's logits of `name`.
    func checkCommittedFolder(_ lora: ModelAdapters, folder: String, case name: String, in expected: @autoclosure () -> Expected) throws {
        if ProcessInfo.processInfo.environment["QLORA_WRITE_ADAPTER_FIXTURE"] == "1" {
            let source = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
                .appendingPathComponent("Fixtures/" + folder).path
            try AdapterFiles.save(lora, to: source, baseModel: "tiny-llama-bnb-nf4")
            // Not a pass: PEFT's expected logits are stale until the script has run on it.
            return XCTFail("wrote \(source); now run tools/make_peft_adapter_fixtures.py, then the tests without QLORA_WRITE_ADAPTER_FIXTURE")
        }
        let tmp = TempDir()
        try AdapterFiles.save(lora, to: tmp.path + "/a", baseModel: "tiny-llama-bnb-nf4")
        // (i) the same values still give the committed files: tensors bit for bit, config as JSON.
        let written = try SafetensorsFile(path: tmp.path + "/a/" + AdapterFiles.weightsFile)
        let committed = try SafetensorsFile(path: Self.fixture(folder) + "/" + AdapterFiles.weightsFile)
        XCTAssertEqual(written.tensors.map(\.name), committed.tensors.map(\.name))
        for (w, c) in zip(written.tensors, committed.tensors) {
            XCTAssertEqual(w.shape, c.shape, w.name)
            XCTAssertEqual(w.dtype, c.dtype, w.name)
            XCTAssertEqual(try written.floats(w).map(\.bitPattern), try committed.floats(c).map(\.bitPattern), w.name)
        }
        func json(_ dir: String) throws -> NSDictionary {
            try XCTUnwrap(JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: dir + "/" + AdapterFiles.configFile)))
                as? NSDictionary)
        }
        XCTAssertEqual(try json(tmp.path + "/a"), try json(Self.fixture(folder)))
        // (ii) qlora's logits with the committed folder are PEFT's with it.
        let loaded = try loadAdapter(Self.fixture(folder))
        XCTAssertEqual(loaded.parameters.map(\.name), lora.parameters.map(\.name))
        for (a, b) in zip(loaded.parameters, lora.parameters) { XCTAssertEqual(a.values, b.values, a.name) }
        XCTAssertEqual(Double(loaded.config.scale), expected().cases.first { $0.name == name }!.scaling, accuracy: 1e-6)
        try checkLogits(loaded, case: name, in: expected())
    }

    // MARK: - What PEFT and others may write

    /// A copy of `source` in a new directory, its config edited by `config` and its tensors by `tensors`.
    func copy(_ source: String, config: (inout [String: Any]) -> Void = { _ in },
              tensors: (inout [(name: String, shape: [Int], values: [Float])]) -> Void = { _ in }) throws -> (TempDir, String) {
        let tmp = TempDir(), dir = tmp.path + "/adapter"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        var j = try XCTUnwrap(JSONSerialization.jsonObject(
            with: Data(contentsOf: URL(fileURLWithPath: source + "/" + AdapterFiles.configFile))) as? [String: Any])
        config(&j)
        try JSONSerialization.data(withJSONObject: j).write(to: URL(fileURLWithPath: dir + "/" + AdapterFiles.configFile))
        let file = try SafetensorsFile(path: source + "/" + AdapterFiles.weightsFile)
        var list = try file.tensors.map { (name: $0.name, shape: $0.shape, values: try file.floats($0)) }
        tensors(&list)
        var writer = SafetensorsWriter()
        writer.tensors = list.map { .init(name: $0.name, dtype: .F32, shape: $0.shape) }
        try writer.write(to: dir + "/" + AdapterFiles.weightsFile) { i in list[i].values.withUnsafeBytes { [UInt8]($0) } }
        return (tmp, dir)
    }

    func testTensorNamesWithoutPrefixOrWithAdapterNameLoadTheSameValues() throws {
        let reference = try loadAdapter(Self.peftAdapter)
        let renames: [(String) -> String] = [
            { String($0.dropFirst("base_model.model.".count)) },
            { $0.replacingOccurrences(of: ".lora_A.weight", with: ".lora_A.default.weight")
                .replacingOccurrences(of: ".lora_B.weight", with: ".lora_B.default.weight") },
        ]
        for rename in renames {
            let (tmp, dir) = try copy(Self.peftAdapter, tensors: { list in list = list.map { (rename($0.name), $0.shape, $0.values) } })
            XCTAssertNotEqual(try SafetensorsFile(path: dir + "/" + AdapterFiles.weightsFile).tensors.first?.name,
                              try SafetensorsFile(path: Self.peftAdapter + "/" + AdapterFiles.weightsFile).tensors.first?.name)
            let lora = try loadAdapter(dir)
            for (a, b) in zip(lora.parameters, reference.parameters) { XCTAssertEqual(a.values, b.values, a.name) }
            withExtendedLifetime(tmp) {}
        }
        let (tmp, dir) = try copy(Self.peftAdapter, tensors: { list in list.append(("model.layers.0.self_attn.q_proj.lora_A.weight", [4, 64],
                                                                                  [Float](repeating: 0, count: 256))) })
        XCTAssertThrowsError(try loadAdapter(dir)) { e in
            guard case let .duplicateTensor(_, name, other)? = e as? AdapterError else { return XCTFail("\(e)") }
            XCTAssertEqual(Set([name, other]), ["model.layers.0.self_attn.q_proj.lora_A.weight",
                                                "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"])
        }
        withExtendedLifetime(tmp) {}
    }

    func testTargetModulesAsListPatternOrAllLinearAdaptTheSameLinears() throws {
        let all = LinearSpec.llamaBlock.map(\.name)
        let forms: [Any] = [
            "all-linear", all, Array(all.reversed()), LinearSpec.llamaBlock.map(\.gguf), LinearSpec.llamaBlock.map(\.path),
            #"model\.layers\.\d+\.(self_attn|mlp)\.\w+_proj"#,
            (0..<2).flatMap { l in LinearSpec.llamaBlock.map { $0.moduleName(layer: l) } },
        ]
        let reference = try loadAdapter(Self.peftAdapter)
        for form in forms {
            let (tmp, dir) = try copy(Self.peftAdapter, config: { $0["target_modules"] = form })
            let lora = try loadAdapter(dir)
            XCTAssertEqual(lora.parameters.map(\.name), reference.parameters.map(\.name), "\(form)")
            for (a, b) in zip(lora.parameters, reference.parameters) { XCTAssertEqual(a.values, b.values, a.name) }
            withExtendedLifetime(tmp) {}
        }
        // A pattern or list that leaves linears out leaves their tensors unexpected, named.
        for form in [#"model\.layers\.\d+\.self_attn\.\w+"# as Any, ["q_proj", "k_proj", "v_proj", "o_proj"]] {
            let (tmp, dir) = try copy(Self.peftAdapter, config: { $0["target_modules"] = form })
            XCTAssertThrowsError(try loadAdapter(dir)) { e in
                guard case let .unexpectedTensor(_, name, count, why)? = e as? AdapterError else { return XCTFail("\(e)") }
                XCTAssertEqual(name, "base_model.model.model.layers.0.mlp.down_proj.lora_A.weight")
                XCTAssertEqual(count, 12)
                XCTAssertTrue(why.contains("model.layers.0.mlp.down_proj"), why)
            }
            withExtendedLifetime(tmp) {}
        }
    }

    func testLoRAAlphaIntOrFloatAndLayersToTransformIntOrList() throws {
        for alpha in [8 as Any, 8.0 as Any] {
            let (tmp, dir) = try copy(Self.peftAdapter, config: { $0["lora_alpha"] = alpha })
            XCTAssertEqual(try AdapterFiles.config(in: dir).config.alpha, 8)
            withExtendedLifetime(tmp) {}
        }
        for layers in [0 as Any, [0], [0, 0]] {
            let (tmp, dir) = try copy(Self.peftLayer0Adapter, config: { $0["layers_to_transform"] = layers })
            XCTAssertEqual(try AdapterFiles.config(in: dir).config.layerIndices, [0], "\(layers)")
            try checkLogits(try loadAdapter(dir), case: "peft_layer0_qv_rslora")
            withExtendedLifetime(tmp) {}
        }
        // The adapter's tensors are for block 0; a config naming block 1 must not load them there.
        let (tmp, dir) = try copy(Self.peftLayer0Adapter, config: { $0["layers_to_transform"] = [1] })
        XCTAssertThrowsError(try loadAdapter(dir)) { e in
            guard case let .missingTensor(_, name)? = e as? AdapterError else { return XCTFail("\(e)") }
            XCTAssertEqual(name, "base_model.model.model.layers.1.self_attn.q_proj.lora_A.weight")
        }
        withExtendedLifetime(tmp) {}
    }

    func testSavedLayerSubsetsAreConfigsPEFTAccepts() throws {
        let cases: [(LoRAConfig, [String])] = [
            (LoRAConfig(rank: 2, targets: .regex(#".*\.(q|v)_proj"#), lastLayers: 1), ["1 q_proj", "1 v_proj"]),
            (LoRAConfig(rank: 2, targets: .allLinear, layerIndices: [0]), LinearSpec.llamaBlock.map { "0 \($0)" }),
            (LoRAConfig(rank: 2, targets: .names(["k_proj", "down_proj"]), layerIndices: [0]), ["0 k_proj", "0 down_proj"]),
            (LoRAConfig(rank: 2, targets: .regex(#".*\.(q|v)_proj"#)), ["0 q_proj", "0 v_proj", "1 q_proj", "1 v_proj"]),
        ]
        for (config, adapted) in cases {
            let lora = try ModelAdapters(model: Self.model, config: config, seed: 3)
            XCTAssertEqual(lora.adapters.map { "\($0.layer) \($0.linear)" }, adapted)
            let tmp = TempDir()
            try AdapterFiles.save(lora, to: tmp.path + "/a", baseModel: "tiny")
            let j = try XCTUnwrap(JSONSerialization.jsonObject(
                with: Data(contentsOf: URL(fileURLWithPath: tmp.path + "/a/" + AdapterFiles.configFile))) as? [String: Any])
            // PEFT's LoraConfig refuses layers_to_transform beside a string target_modules.
            XCTAssertFalse(j["target_modules"] is String && !(j["layers_to_transform"] is NSNull), "\(config): \(j)")
            let reloaded = try loadAdapter(tmp.path + "/a")
            XCTAssertEqual(reloaded.adapters.map { "\($0.layer) \($0.linear)" }, adapted, "\(config)")
            for (a, b) in zip(reloaded.parameters, lora.parameters) { XCTAssertEqual(a.values, b.values, a.name) }
        }
    }

    func testLayerIndicesAreValidated() {
        let bad: [(LoRAConfig, LoRAConfigError)] = [
            (LoRAConfig(layerIndices: [2]), .badLayerIndex(2, 2)),
            (LoRAConfig(layerIndices: [1, 0]), .unsortedLayerIndices([1, 0])),
            (LoRAConfig(layerIndices: []), .noLayerIndices),
            (LoRAConfig(lastLayers: 1, layerIndices: [0]), .lastLayersAndIndices),
        ]
        for (config, error) in bad {
            XCTAssertThrowsError(try config.validate(layers: 2)) { XCTAssertEqual($0 as? LoRAConfigError, error) }
        }
        XCTAssertEqual(LoRAConfig(layerIndices: [0]).adaptedLayers(of: 2), [0])
        XCTAssertEqual(LoRAConfig(lastLayers: 1).adaptedLayers(of: 2), [1])
        XCTAssertEqual(LoRAConfig().adaptedLayers(of: 2), [0, 1])
    }

    // MARK: - Refused

    func testFeaturesBeyondPlainLoRAAreRefusedByKey() throws {
        let refused: [(String, Any)] = [
            ("rank_pattern", ["q_proj": 8]), ("alpha_pattern", ["model.layers.0.self_attn.q_proj": 16]),
            ("bias", "all"), ("bias", "lora_only"), ("modules_to_save", ["lm_head"]), ("peft_type", "IA3"),
            ("fan_in_fan_out", true), ("lora_bias", true), ("exclude_modules", ["q_proj"]), ("layers_pattern", "h"),
            ("init_lora_weights", "mica"), ("layer_replication", [[0, 2]]), ("target_modules", ["q_proj", "lm_head"]),
            ("use_qalora", true), ("trainable_token_indices", [5]),
        ]
        for (key, value) in refused {
            let (tmp, dir) = try copy(Self.peftAdapter, config: { $0[key] = value })
            XCTAssertThrowsError(try AdapterFiles.config(in: dir), key) { e in
                guard case let .unsupported(path, k, _, _)? = e as? AdapterError else { return XCTFail("\(key): \(e)") }
                XCTAssertEqual(k, key)
                XCTAssertEqual(path, dir + "/adapter_config.json")
                XCTAssertTrue("\(e)".contains(path) && "\(e)".contains(key), "\(e)")
            }
            withExtendedLifetime(tmp) {}
        }
    }

    /// What PEFT saves after pissa, olora or loftq (init_lora_weights names them) goes with the
    /// residual base it was saved beside; it loads as any adapter, as PEFT's from_pretrained does.
    func testAdaptersOfInitializationsFromWLoad() throws {
        let plain = try loadAdapter(Self.peftAdapter)
        for value in ["pissa", "pissa_niter_4", "olora", "loftq"] {
            let (tmp, dir) = try copy(Self.peftAdapter, config: { $0["init_lora_weights"] = value })
            XCTAssertEqual(try loadAdapter(dir).parameters.map(\.values), plain.parameters.map(\.values), value)
            withExtendedLifetime(tmp) {}
        }
    }

    func testBadConfigValuesNameTheKey() throws {
        let bad: [(String, Any?)] = [
            ("r", nil), ("r", 0), ("r", 2.5), ("r", true), ("r", "4"), ("lora_alpha", nil), ("lora_alpha", "8"), ("lora_alpha", -1),
            ("lora_dropout", 1.5), ("use_rslora", "yes"), ("use_dora", "yes"), ("use_dora", 1), ("target_modules", nil), ("target_modules", [String]()), ("target_modules", 5),
            ("target_modules", "(unclosed"), ("layers_to_transform", [-1]), ("layers_to_transform", ["a"]),
            ("layers_to_transform", [Int]()),
        ]
        for (key, value) in bad {
            let (tmp, dir) = try copy(Self.peftAdapter, config: { $0[key] = value })
            XCTAssertThrowsError(try AdapterFiles.config(in: dir), "\(key) \(value ?? "nil")") { e in
                guard case let .badValue(_, k, _, _)? = e as? AdapterError else { return XCTFail("\(key): \(e)") }
                XCTAssertEqual(k, key)
            }
            withExtendedLifetime(tmp) {}
        }
        // A block the model lacks is refused when the adapters are built.
        let (tmp, dir) = try copy(Self.peftLayer0Adapter, config: { $0["layers_to_transform"] = [0, 5] })
        let config = try AdapterFiles.config(in: dir).config
        XCTAssertThrowsError(try ModelAdapters(model: Self.model, config: config, seed: 0)) {
            XCTAssertEqual($0 as? LoRAConfigError, .badLayerIndex(5, 2))
        }
        try "{\"r\": 4,".write(toFile: dir + "/adapter_config.json", atomically: true, encoding: .utf8)
        XCTAssertThrowsError(try AdapterFiles.config(in: dir)) { XCTAssertEqual($0 as? AdapterError, .bad(dir + "/adapter_config.json", "not a JSON object")) }
        try FileManager.default.removeItem(atPath: dir + "/adapter_config.json")
        XCTAssertThrowsError(try AdapterFiles.config(in: dir)) { XCTAssertEqual($0 as? AdapterError, .missing(dir + "/adapter_config.json")) }
        withExtendedLifetime(tmp) {}
    }

    func testTensorsThatDoNotFitTheModelAreRefusedByName() throws {
        let qA = "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"
        let qB = "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight"
        func replace(_ name: String, shape: [Int]) -> (inout [(name: String, shape: [Int], values: [Float])]) -> Void {
            { list in
                let i = list.firstIndex { $0.name == name }!
                list[i] = (name, shape, [Float](repeating: 0.01, count: shape.reduce(1, *)))
            }
        }
        let cases: [((inout [(name: String, shape: [Int], values: [Float])]) -> Void, (String) -> AdapterError)] = [
            ({ $0.removeAll { $0.name == qB } }, { .missingTensor($0, qB) }),
            (replace(qA, shape: [8, 64]), { .wrongRank($0, qA, found: 8, rank: 4, base: [64, 64]) }),
            (replace(qB, shape: [64, 2]), { .wrongRank($0, qB, found: 2, rank: 4, base: [64, 64]) }),
            (replace(qA, shape: [4, 32]), { .wrongShape($0, qA, expected: [4, 64], found: [4, 32]) }),
            (replace(qA, shape: [256]), { .wrongShape($0, qA, expected: [4, 64], found: [256]) }),
            ({ $0[0].values[3] = .nan }, { .nonFinite($0, "base_model.model.model.layers.0.mlp.down_proj.lora_A.weight", index: 3, value: .nan) }),
            ({ $0.append(("base_model.model.model.layers.2.self_attn.q_proj.lora_A.weight", [4, 64], [Float](repeating: 0, count: 256))) },
             { .unexpectedTensor($0, "base_model.model.model.layers.2.self_attn.q_proj.lora_A.weight", 1, why: "the model has 2 blocks") }),
            ({ $0.append(("base_model.model.lm_head.lora_A.weight", [4, 64], [Float](repeating: 0, count: 256))) },
             { .unexpectedTensor($0, "base_model.model.lm_head.lora_A.weight", 1, why: "it is no LoRA tensor of a llama block's linears") }),
        ]
        for (edit, expected) in cases {
            let (tmp, dir) = try copy(Self.peftAdapter, tensors: edit)
            let (config, _) = try AdapterFiles.config(in: dir)
            let lora = try ModelAdapters(model: Self.model, config: config, seed: 5)
            let before = lora.parameters.map(\.values)
            XCTAssertThrowsError(try AdapterFiles.load(into: lora, from: dir)) { e in
                let path = dir + "/adapter_model.safetensors"
                XCTAssertTrue("\(e)".hasPrefix(path), "\(e)")
                XCTAssertEqual("\(e)", "\(expected(path))")   // descriptions: NaN ≠ NaN
            }
            XCTAssertEqual(lora.parameters.map(\.values), before, "a failed load overwrote parameters")
            withExtendedLifetime(tmp) {}
        }
    }

    func testCorruptWeightsFileIsRefusedWithItsPath() throws {
        let original = try [UInt8](Data(contentsOf: URL(fileURLWithPath: Self.peftAdapter + "/" + AdapterFiles.weightsFile)))
        let headerSize = Int(original[0..<8].enumerated().reduce(UInt64(0)) { $0 | UInt64($1.1) << (8 * $1.0) })
        var badJSON = original
        badJSON[8] = UInt8(ascii: "[")
        var hugeHeader = original
        hugeHeader[7] = 0x7f
        let broken: [(String, [UInt8])] = [
            ("empty", []), ("header cut", Array(original.prefix(8 + headerSize / 2))), ("data cut", Array(original.dropLast(100))),
            ("header not JSON", badJSON), ("header size absurd", hugeHeader),
        ]
        for (what, bytes) in broken {
            let (tmp, dir) = try copy(Self.peftAdapter)
            tmp.write("adapter/" + AdapterFiles.weightsFile, bytes)
            let (config, _) = try AdapterFiles.config(in: dir)
            let lora = try ModelAdapters(model: Self.model, config: config, seed: 5)
            XCTAssertThrowsError(try AdapterFiles.load(into: lora, from: dir), what) { e in
                XCTAssertTrue(e is SafetensorsError, "\(what): \(e)")
                XCTAssertTrue("\(e)".hasPrefix(dir + "/" + AdapterFiles.weightsFile), "\(what): \(e)")
                // A cut data section names the tensor it cuts.
                if what == "data cut" { XCTAssertTrue("\(e)".contains(".lora_"), "\(what): \(e)") }
            }
            withExtendedLifetime(tmp) {}
        }
        let (tmp, dir) = try copy(Self.peftAdapter)
        try FileManager.default.removeItem(atPath: dir + "/" + AdapterFiles.weightsFile)
        let lora = try ModelAdapters(model: Self.model, config: try AdapterFiles.config(in: dir).config, seed: 5)
        XCTAssertThrowsError(try AdapterFiles.load(into: lora, from: dir)) {
            XCTAssertEqual($0 as? AdapterError, .missing(dir + "/" + AdapterFiles.weightsFile))
        }
        withExtendedLifetime(tmp) {}
    }
}
