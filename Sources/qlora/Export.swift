import ArgumentParser
import Foundation
import QLoRA

extension GGUFExport.OutputType: ExpressibleByArgument {}

/// What `export` writes.
enum ExportFormat: String, CaseIterable, ExpressibleByArgument {
    case hf, gguf
}

struct Export: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Merge a LoRA adapter into its 4-bit base and write a plain fp32 Hugging Face folder or a GGUF file.",
        discussion: """
            Every linear becomes W' = dequant(W) + scale·B·A in fp32: the adapter is added to \
            the very 4-bit weights it was trained against, dequantized, so pass the --model you \
            trained with. Trained norms (--train-norms) replace the base's; embeddings and the \
            LM head are dequantized to fp32 (a tied model writes the embedding once). Without \
            --adapter the dequantized base is written. --adapter takes an adapter directory or a \
            run's directory (its lora_final); --ema takes the EMA weights instead (lora_final_ema, \
            or lora_best_ema beside lora_best), which a run trained with --ema also evaluates with.

            The folder holds config.json (LlamaForCausalLM, float32), generation_config.json, \
            model.safetensors (sharded with model.safetensors.index.json above \
            --max-shard-size) and the tokenizer with its chat template, copied from a folder or \
            written from the GGUF's metadata (a model without one gets a note, no tokenizer). \
            transformers loads it as it is: AutoModelForCausalLM.from_pretrained("smol-tuned").

            --format gguf writes one GGUF file llama.cpp loads instead: linears and embeddings \
            as --type (f32, f16, or q8_0 by ggml's own quantizer), norms f32, llama.cpp's tensor \
            names and q/k row order. From a GGUF base every metadata key (tokenizer, chat \
            template) is carried over; from a folder they are built from config.json and \
            tokenizer.json (byte-level BPE; what GGUF cannot express is refused by name).

            --adapter-only --format gguf writes the adapter alone, as llama.cpp's \
            convert_lora_to_gguf.py does: blk.N.<tensor>.weight.lora_a/lora_b (--type f32, f16 or \
            q8_0) and adapter.lora.alpha, which llama.cpp adds to the base at run time \
            (llama-cli -m BASE.gguf --lora adapter.gguf). --model is the base it was trained on, \
            for its architecture, shapes and q/k row order; an rsLoRA adapter is written with \
            alpha·√r so that llama.cpp's alpha/r scale is its alpha/√r. Trained norms are refused \
            (llama.cpp's LoRA loader skips them): export the merged model instead.

            fp32 takes 4 bytes a parameter (SmolLM2-135M: 538 MB). Tensors stream one at a time, \
            so memory stays near the 4-bit model plus one fp32 tensor. The output is written as \
            OUT.tmp-<pid> and renamed when complete: Ctrl-C or SIGTERM removes it and exits 130 \
            or 143, and one left by a killed run (its process gone) is removed by the next export \
            to the same OUT. An existing OUT (a non-empty folder, or a file) is refused unless \
            --overwrite.

            Examples:
              qlora export --model models/SmolLM2-135M-Instruct.Q4_1.gguf --adapter runs/smol/lora_best_ema -o smol-tuned
              qlora export --model models/SmolLM2-135M-Instruct.Q4_1.gguf --adapter runs/smol --ema -o smol-tuned   # lora_final_ema
              qlora export --model smol-nf4 -o smol-fp32 --overwrite
              qlora export --model llama-nf4 --adapter runs/llama/lora_final -o llama-tuned --max-shard-size 2GB
              qlora export --model smol-nf4 --adapter runs/smol/lora_final --format gguf --type q8_0 -o smol-tuned.Q8_0.gguf
              qlora export --model models/SmolLM2-135M-Instruct.Q4_1.gguf --adapter runs/smol --ema --adapter-only --format gguf -o smol-lora.gguf
            """
    )

    @Option(help: "The base the adapter was trained on: a GGUF file or a quantized model folder.") var model: String
    @Option(help: "A LoRA adapter directory (PEFT layout, e.g. a run's lora_best_ema) or a training run's directory (its lora_final); omit to export the dequantized base.")
    var adapter: String?
    @Flag(help: "Merge the EMA weights: a run directory's lora_final_ema, or the _ema sibling of lora_final / lora_best.")
    var ema = false
    @Option(name: [.short, .customLong("output")], help: "Output folder (hf) or .gguf file (gguf).") var output: String
    @Option(help: "What to write: hf (a Hugging Face fp32 folder) or gguf (one file for llama.cpp).") var format: ExportFormat = .hf
    @Option(help: "Tensor type of a GGUF's linears and embeddings (with --adapter-only, of lora_a/lora_b): f32, f16, q8_0 (norms stay f32).")
    var type: GGUFExport.OutputType?
    @Flag(help: "Write the adapter alone as a llama.cpp LoRA GGUF (with --format gguf), which llama.cpp adds to --model at run time (llama-cli --lora).")
    var adapterOnly = false
    @Flag(help: "Replace the output if it exists (a folder that is not empty, or a file).") var overwrite = false
    @Option(help: "Largest safetensors shard: bytes, or a number with KB, MB, GB (10³ steps) or KiB, MiB, GiB (2¹⁰ steps), as transformers' max_shard_size.")
    var maxShardSize = "5GB"

    func validate() throws {
        guard FileManager.default.fileExists(atPath: model) else { throw ValidationError("\(model): no such file or folder") }
        if let adapter {
            do { _ = try AdapterFiles.resolve(adapter, ema: ema) } catch { throw ValidationError(error.description) }
        } else if ema {
            throw ValidationError("--ema picks an adapter's EMA weights: it needs --adapter")
        }
        if type != nil, format != .gguf { throw ValidationError("--type applies to --format gguf only") }
        if adapterOnly {
            guard adapter != nil else { throw ValidationError("--adapter-only writes an adapter: it needs --adapter") }
            guard format == .gguf else {
                throw ValidationError("--adapter-only writes a llama.cpp LoRA GGUF: pass --format gguf (the PEFT adapter directory is already the Hugging Face form)")
            }
        }
        guard (Self.byteCount(maxShardSize) ?? 0) > 0 else {
            throw ValidationError("--max-shard-size must be a positive size such as 5GB, 500MB or 1000000, got \(maxShardSize)")
        }
    }

    /// transformers' sizes: "5GB" = 5·10⁹ bytes, "5GiB" = 5·2³⁰, a plain number is bytes.
    static func byteCount(_ text: String) -> Int? {
        let units: [(String, Double)] = [("KIB", 0x1p10), ("MIB", 0x1p20), ("GIB", 0x1p30), ("KB", 1e3), ("MB", 1e6), ("GB", 1e9), ("B", 1)]
        let t = text.uppercased().trimmingCharacters(in: .whitespaces)
        for (unit, factor) in units where t.hasSuffix(unit) {
            return Double(t.dropLast(unit.count).trimmingCharacters(in: .whitespaces)).map { Int($0 * factor) }
        }
        return Int(t)
    }

    func run() throws {
        let adapter = try adapter.map { try AdapterFiles.resolve($0, ema: ema) }
        if let adapter { FileHandle.standardError.write(Data("adapter: \(adapter)\n".utf8)) }
        let options = MergedExport.Options(adapter: adapter, overwrite: overwrite, maxShardBytes: Self.byteCount(maxShardSize)!)
        InterruptCleanup.install(removing: StagedOutput.paths(for: output))
        if adapterOnly, let adapter {
            let report = try LoRAGGUFExport.run(model: model, adapter: adapter, output: output, type: type ?? .f32, overwrite: overwrite) {
                FileHandle.standardError.write(Data("note: \($0)\n".utf8))
            }
            print(String(format: "wrote %@: %d LoRA tensors (rank %d, adapter.lora.alpha %g), %.2f MB in %.1f s", report.output, report.tensors,
                         report.rank, Double(report.alpha), Double(report.outputBytes) / 1e6, report.seconds))
            return
        }
        let show: (MergedExport.Progress) -> Void = { progress in
            switch progress {
            case let .tensor(index, count, name, storage, merged, to, elapsed):
                let eta = index > 0 ? String(format: " ETA %.0f s", elapsed / Double(index) * Double(count - index)) : ""
                FileHandle.standardError.write(Data("[\(index + 1)/\(count)] \(name) \(storage)\(merged ? " + adapter" : "") → \(to)\(eta)\n".utf8))
            case let .note(text):
                FileHandle.standardError.write(Data("note: \(text)\n".utf8))
            }
        }
        let report = format == .gguf
            ? try GGUFExport.run(model: model, output: output, type: type ?? .f32, options: options, progress: show)
            : try MergedExport.run(model: model, output: output, options: options, progress: show)
        let merged = adapter == nil ? "no adapter" : "\(report.merged) merged"
        let files = format == .gguf ? "" : String(format: ", %d shard%@", report.shards, report.shards == 1 ? "" : "s")
        print(String(format: "wrote %@: %d tensors (%@)%@, %.1f MB in %.1f s, peak RSS %.0f MB", report.output, report.tensors,
                     merged, files, Double(report.outputBytes) / 1e6, report.seconds, Double(report.peakRSSBytes) / 1e6))
    }
}
