import ArgumentParser
import Foundation
import QLoRA

extension MergedRequantize.Target: ExpressibleByArgument {}

struct Merge: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Fold a LoRA adapter into a new 4-bit base, for a further round of QLoRA.",
        discussion: """
            Every linear becomes W' = dequant(W) + scale·B·A (as `qlora export` computes it) and is \
            quantized again: --requantize nf4 writes a bitsandbytes folder as `qlora quantize \
            --format nf4` does (same --block-size, --double-quant, --embeddings), q4_0 a GGUF file \
            as `qlora export --format gguf` does. Train a new adapter on the output as on any base.

            Quantizing W' rounds it again. For each linear, and in total, the command prints \
            rounding = ‖Q(W') − W'‖/‖W'‖ beside adapter = ‖scale·B·A‖/‖W'‖: when rounding is \
            as large as the adapter's change or larger, the new base keeps little of what the \
            adapter learned, and further training starts from a noisier point.

            Streams tensor by tensor. The output is written as OUT.tmp-<pid> and renamed when \
            complete; Ctrl-C or SIGTERM removes it and exits 130 or 143, and one left by a killed \
            run is removed by the next. An existing OUT is refused unless --overwrite.

            Examples:
              qlora merge --model smol-nf4 --adapter runs/smol/lora_final --requantize nf4 -o smol-nf4-r2
              qlora merge --model models/SmolLM2-135M-Instruct.Q4_1.gguf --adapter runs/smol/lora_final --requantize q4_0 -o smol-r2.Q4_0.gguf
            """
    )

    @Option(help: "The base the adapter was trained on: a GGUF file or a quantized model folder.") var model: String
    @Option(help: "The LoRA adapter directory (PEFT layout, e.g. a run's lora_final) or a training run's directory (its lora_final).") var adapter: String
    @Flag(help: "Fold in the EMA weights: a run directory's lora_final_ema, or the _ema sibling of lora_final / lora_best.")
    var ema = false
    @Option(help: "The new base's format: nf4 (a bitsandbytes folder) or q4_0 (a GGUF file).") var requantize: MergedRequantize.Target
    @Option(name: [.short, .customLong("output")], help: "Output folder (nf4) or .gguf file (q4_0).") var output: String
    @Option(help: "Block size for nf4 (a power of two, 32...4096).") var blockSize = 64
    @Flag(inversion: .prefixedNo, help: "Double-quantize nf4's absmax (bitsandbytes' compress_statistics).") var doubleQuant = true
    @Option(help: "Storage of token embeddings and LM head: keep, f32, f16, bf16 (in an nf4 folder norms take it too).")
    var embeddings: Quantizer.EmbeddingStorage = .keep
    @Flag(help: "Replace the output if it exists.") var overwrite = false

    func validate() throws {
        guard FileManager.default.fileExists(atPath: model) else { throw ValidationError("\(model): no such file or folder") }
        do { _ = try AdapterFiles.resolve(adapter, ema: ema) } catch { throw ValidationError(error.description) }
        if requantize == .q4_0, blockSize != 64 || !doubleQuant {
            throw ValidationError("--block-size and --no-double-quant apply to nf4; q4_0 has blocks of 32 with an fp16 scale")
        }
        guard (32...4096).contains(blockSize), blockSize & (blockSize - 1) == 0 else {
            throw ValidationError("--block-size must be a power of two from 32 to 4096, got \(blockSize)")
        }
    }

    func run() throws {
        let adapter = try AdapterFiles.resolve(adapter, ema: ema)
        FileHandle.standardError.write(Data("adapter: \(adapter)\n".utf8))
        let options = MergedRequantize.Options(adapter: adapter, target: requantize, blockSize: blockSize, doubleQuant: doubleQuant,
                                               embeddings: embeddings, overwrite: overwrite)
        InterruptCleanup.install(removing: StagedOutput.paths(for: output))
        let report = try MergedRequantize.run(model: model, output: output, options: options) { progress in
            switch progress {
            case let .tensor(index, count, name, from, to, merged, rounding, _):
                let measured = rounding.map { String(format: "  rounding %.3g, adapter %.3g", $0.relativeError, $0.relativeDelta) } ?? ""
                FileHandle.standardError.write(Data("[\(index + 1)/\(count)] \(name) \(from)\(merged ? " + adapter" : "") → \(to)\(measured)\n".utf8))
            case let .note(text):
                FileHandle.standardError.write(Data("note: \(text)\n".utf8))
            }
        }
        let r = report.rounding
        print(String(format: "rounding ‖Q(W')−W'‖/‖W'‖ = %.3g over %d linears; adapter's change ‖W'−W‖/‖W'‖ = %.3g (%@)", r.relativeError,
                     report.perTensor.count, r.relativeDelta, r.relativeError >= r.relativeDelta ? "rounding is as large as the adapter's change or larger" : "the adapter's change is larger"))
        print(String(format: "wrote %@: %d tensors (%d merged), %.1f MB in %.1f s, peak RSS %.0f MB", report.output, report.tensors,
                     report.merged, Double(report.outputBytes) / 1e6, report.seconds, Double(report.peakRSSBytes) / 1e6))
    }
}
