import ArgumentParser
import Foundation
import QLoRA
import Quant

extension Quantizer.EmbeddingStorage: ExpressibleByArgument {}

struct Quantize: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Turn a GGUF file or a Hugging Face folder into a frozen 4-bit base for training.",
        discussion: """
            nf4 / fp4 write a folder exactly as transformers + bitsandbytes save a 4-bit model
            (config.json with quantization_config, model.safetensors with bitsandbytes' quant
            state, tokenizer files), so transformers loads it and qlora loads the bnb-4bit folders
            you already have. q4_0 / q4_1 / q8_0 write a GGUF file (from a GGUF source) with its
            metadata carried over; tensors already in that format are copied, not requantized.

            Streams tensor by tensor: memory stays near one fp32 tensor plus the output.
            Linear weights are quantized; norms stay fp32.

            --shape NAME (instead of a source) writes the synthetic model that `qlora train
            --shape NAME` builds — the same seeded weights: NF4 linears with double
            quantization, the Q8_0-rounded embeddings and LM head as F32, norms one — as a
            bitsandbytes folder, streamed (a llama-7b folder, 4.4 GB, within 0.6 GB of memory).
            --embeddings f16 or bf16 halves the token matrices but rounds them (losses then
            differ slightly from --shape's). It has no tokenizer: `qlora train --model` on it
            trains seeded random ids, as --shape does; generate needs a tokenizer and refuses it.

            Examples:
              qlora quantize models/SmolLM2-135M-Instruct.Q4_1.gguf --format nf4 -o smol-nf4
              qlora quantize Llama-3.2-1B/ --format nf4 --no-double-quant --embeddings bf16 -o llama-nf4
              qlora quantize model.Q4_K_M.gguf --format q4_0 -o model.Q4_0.gguf
              qlora quantize --shape llama-7b -o llama-7b-nf4
            """
    )

    @Argument(help: "A GGUF file or a Hugging Face model folder.") var source: String?
    @Option(help: "Write a synthetic model instead of a source: \(SyntheticShape.allCases.map(\.rawValue).joined(separator: ", ")).")
    var shape: SyntheticShape?
    @Option(help: "Blocks of the synthetic shape to keep (default: all).") var layers: Int?
    @Option(help: "Seed of the synthetic weights (qlora train --shape draws them from its --seed, 42 by default).") var seed: UInt64 = 42
    @Option(help: "Target format: \(QuantFormat.allCases.filter(\.canQuantize).map(\.rawValue).joined(separator: ", ")).") var format: QuantFormat = .nf4
    @Option(help: "Block size for nf4/fp4 (a power of two, 32...4096).") var blockSize = 64
    @Flag(inversion: .prefixedNo, help: "Double-quantize the absmax of nf4/fp4 (bitsandbytes' compress_statistics, ~4.13 bits per weight).")
    var doubleQuant = true
    @Option(help: "Storage of token embeddings and LM head: keep (as the source has them, where the output can hold it), f32, f16, bf16. In nf4/fp4 folders norms and biases take the same dtype, as transformers requires.")
    var embeddings: Quantizer.EmbeddingStorage = .keep
    @Option(name: [.short, .customLong("output")], help: "Output folder (nf4/fp4) or .gguf file (q4_0/q4_1/q8_0).") var output: String

    func validate() throws {
        guard (source == nil) != (shape == nil) else { throw ValidationError("give a source file or folder, or --shape NAME (one of them)") }
        if let shape {
            guard format == .nf4, blockSize == 64, doubleQuant else {
                throw ValidationError("--shape writes the model train --shape builds: --format nf4, --block-size 64, double quantization only")
            }
            do { _ = try shape.config(layers: layers) } catch { throw ValidationError(error.description) }
            guard !FileManager.default.fileExists(atPath: output) else { throw ValidationError("\(output) exists: remove it or choose another -o") }
            return
        }
        guard layers == nil else { throw ValidationError("--layers goes with --shape") }
        guard format.canQuantize else {
            throw ValidationError("--format \(format.rawValue): qlora reads \(format.rawValue) blocks as a GGUF file holds them but has no quantizer for it; use \(QuantFormat.allCases.filter(\.canQuantize).map(\.rawValue).joined(separator: ", "))")
        }
        if !format.isGGML {
            guard (32...4096).contains(blockSize), blockSize & (blockSize - 1) == 0 else {
                throw ValidationError("--block-size must be a power of two from 32 to 4096, got \(blockSize)")
            }
        }
        guard let source, FileManager.default.fileExists(atPath: source) else { throw ValidationError("\(source ?? ""): no such file or folder") }
    }

    func run() throws {
        let report: Quantizer.Report
        if let shape {
            let dtype: SafetensorsDType = switch embeddings {
            case .keep, .f32: .F32
            case .f16: .F16
            case .bf16: .BF16
            }
            for line in StagedOutput.removeStale(for: output) { FileHandle.standardError.write(Data("note: \(line)\n".utf8)) }
            InterruptCleanup.install(removing: StagedOutput.paths(for: output))
            report = try SyntheticFolderWriter.write(config: shape.config(layers: layers), seed: seed, output: output, dtype: dtype,
                                                     progress: Self.show)
            print("note: \(output) has no tokenizer; qlora train --model \(output) trains seeded random ids, as --shape \(shape.rawValue) does")
        } else {
            report = try quantize(source!)
        }
        print(String(format: "wrote %@: %d tensors, %.1f MB in %.1f s, peak RSS %.0f MB", report.output, report.tensors,
                     Double(report.outputBytes) / 1e6, report.seconds, Double(report.peakRSSBytes) / 1e6))
    }

    static func show(_ progress: Quantizer.Progress) {
        if case let .tensor(index, count, name, from, to, elapsed) = progress {
            let eta = index > 0 ? String(format: " ETA %.0f s", elapsed / Double(index) * Double(count - index)) : ""
            FileHandle.standardError.write(Data("[\(index + 1)/\(count)] \(name) \(from) → \(to)\(eta)\n".utf8))
        }
    }

    func quantize(_ source: String) throws -> Quantizer.Report {
        let options = Quantizer.Options(format: format, blockSize: format.isGGML ? nil : blockSize, doubleQuant: doubleQuant,
                                        embeddings: embeddings)
        return try Quantizer.run(source: source, output: output, options: options, progress: Self.show)
    }
}
