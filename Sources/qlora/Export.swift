import ArgumentParser
import Foundation
import QLoRA

struct Export: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Merge a LoRA adapter into its 4-bit base and write a plain fp32 Hugging Face folder.",
        discussion: """
            Every linear becomes W' = dequant(W) + scale·B·A in fp32: the adapter is added to \
            the very 4-bit weights it was trained against, dequantized, so pass the --model you \
            trained with. Trained norms (--train-norms) replace the base's; embeddings and the \
            LM head are dequantized to fp32 (a tied model writes the embedding once). Without \
            --adapter the dequantized base is written.

            The folder holds config.json (LlamaForCausalLM, float32), generation_config.json, \
            model.safetensors (sharded with model.safetensors.index.json above \
            --max-shard-size) and the tokenizer with its chat template, copied from a folder or \
            written from the GGUF's metadata (a model without one gets a note, no tokenizer). \
            transformers loads it as it is: AutoModelForCausalLM.from_pretrained("smol-tuned").

            fp32 takes 4 bytes a parameter (SmolLM2-135M: 538 MB). Tensors stream one at a time, \
            so memory stays near the 4-bit model plus one fp32 tensor. The folder is written as \
            DIR.tmp-<pid> and renamed when complete: an interrupted export leaves no DIR that \
            looks finished (delete the DIR.tmp-<pid> it leaves). A non-empty DIR is refused \
            unless --overwrite.

            Examples:
              qlora export --model models/SmolLM2-135M-Instruct.Q4_1.gguf --adapter runs/smol/lora_best_ema -o smol-tuned
              qlora export --model smol-nf4 -o smol-fp32 --overwrite
              qlora export --model llama-nf4 --adapter runs/llama/lora_final -o llama-tuned --max-shard-size 2GB
            """
    )

    @Option(help: "The base the adapter was trained on: a GGUF file or a quantized model folder.") var model: String
    @Option(help: "A LoRA adapter directory (PEFT layout, e.g. a run's lora_best_ema); omit to export the dequantized base.")
    var adapter: String?
    @Option(name: [.short, .customLong("output")], help: "Output folder.") var output: String
    @Flag(help: "Replace the output folder if it exists and is not empty.") var overwrite = false
    @Option(help: "Largest safetensors shard: bytes, or a number with KB, MB, GB (10³ steps) or KiB, MiB, GiB (2¹⁰ steps), as transformers' max_shard_size.")
    var maxShardSize = "5GB"

    func validate() throws {
        guard FileManager.default.fileExists(atPath: model) else { throw ValidationError("\(model): no such file or folder") }
        if let adapter, !FileManager.default.fileExists(atPath: adapter + "/adapter_config.json") {
            throw ValidationError("\(adapter): not an adapter directory (no adapter_config.json)")
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
        let options = MergedExport.Options(adapter: adapter, overwrite: overwrite, maxShardBytes: Self.byteCount(maxShardSize)!)
        let report = try MergedExport.run(model: model, output: output, options: options) { progress in
            switch progress {
            case let .tensor(index, count, name, storage, merged, elapsed):
                let eta = index > 0 ? String(format: " ETA %.0f s", elapsed / Double(index) * Double(count - index)) : ""
                FileHandle.standardError.write(Data("[\(index + 1)/\(count)] \(name) \(storage)\(merged ? " + adapter" : "") → F32\(eta)\n".utf8))
            case let .note(text):
                FileHandle.standardError.write(Data("note: \(text)\n".utf8))
            }
        }
        let merged = adapter == nil ? "no adapter" : "\(report.merged) merged"
        print(String(format: "wrote %@: %d tensors (%@), %d shard%@, %.1f MB in %.1f s, peak RSS %.0f MB", report.output, report.tensors,
                     merged, report.shards, report.shards == 1 ? "" : "s", Double(report.outputBytes) / 1e6, report.seconds,
                     Double(report.peakRSSBytes) / 1e6))
    }
}
