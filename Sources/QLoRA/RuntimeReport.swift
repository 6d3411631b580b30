import Foundation
import Quant

/// What qlora computes with on this machine: the CPU, the SIMD level of the dequantizers,
/// whether the 4-bit GEMMs can run in bf16, the OpenBLAS core and threads. `qlora info` prints it; benchmarks put it beside their figures.
public struct RuntimeReport: Codable, Sendable {
    public var cpu: String
    public var cpuFlags: [String]
    public var simd: String
    /// The 4-bit GEMMs can run in bf16 (AVX512_BF16): `ComputeDType.bf16`.
    public var bf16GEMM: Bool
    /// The bf16 GEMMs' micro-kernel (avx512_bf16 or amx) and what decided it.
    public var bf16Kernel: String?
    /// Decoding in bf16 takes int8 dot products (AVX512_VNNI): `ComputeDType.int8`. Optional so
    /// that reports written before it still read.
    public var int8Decoding: Bool?
    public var blasCore: String
    public var blasCoreRequested: String?
    public var blasCoreReason: String
    public var blasCoreVerified: Bool
    public var inheritedOpenBLASCoreType: String?
    public var blasConfig: String
    public var blasLibrary: String
    public var threads: Int

    public static func current() throws -> RuntimeReport {
        let status = try ComputeRuntime.prepare()
        let cpu = CPUInfo.current
        return RuntimeReport(
            cpu: "\(cpu.brand.isEmpty ? cpu.vendor : cpu.brand) (family \(cpu.family), model \(cpu.model))",
            cpuFlags: cpu.flags, simd: SIMDLevel.current.description, bf16GEMM: ComputeRuntime.bf16Available,
            bf16Kernel: ComputeRuntime.bf16Available ? ComputeRuntime.bf16KernelReason : nil,
            int8Decoding: ComputeRuntime.int8DecodingAvailable, blasCore: status.corename,
            blasCoreRequested: status.requestedCore, blasCoreReason: status.reason, blasCoreVerified: status.verified,
            inheritedOpenBLASCoreType: status.inheritedCoreType, blasConfig: status.config, blasLibrary: status.library,
            threads: status.ompThreads)
    }

    /// Lines for people: `key: value`, with a warning when OpenBLAS ignored the core asked for.
    public var lines: [String] {
        var out = [
            "cpu: \(cpu)",
            "cpu flags: \(cpuFlags.joined(separator: " "))",
            "dequantize simd: \(simd)",
            "bf16 gemm: \(bf16GEMM ? "available (AVX512_BF16)" : "unavailable (no AVX512_BF16): fp32 only")",
            "bf16 kernel: \(bf16Kernel ?? "none")",
            "decoding: " + (int8Decoding == true
                ? "int8 dot products in bf16 runs (AVX512_VNNI: X quantized per 32 to 8 bits against Q4_0/Q4_1/Q5_0/Q5_1/Q8_0/Q4_K/Q5_K/Q6_K codes; other formats fp32)"
                : "fp32 (no AVX512_VNNI with AVX-512)"),
            "compute dtype: " + (bf16GEMM
                ? "bf16 for training and generation (--compute-dtype auto: this CPU has AVX512_BF16; a run checks a probe batch's loss against fp32 first), fp32 for perplexity and scoring unless asked"
                : "fp32 (auto: this CPU has no AVX512_BF16)"),
            "blas core: \(blasCore) (\(blasCoreReason))",
            "blas library: \(blasLibrary) — \(blasConfig)",
            "threads: \(threads) (OpenMP tiles; OpenBLAS runs 1 thread inside each)",
        ]
        if let inherited = inheritedOpenBLASCoreType, blasCoreRequested != nil, inherited != blasCoreRequested {
            out.append("note: OPENBLAS_CORETYPE=\(inherited) from the environment was replaced; QLORA_BLAS_CORETYPE=inherit keeps it")
        }
        if !blasCoreVerified {
            out.append("warning: asked OpenBLAS for \(blasCoreRequested ?? "?") but it runs \(blasCore); set QLORA_BLAS_CORETYPE=SkylakeX or Haswell")
        }
        return out
    }
}
