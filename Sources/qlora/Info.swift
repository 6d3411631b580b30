import ArgumentParser
import Foundation
import QLoRA

struct Info: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Show the CPU, SIMD level, OpenBLAS core and threads qlora computes with.",
        discussion: """
            qlora picks OpenBLAS's kernel family (core type) from CPUID before loading the library,
            replacing an OPENBLAS_CORETYPE inherited from the environment: Debian's OpenBLAS 0.3.21
            picks a generic SSE3 core on some AVX-512 CPUs, up to 5x slower. Override with
            QLORA_BLAS_CORETYPE=<name>, or QLORA_BLAS_CORETYPE=inherit to keep OPENBLAS_CORETYPE.
            Threads: OMP_NUM_THREADS (default: all cores).
            """
    )

    @Flag(help: "Print JSON for scripts.") var json = false

    func run() throws {
        let report = try RuntimeReport.current()
        if json {
            let encoder = JSONEncoder()
            encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
            print(String(decoding: try encoder.encode(report), as: UTF8.self))
        } else {
            report.lines.forEach { print($0) }
        }
    }
}
