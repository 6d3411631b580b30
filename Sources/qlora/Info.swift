import ArgumentParser
import Foundation
import QLoRA

struct Info: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Describe a model file or folder, or (with no path) what this machine computes with.",
        discussion: """
            qlora info MODEL   architecture, shapes, parameter counts, bytes per component and
                               format, tokenizer and chat template. MODEL is a GGUF file, a
                               Hugging Face folder (safetensors, sharded or not) or a
                               bitsandbytes 4-bit folder (qlora quantize writes those).
            qlora info         the CPU, SIMD level, OpenBLAS core and threads.

            qlora picks OpenBLAS's kernel family (core type) from CPUID before loading the library,
            replacing an OPENBLAS_CORETYPE inherited from the environment: Debian's OpenBLAS 0.3.21
            picks a generic SSE3 core on some AVX-512 CPUs, up to 5x slower. Override with
            QLORA_BLAS_CORETYPE=<name>, or QLORA_BLAS_CORETYPE=inherit to keep OPENBLAS_CORETYPE.
            Threads: OMP_NUM_THREADS (default: all cores).
            """
    )

    @Argument(help: "A GGUF file or a model folder.") var model: String?
    @Flag(help: "Print JSON for scripts.") var json = false

    func run() throws {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
        if let model {
            let summary = try ModelSummary.load(path: model)
            if json { print(String(decoding: try encoder.encode(summary), as: UTF8.self)) } else { summary.lines.forEach { print($0) } }
        } else {
            let report = try RuntimeReport.current()
            if json { print(String(decoding: try encoder.encode(report), as: UTF8.self)) } else { report.lines.forEach { print($0) } }
            // Under mpirun/mpiexec: this rank, the world, and a checked all-reduce over it.
            if !json {
                if let process = try MPIWorld.start() {
                    defer { MPIWorld.finish() }
                    print(try MPIWorld.selfCheck(process) + ", \(report.threads) threads in this rank")
                } else {
                    print("mpi: not under mpirun (MPI is loaded at run time when a launcher starts qlora)")
                }
            }
        }
    }
}
