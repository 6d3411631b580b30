import Foundation
import Quant

/// `qlora export --adapter-only --format gguf`: a PEFT adapter as the LoRA GGUF that llama.cpp's
/// convert_lora_to_gguf.py writes, which llama.cpp adds to its base at run time
/// (`llama-cli -m base.gguf --lora adapter.gguf`, llama-cpp-python's `lora_path`).
/// Legend: out/in a linear's rows/columns, r rank, H/Hkv heads, D head dim.
///
///   PEFT (adapter_model.safetensors)                 GGUF (ggml order, ne[0] = columns)
///   model.layers.N.<path>.lora_A.weight  [r, in]     blk.N.<gguf>.weight.lora_a  ne [in, r]
///   model.layers.N.<path>.lora_B.weight  [out, r]    blk.N.<gguf>.weight.lora_b  ne [r, out]
///
/// The row-major bytes are the same both ways: llama.cpp computes
/// y += s·ggml_mul_mat(lora_b, ggml_mul_mat(lora_a, x)) = s·B·(A·x), and checks that lora_a's
/// ne[0] is the base weight's `in`, lora_b's ne[1] its `out` and lora_a's ne[1] lora_b's ne[0].
/// Only B changes, for the linears whose base rows llama.cpp's converter permutes (attn_q by H
/// heads, attn_k by Hkv, in families with `ggufPermutesQK`: Llama, Mistral): its rows are put
/// in the base's rotary order, GGUF row h·D + 2i + j = PEFT row h·D + j·D/2 + i, as
/// convert_lora_to_gguf pushes the base's permutation through B. Phi-3's fused qkv_proj and
/// gate_up_proj are one adapter each, as they are one tensor each in the GGUF (attn_qkv, and
/// ffn_up with [gate; up] rows).
///
/// Metadata: `general.architecture` (the base's), `general.type` = "adapter", `general.name`,
/// `adapter.type` = "lora", `adapter.lora.alpha` (float32). llama.cpp scales each pair by
/// alpha / r with r = lora_b's ne[0]; qlora's scale is lora_alpha / r, or lora_alpha / √r with
/// use_rslora, so an rsLoRA adapter is written with alpha = lora_alpha·√r, which makes
/// llama.cpp's alpha / r its alpha / √r. (convert_lora_to_gguf.py writes lora_alpha as it is
/// and so scales an rsLoRA adapter √r times too little.)
///
/// Tensors are --type: F32 (the values themselves), F16 (rounded to nearest) or Q8_0 (ggml's
/// reference quantizer; needs r and every `in` to be multiples of 32). Refused by name: trained
/// RMSNorms (llama.cpp's loader skips `*_norm.weight` in a LoRA file, so they would be lost) and
/// a reward model's score head; an adapter whose shapes or layers do not fit `model` fails as
/// loading it would (AdapterFiles), and one whose base_model_name_or_path names another model
/// gets a note. Written through `FILE.tmp-<pid>`, renamed when complete.
public enum LoRAGGUFExport {
    public struct Report: Sendable {
        public var output: String
        /// lora_a and lora_b tensors written (two per adapted linear).
        public var tensors: Int
        public var rank: Int
        /// What `adapter.lora.alpha` holds: lora_alpha, or lora_alpha·√r with rsLoRA.
        public var alpha: Float
        public var outputBytes: Int
        public var seconds: Double
    }

    /// Writes the adapter in `adapter` (a PEFT directory trained on `model`) as the LoRA GGUF `output`.
    public static func run(model path: String, adapter: String, output: String, type: GGUFExport.OutputType = .f32,
                           overwrite: Bool = false, note: (String) -> Void = { _ in }) throws -> Report {
        let start = Date()
        StagedOutput.removeStale(for: output).forEach(note)
        if !overwrite, FileManager.default.fileExists(atPath: output) { throw MergedExportError.outputExists(path: output) }
        let model = try QuantizedModel(path: path)
        let (config, _) = try AdapterFiles.config(in: adapter)
        if let base = try AdapterFiles.configJSON(in: adapter).json["base_model_name_or_path"] as? String,
           name(of: base) != name(of: path) {
            note("\(adapter) says it was trained on \(base), not \(path): llama.cpp must get the base it was trained on")
        }
        let tensors = try AdapterTensors(directory: adapter, model: model)
        if tensors.score != nil { throw MergedExportError.rewardModelFormat(adapter: adapter, format: "a llama.cpp LoRA GGUF") }
        if !tensors.norms.isEmpty { throw LoRAGGUFExportError.trainedNorms(adapter: adapter, count: tensors.norms.count) }
        if config.useDoRA { throw LoRAGGUFExportError.dora(adapter: adapter) }
        let alpha = loraAlpha(config)
        if config.useRSLoRA {
            note("use_rslora: adapter.lora.alpha = lora_alpha·√r = \(config.alpha)·√\(config.rank) = \(alpha), so that llama.cpp's alpha / r is the adapter's lora_alpha / √r")
        }

        let c = model.config, family = c.family
        var specs: [GGUFWriter.TensorSpec] = [], values: [[Float]] = []
        for layer in 0..<c.numLayers {
            for linear in family.linears {
                let hf = linear.moduleName(layer: layer) + ".weight"
                guard let f = tensors.factors[hf] else { continue }
                guard let name = TensorNames.gguf(fromHuggingFace: hf, family: family) else {
                    throw ModelSourceError.unknownTensor(path: model.path, name: hf, family: family.name)
                }
                let (rows, cols) = linear.shape(in: c)
                let b = ModelSource.ropeHeads(of: hf, config: c).map { ModelSource.permuteRows(f.b, rows: rows, heads: $0) } ?? f.b
                specs += [.init(name: name + ".lora_a", ne: [cols, f.rank], type: type.ggml),
                          .init(name: name + ".lora_b", ne: [f.rank, rows], type: type.ggml)]
                values += [f.a, b]
            }
        }
        for t in specs where t.type.blockSize > 1 && t.ne[0] % t.type.blockSize != 0 {
            throw GGUFExportError.columnsNotMultipleOfBlock(tensor: t.name, columns: t.ne[0], type: t.type.name, blockSize: t.type.blockSize)
        }

        var writer = GGUFWriter()
        writer.metadata = [
            ("general.architecture", .string(GGUFExport.architecture(model.source))),
            ("general.type", .string("adapter")),
            ("general.name", .string(URL(fileURLWithPath: adapter).standardized.lastPathComponent)),
            ("adapter.type", .string("lora")),
            ("adapter.lora.alpha", .float32(alpha)),
        ]
        writer.tensors = specs
        let tmp = StagedOutput.path(for: output)
        do {
            try writer.write(to: tmp) { i in
                try GGUFExport.encode(values[i], as: specs[i].type, rows: specs[i].ne[1], cols: specs[i].ne[0])
            }
            try MergedExport.swapIn(tmp, as: output)
        } catch {
            StagedOutput.paths(for: output).forEach { try? FileManager.default.removeItem(atPath: $0) }
            throw error
        }
        return Report(output: output, tensors: specs.count, rank: config.rank, alpha: alpha,
                      outputBytes: MergedExport.fileSize(output), seconds: Date().timeIntervalSince(start))
    }

    /// A model's name without folders or extension: `models/x.Q4_1.gguf` → `x.Q4_1`.
    static func name(of model: String) -> String {
        let last = URL(fileURLWithPath: model).standardized.lastPathComponent
        return last.hasSuffix(".gguf") ? String(last.dropLast(5)) : last
    }

    /// `adapter.lora.alpha` for `config`: llama.cpp scales by alpha / r, so lora_alpha for plain
    /// LoRA (scale lora_alpha / r) and lora_alpha·√r for rsLoRA (scale lora_alpha / √r).
    static func loraAlpha(_ config: LoRAConfig) -> Float {
        config.useRSLoRA ? Float(Double(config.alpha) * Double(config.rank).squareRoot()) : config.alpha
    }
}

public enum LoRAGGUFExportError: Error, Equatable, CustomStringConvertible {
    case trainedNorms(adapter: String, count: Int)
    case dora(adapter: String)

    public var description: String {
        switch self {
        case let .trainedNorms(adapter, count):
            "\(adapter) trains \(count) RMSNorm weights (--train-norms, modules_to_save), which llama.cpp's LoRA loader skips: the adapter would run without them\n---> HINT: export the merged model instead (qlora export --format gguf without --adapter-only)"
        case let .dora(adapter):
            "\(adapter) is a DoRA adapter (use_dora): llama.cpp's LoRA GGUF holds only A and B, not DoRA's magnitude, so the adapter would run as plain LoRA\n---> HINT: export the merged model instead (qlora export --format gguf without --adapter-only)"
        }
    }
}
