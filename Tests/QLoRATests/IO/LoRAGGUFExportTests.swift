import Foundation
@testable import QLoRA
import Quant
import XCTest

/// `qlora export --adapter-only --format gguf`: the LoRA GGUF read back with GGUFFile and held
/// against (i) the PEFT adapter's own tensors, with the orientation and q/k row order llama.cpp
/// expects, and (ii) what llama.cpp computes from it — W + (alpha / r)·B·A in ggml's layout,
/// r = lora_b's ne[0] — against the merged GGUF `qlora export --format gguf` writes, in every
/// family. That llama.cpp itself gives the merged model's logits is tools/check_llama_cpp_lora.sh.
final class LoRAGGUFExportTests: XCTestCase {
    static let fixtures = MergedExportTests.fixtures
    static let model = MergedExportTests.model
    /// The tiny Llama's rsLoRA adapter written by qlora (r 2, lora_alpha 6, use_rslora).
    static let rsLoRAAdapter = fixtures + "/tiny-llama-qlora-adapter"

    func export(_ dir: TempDir, model: String = model, adapter: String, type: GGUFExport.OutputType = .f32,
                name: String = "adapter.gguf") throws -> (path: String, report: LoRAGGUFExport.Report, notes: [String]) {
        let out = dir.path + "/" + name
        var notes: [String] = []
        let report = try LoRAGGUFExport.run(model: model, adapter: adapter, output: out, type: type) { notes.append($0) }
        return (out, report, notes)
    }

    /// lora_a is PEFT's A [r, in] as ne [in, r], lora_b PEFT's B [out, r] as ne [r, out], the
    /// same row-major values; only attn_q's and attn_k's B rows move, into llama.cpp's rotary
    /// order. rsLoRA: alpha = lora_alpha·√r, so llama.cpp's alpha / r is PEFT's lora_alpha / √r.
    func testTensorsAreThePEFTFactorsInLlamaCppLayout() throws {
        let dir = TempDir()
        let (path, report, notes) = try export(dir, adapter: Self.rsLoRAAdapter)
        let g = try GGUFFile(path: path)
        XCTAssertEqual(g.metadata["general.architecture"]?.string, "llama")
        XCTAssertEqual(g.metadata["general.type"]?.string, "adapter")
        XCTAssertEqual(g.metadata["adapter.type"]?.string, "lora")
        guard case let .float32(alpha)? = g.metadata["adapter.lora.alpha"] else { return XCTFail("adapter.lora.alpha is not a float32") }
        XCTAssertEqual(alpha, Float(6 * 2.0.squareRoot()))
        XCTAssertEqual(alpha / 2, LoRAConfig(rank: 2, alpha: 6, useRSLoRA: true).scale, accuracy: 1e-6)
        XCTAssertEqual(report.alpha, alpha)
        XCTAssertEqual(notes.count, 1, "\(notes)")
        XCTAssertTrue(notes.contains { $0.contains("use_rslora") }, "\(notes)")

        let peft = try SafetensorsFile(path: Self.rsLoRAAdapter + "/" + AdapterFiles.weightsFile)
        XCTAssertEqual(g.tensors.count, peft.tensors.count)
        XCTAssertEqual(report.tensors, 28, "7 linears × 2 layers, A and B each")
        var permuted = 0
        for t in peft.tensors {
            let isA = t.name.hasSuffix(".lora_A.weight")
            let hf = String(t.name.dropFirst(AdapterFiles.prefix.count)).replacingOccurrences(of: isA ? ".lora_A" : ".lora_B", with: "")
            let name = try XCTUnwrap(TensorNames.gguf(fromHuggingFace: hf, family: .llama)) + (isA ? ".lora_a" : ".lora_b")
            let lora = try XCTUnwrap(g.tensor(name), name)
            XCTAssertEqual(lora.type, .f32, name)
            XCTAssertEqual(lora.ne, t.shape.reversed(), "\(name): ggml's ne is PEFT's shape reversed")
            let want = try peft.floats(t), got = try g.dequantize(lora)
            if let heads = ModelSource.ropeHeads(of: hf, config: try QuantizedModel(path: Self.model).config), !isA {
                XCTAssertNotEqual(got, want, "\(name): rows in rotary order")
                XCTAssertEqual(got, ModelSource.permuteRows(want, rows: t.shape[0], heads: heads), name)
                permuted += 1
            } else {
                XCTAssertEqual(got, want, name)
            }
        }
        XCTAssertEqual(permuted, 4, "B of q and k in both layers")
        XCTAssertThrowsError(try export(dir, adapter: Self.rsLoRAAdapter)) {
            XCTAssertEqual($0 as? MergedExportError, .outputExists(path: path))
        }

        let (half, _, _) = try export(dir, adapter: Self.rsLoRAAdapter, type: .f16, name: "adapter.f16.gguf")
        let h = try GGUFFile(path: half)
        for t in g.tensors {
            let f16 = try XCTUnwrap(h.tensor(t.name))
            XCTAssertEqual(f16.type, .f16, t.name)
            XCTAssertEqual(try h.dequantize(f16), try g.dequantize(t).map { FP16.float(fromBits: FP16.bits(from: $0)) }, t.name)
        }
    }

    /// llama.cpp's sum, W + (alpha / r)·B·A from the LoRA GGUF's bytes on the base GGUF's rows,
    /// is the merged GGUF export in every family: names (Phi-3's fused attn_qkv and ffn_up),
    /// orientation, q/k row order and alpha (plain and rsLoRA) all enter it.
    func testLlamaCppSumEqualsTheMergedExportInEveryFamily() throws {
        for (family, rsLoRA) in [("llama", false), ("mistral", true), ("qwen2", false), ("qwen3", true), ("gemma2", false),
                                 ("gemma3", true), ("phi3", false)] {
            let dir = TempDir()
            let model = Self.fixtures + "/tiny-\(family)-bnb-nf4"
            let adapter = try randomAdapter(model: model, rsLoRA: rsLoRA, in: dir.path + "/adapter")
            let (path, _, _) = try export(dir, model: model, adapter: adapter)
            let merged = dir.path + "/merged.gguf", base = dir.path + "/base.gguf"
            _ = try GGUFExport.run(model: model, output: merged, type: .f32, options: .init(adapter: adapter)) { _ in }
            _ = try GGUFExport.run(model: model, output: base, type: .f32) { _ in }
            let lora = try GGUFFile(path: path), m = try GGUFFile(path: merged), b = try GGUFFile(path: base)
            XCTAssertEqual(lora.metadata["general.architecture"], m.metadata["general.architecture"], family)
            let alpha = try XCTUnwrap(lora.metadata["adapter.lora.alpha"]?.double.map(Float.init), family)

            var pairs = 0
            for w in b.tensors {
                guard let a = lora.tensor(w.name + ".lora_a") else { continue }
                let bt = try XCTUnwrap(lora.tensor(w.name + ".lora_b"), w.name)
                // llama.cpp's checks (llama-adapter.cpp) and its scale.
                XCTAssertEqual(a.ne[0], w.ne[0], "\(family) \(w.name): lora_a ne[0] = the weight's columns")
                XCTAssertEqual(bt.ne[1], w.ne[1], "\(family) \(w.name): lora_b ne[1] = the weight's rows")
                XCTAssertEqual(a.ne[1], bt.ne[0], "\(family) \(w.name): lora_a ne[1] = lora_b ne[0] = r")
                let r = bt.ne[0], cols = w.ne[0], rows = w.ne[1], scale = alpha / Float(r)
                let av = try lora.dequantize(a), bv = try lora.dequantize(bt)
                let wv = try b.dequantize(w), want = try m.dequantize(XCTUnwrap(m.tensor(w.name)))
                var err: Float = 0, delta: Float = 0
                for o in 0..<rows {
                    for i in 0..<cols {
                        var sum: Float = 0
                        for k in 0..<r { sum += bv[o * r + k] * av[k * cols + i] }
                        err = max(err, abs(wv[o * cols + i] + scale * sum - want[o * cols + i]))
                        delta = max(delta, abs(want[o * cols + i] - wv[o * cols + i]))
                    }
                }
                XCTAssertLessThan(err, 1e-6, "\(family) \(w.name): f32 rounding only")
                XCTAssertGreaterThan(delta, 1e-3, "\(family) \(w.name): the adapter moves the weight")
                pairs += 1
            }
            XCTAssertEqual(pairs, try QuantizedModel(path: model).config.family.linears.count * 2, family)
            XCTAssertEqual(lora.tensors.count, 2 * pairs, "\(family): nothing but lora_a/lora_b pairs")
        }
    }

    /// Each refusal names the problem.
    func testRefusesWhatLlamaCppCannotApply() throws {
        let dir = TempDir()
        XCTAssertThrowsError(try export(dir, adapter: Self.fixtures + "/tiny-llama-peft-adapter-norms")) {
            guard case .trainedNorms(_, let count)? = $0 as? LoRAGGUFExportError else { return XCTFail("\($0)") }
            XCTAssertEqual(count, 5, "two norms in each of two layers, and the final norm")
            XCTAssertTrue("\($0)".contains("llama.cpp's LoRA loader skips"), "\($0)")
        }
        XCTAssertThrowsError(try export(dir, adapter: Self.fixtures + "/tiny-llama-reward-adapter")) {
            XCTAssertEqual($0 as? MergedExportError, .rewardModelFormat(adapter: Self.fixtures + "/tiny-llama-reward-adapter",
                                                                       format: "a llama.cpp LoRA GGUF"))
        }
        // An adapter for another base: Phi-3 has no gate_proj; Qwen3's q_proj is [128, 64] (D 32).
        XCTAssertThrowsError(try export(dir, model: Self.fixtures + "/tiny-phi3-bnb-nf4", adapter: Self.rsLoRAAdapter)) {
            XCTAssertTrue("\($0)".contains("'mlp.gate_proj' is not a linear of a phi3 block"), "\($0)")
        }
        XCTAssertThrowsError(try export(dir, model: Self.fixtures + "/tiny-qwen3-bnb-nf4", adapter: Self.rsLoRAAdapter)) {
            XCTAssertTrue("\($0)".contains("q_proj.lora_B.weight' has shape [64, 2], the model needs [128, 2]"), "\($0)")
        }
        XCTAssertThrowsError(try export(dir, adapter: Self.rsLoRAAdapter, type: .q8_0)) {
            XCTAssertEqual($0 as? GGUFExportError, .columnsNotMultipleOfBlock(tensor: "blk.0.attn_q.weight.lora_b", columns: 2, type: "Q8_0", blockSize: 32))
        }
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: dir.path), [], "nothing written")
        // Qwen2's shapes are the tiny Llama's: written, with a note naming both models.
        let (_, _, notes) = try export(dir, model: Self.fixtures + "/tiny-qwen2-bnb-nf4", adapter: Self.rsLoRAAdapter)
        XCTAssertTrue(notes.contains { $0.contains("says it was trained on tiny-llama-bnb-nf4, not") && $0.contains("tiny-qwen2-bnb-nf4") }, "\(notes)")
    }

    /// An all-linear adapter on `model` with A as PEFT initializes it and B drawn in ±0.1 (a
    /// trained B is non-zero), saved in PEFT's layout at `path`.
    func randomAdapter(model: String, rsLoRA: Bool, in path: String) throws -> String {
        let config = LoRAConfig(rank: 4, alpha: 8, targets: .allLinear, useRSLoRA: rsLoRA)
        let lora = try ModelAdapters(model: try DecoderModel(path: model), config: config, seed: 7)
        var rng = SplitMix64(seed: 11)
        for (_, _, a) in lora.adapters {
            for i in 0..<a.b.count { a.b.value.base[i] = Float(rng.nextUnitDouble() * 0.2 - 0.1) }
        }
        try AdapterFiles.save(lora, to: path, baseModel: model)
        return path
    }
}
