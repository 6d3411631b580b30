import Foundation
@testable import QLoRA
import XCTest

/// Adapters and exports of every family on the committed tiny models (tiny-FAMILY and its NF4
/// folder), what can be checked without Python: a save → load round trip with trained norms,
/// the norms each export writes (Hugging Face: the file convention, w of Gemma's x̂·(1 + w);
/// GGUF: llama.cpp's, 1 + w for Gemma), and Phi-3's fused names in GGUF. That PEFT,
/// transformers and gguf-py agree is tools/check_family_interop.py.
final class FamilyExportTests: XCTestCase {
    static let fixtures = MergedExportTests.fixtures
    static let families = ["llama", "mistral", "qwen2", "qwen3", "gemma2", "gemma3", "phi3"]

    static func nf4(_ family: String) -> String { fixtures + "/tiny-\(family)-bnb-nf4" }

    /// The fp32 folder's tensors by name, as transformers saved them.
    static func rawTensors(_ family: String) throws -> [String: [Float]] {
        let f = try SafetensorsFile(path: fixtures + "/tiny-\(family)/model.safetensors")
        return try Dictionary(uniqueKeysWithValues: f.tensors.map { ($0.name, try f.floats($0)) })
    }

    static func tensors(inFolder path: String) throws -> [String: [Float]] {
        let f = try HuggingFaceFolder(path: path)
        return try Dictionary(uniqueKeysWithValues: f.tensors.map { file, t in (t.name, try file.floats(t)) })
    }

    /// Rank 2 on every linear with trained norms: A, B uniform, every norm's effective weight
    /// (Gemma: 1 + w) times 1 + U(−0.3, 0.3), so it stays in [0.5, 2] and w = it − 1 is exact.
    static func seededAdapter(_ model: DecoderModel, seed: UInt64) throws -> ModelAdapters {
        let lora = try ModelAdapters(model: model, config: LoRAConfig(rank: 2, alpha: 4, targets: .allLinear), trainNorms: true, seed: 1)
        var rng = SplitMix64(seed: seed)
        for p in lora.parameters {
            if p.name.contains(".lora_") {
                let bound = p.name.hasSuffix(".lora_A.weight") ? 0.2 : 0.05
                p.setValues((0..<p.count).map { _ in Float((rng.nextUnitDouble() * 2 - 1) * bound) })
            } else {
                p.setValues(p.values.map { $0 * Float(1 + (rng.nextUnitDouble() * 2 - 1) * 0.3) })
            }
        }
        return lora
    }

    /// Saved and loaded into a fresh ModelAdapters, every parameter comes back bit for bit; the file
    /// holds the norms as Hugging Face files do (Gemma: the effective weight less one).
    func testAdapterRoundTripWithTrainedNorms() throws {
        for family in Self.families {
            let model = try DecoderModel(path: Self.nf4(family))
            let lora = try Self.seededAdapter(model, seed: 7)
            let dir = TempDir()
            try AdapterFiles.save(lora, to: dir.path + "/a", baseModel: "tiny-\(family)-bnb-nf4")
            let (config, trainsNorms) = try AdapterFiles.config(in: dir.path + "/a")
            XCTAssertTrue(trainsNorms, family)
            let back = try ModelAdapters(model: model, config: config, trainNorms: trainsNorms, seed: 99)
            try AdapterFiles.load(into: back, from: dir.path + "/a")
            XCTAssertEqual(back.parameters.map(\.name), lora.parameters.map(\.name), family)
            for (a, b) in zip(lora.parameters, back.parameters) { XCTAssertEqual(b.values, a.values, "\(family) \(a.name)") }

            let file = try SafetensorsFile(path: dir.path + "/a/" + AdapterFiles.weightsFile)
            let offset: Float = family.hasPrefix("gemma") ? 1 : 0
            let norms = lora.parameters.filter { !$0.name.contains(".lora_") }
            let perBlock = family == "gemma3" ? 6 : family == "qwen3" || family == "gemma2" ? 4 : 2
            XCTAssertEqual(norms.count, perBlock * model.config.numLayers + 1, family)
            for p in norms {
                let saved = try file.floats(XCTUnwrap(file.tensor("base_model.model." + p.name), "\(family) \(p.name)"))
                XCTAssertEqual(saved, p.values.map { $0 - offset }, "\(family) \(p.name)")
            }
        }
    }

    /// The Hugging Face export without an adapter writes every norm as the fp32 folder holds
    /// it (Gemma's w, no offset); with the adapter, the adapter file's norms.
    func testHuggingFaceExportNormsAreTheFileConvention() throws {
        for family in Self.families {
            let dir = TempDir()
            _ = try MergedExport.run(model: Self.nf4(family), output: dir.path + "/base", options: .init()) { _ in }
            let raw = try Self.rawTensors(family), exported = try Self.tensors(inFolder: dir.path + "/base")
            let normNames = raw.keys.filter { $0.hasSuffix("norm.weight") }
            XCTAssertFalse(normNames.isEmpty, family)
            for name in normNames { XCTAssertEqual(exported[name], raw[name], "\(family) \(name)") }
            if family.hasPrefix("gemma") {
                XCTAssertLessThan(abs(raw["model.norm.weight"]!.reduce(0, +) / 64), 0.2, "Gemma's fixture norms are offsets near 0")
            }

            let lora = try Self.seededAdapter(try DecoderModel(path: Self.nf4(family)), seed: 8)
            try AdapterFiles.save(lora, to: dir.path + "/a", baseModel: "tiny")
            _ = try MergedExport.run(model: Self.nf4(family), output: dir.path + "/tuned", options: .init(adapter: dir.path + "/a")) { _ in }
            let file = try SafetensorsFile(path: dir.path + "/a/" + AdapterFiles.weightsFile)
            let tuned = try Self.tensors(inFolder: dir.path + "/tuned")
            for name in normNames {
                let want = try file.floats(XCTUnwrap(file.tensor("base_model.model." + name), name))
                XCTAssertEqual(tuned[name], want, "\(family) \(name)")
                XCTAssertNotEqual(tuned[name], raw[name], "\(family) \(name): the trained norm is written")
            }
        }
    }

    /// The f32 GGUF holds each norm as llama.cpp computes with it: the Hugging Face export's
    /// value plus one for Gemma 3 (every norm, q/k norms included), the value itself elsewhere.
    func testGGUFNormsAreOnePlusWForGemma3Only() throws {
        for family in Self.families {
            let dir = TempDir()
            let lora = try Self.seededAdapter(try DecoderModel(path: Self.nf4(family)), seed: 9)
            try AdapterFiles.save(lora, to: dir.path + "/a", baseModel: "tiny")
            let options = MergedExport.Options(adapter: dir.path + "/a")
            _ = try MergedExport.run(model: Self.nf4(family), output: dir.path + "/hf", options: options) { _ in }
            _ = try GGUFExport.run(model: Self.nf4(family), output: dir.path + "/m.gguf", type: .f32, options: options) { _ in }
            let hf = try Self.tensors(inFolder: dir.path + "/hf")
            let g = try GGUFFile(path: dir.path + "/m.gguf")
            let family_ = try XCTUnwrap(ModelFamily.named(family))
            let offset: Float = family.hasPrefix("gemma") ? 1 : 0
            var checked = 0
            for (gguf, path, role) in family_.blockTensors where role == .norm {
                for l in 0..<2 {
                    let t = try XCTUnwrap(g.tensor("blk.\(l).\(gguf)"), "\(family) blk.\(l).\(gguf)")
                    let want = try XCTUnwrap(hf["model.layers.\(l).\(path)"]).map { $0 + offset }
                    XCTAssertEqual(try g.dequantize(t), want, "\(family) blk.\(l).\(gguf)")
                    checked += 1
                }
            }
            XCTAssertEqual(try g.dequantize(XCTUnwrap(g.tensor("output_norm.weight"))), hf["model.norm.weight"]!.map { $0 + offset }, family)
            XCTAssertEqual(checked, 2 * family_.norms.count, family)
        }
    }

    /// Phi-3 in GGUF: the fused linears under llama.cpp's names, attn_qkv [C → (H + 2·Hkv)·D]
    /// and ffn_up [C → 2·F] ([gate; up] rows), no separate q/k/v or gate; rows in Hugging Face
    /// order (no q/k permutation for phi3).
    func testPhi3FusedLinearNamesInGGUF() throws {
        let dir = TempDir()
        _ = try MergedExport.run(model: Self.nf4("phi3"), output: dir.path + "/hf", options: .init()) { _ in }
        _ = try GGUFExport.run(model: Self.nf4("phi3"), output: dir.path + "/m.gguf", type: .f32, options: .init()) { _ in }
        let g = try GGUFFile(path: dir.path + "/m.gguf"), hf = try Self.tensors(inFolder: dir.path + "/hf")
        XCTAssertEqual(g.metadata["general.architecture"]?.string, "phi3")
        let names = Set(g.tensors.map(\.name))
        var want: Set<String> = ["token_embd.weight", "output_norm.weight", "output.weight"]
        for l in 0..<2 {
            want.formUnion(["attn_norm", "attn_qkv", "attn_output", "ffn_norm", "ffn_up", "ffn_down"].map { "blk.\(l).\($0).weight" })
        }
        XCTAssertEqual(names, want)
        for l in 0..<2 {
            XCTAssertEqual(g.tensor("blk.\(l).attn_qkv.weight")?.ne, [64, (4 + 2 * 2) * 16])
            XCTAssertEqual(g.tensor("blk.\(l).ffn_up.weight")?.ne, [64, 2 * 320])
            XCTAssertEqual(try g.dequantize(XCTUnwrap(g.tensor("blk.\(l).attn_qkv.weight"))), hf["model.layers.\(l).self_attn.qkv_proj.weight"])
            XCTAssertEqual(try g.dequantize(XCTUnwrap(g.tensor("blk.\(l).ffn_up.weight"))), hf["model.layers.\(l).mlp.gate_up_proj.weight"])
        }
    }

    /// Gemma 3 through a GGUF and back to a Hugging Face folder: the norms are the fixture's w
    /// again (1 + w less one: within half an ulp of 1), and config.json names one activation.
    func testGemma3GGUFSourceExportsHuggingFaceNorms() throws {
        let dir = TempDir()
        _ = try GGUFExport.run(model: Self.nf4("gemma3"), output: dir.path + "/g.gguf", type: .f32, options: .init()) { _ in }
        _ = try MergedExport.run(model: dir.path + "/g.gguf", output: dir.path + "/hf", options: .init()) { _ in }
        let raw = try Self.rawTensors("gemma3"), back = try Self.tensors(inFolder: dir.path + "/hf")
        var checked = 0
        for (name, want) in raw where name.hasSuffix("norm.weight") {
            let got = try XCTUnwrap(back[name], name)
            XCTAssertLessThanOrEqual(zip(got, want).map { abs($0 - $1) }.max()!, 0x1p-24, name)
            checked += 1
        }
        XCTAssertEqual(checked, 13)
        let config = try XCTUnwrap(HuggingFaceFolder(path: dir.path + "/hf").rawConfig)
        XCTAssertEqual(config["hidden_activation"] as? String, "gelu_pytorch_tanh")
        XCTAssertEqual(config["hidden_act"] as? String, "gelu_pytorch_tanh")
        XCTAssertEqual(config["sliding_window"] as? Int, 4)
    }

    /// A folder exported from a GGUF names its family's class (the GGUF architecture's), and pad_token_id (null when the
    /// GGUF has none) so that no class default stands in: Phi3Config's 32000 lies outside a
    /// 256-token vocabulary and transformers refused to build the model.
    func testGGUFSourceConfigPerFamily() throws {
        for family in Self.families {
            let dir = TempDir()
            _ = try GGUFExport.run(model: Self.nf4(family), output: dir.path + "/g.gguf", type: .q8_0, options: .init()) { _ in }
            _ = try MergedExport.run(model: dir.path + "/g.gguf", output: dir.path + "/hf", options: .init()) { _ in }
            let config = try HuggingFaceFolder(path: dir.path + "/hf").rawConfig
            // Mistral's GGUF is llama.cpp's llama architecture, so it comes back as Llama
            let f = try XCTUnwrap(ModelFamily.named(XCTUnwrap(ModelFamily.named(family)).ggufArchitecture))
            XCTAssertEqual(config["architectures"] as? [String], [f.huggingFaceArchitecture], family)
            XCTAssertEqual(config["model_type"] as? String, f.huggingFaceModelType, family)
            XCTAssertTrue(config["pad_token_id"] is NSNull, "\(family): \(String(describing: config["pad_token_id"]))")
        }
    }

    /// The sliding window travels in the keys llama.cpp reads for gemma3 and phi3
    /// (convert_hf_to_gguf's), and qlora reads it back; Mistral's has no key in the llama
    /// architecture, and export says so.
    func testSlidingWindowMetadata() throws {
        let dir = TempDir()
        var notes: [String] = []
        _ = try GGUFExport.run(model: Self.nf4("gemma3"), output: dir.path + "/g.gguf", type: .f32, options: .init()) {
            if case let .note(text) = $0 { notes.append(text) }
        }
        let g = try GGUFFile(path: dir.path + "/g.gguf")
        XCTAssertEqual(g.metadata["gemma3.attention.sliding_window"]?.int, 4)
        XCTAssertEqual(try ModelSource(path: dir.path + "/g.gguf").config.slidingWindow, 4)
        XCTAssertTrue(notes.contains { $0.contains("query_pre_attn_scalar") }, "\(notes)")
        XCTAssertTrue(notes.contains { $0.contains("every 6th layer") }, "\(notes)")

        notes = []
        _ = try GGUFExport.run(model: Self.nf4("mistral"), output: dir.path + "/m.gguf", type: .f32, options: .init()) {
            if case let .note(text) = $0 { notes.append(text) }
        }
        XCTAssertTrue(notes.contains { $0.contains("sliding_window 4") }, "\(notes)")
        XCTAssertEqual(try GGUFFile(path: dir.path + "/m.gguf").metadata["general.architecture"]?.string, "llama")

        _ = try GGUFExport.run(model: Self.nf4("phi3"), output: dir.path + "/p.gguf", type: .f32, options: .init()) { _ in }
        XCTAssertNil(try GGUFFile(path: dir.path + "/p.gguf").metadata["phi3.attention.sliding_window"], "the tiny Phi-3 has none")
    }
}
