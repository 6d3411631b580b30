import ArgumentParser
import QLoRA

@main
struct QLoRACommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "qlora",
        abstract: "Fine-tune large language models with LoRA on a frozen 4-bit base, on the CPU.",
        discussion: """
            Frozen weights stay 4-bit (NF4/FP4 as bitsandbytes stores them, or GGUF's Q4_0/Q4_1/Q8_0
            blocks as they are) and are dequantized tile by tile into OpenMP-parallel GEMMs.

            Model families (Hugging Face model_type and GGUF architecture): \(ModelFamily.supportedNames).

            Start with `qlora info` to see what this machine computes with, and
            `qlora bench gemm` to measure the 4-bit GEMMs against dense sgemm.
            """,
        version: QLoRAVersion.string,
        subcommands: [Info.self, Quantize.self, Generate.self, Perplexity.self, Train.self, Plot.self, Score.self, Adapters.self, Export.self, Merge.self, Estimate.self, Bench.self]
    )

    /// `train --config FILE` is expanded into the flags it stands for before parsing
    /// (TrainConfigFile), so the file's values are checked as typed flags are.
    static func main() {
        let arguments: [String]
        do { arguments = try TrainConfigFile.expand(Array(CommandLine.arguments.dropFirst())) } catch { exit(withError: error) }
        main(arguments)
    }
}
