import Foundation
import QuantKernels

/// The SIMD level of the dequantizers, chosen at run time by CPUID.
public enum SIMDLevel: Int, CaseIterable, Comparable, Sendable, CustomStringConvertible {
    case scalar, avx2, avx512

    /// The best level this CPU and OS support.
    public static var best: SIMDLevel { SIMDLevel(rawValue: Int(qk_isa_best().rawValue))! }

    /// Levels this machine can run, scalar first.
    public static var available: [SIMDLevel] { allCases.filter { $0 <= best } }

    /// The level in use. Setting a level the CPU lacks is ignored. Process-wide: for tests
    /// and benchmarks.
    public static var current: SIMDLevel {
        get { SIMDLevel(rawValue: Int(qk_isa_get().rawValue))! }
        set { _ = qk_isa_set(newValue.kernelISA) }
    }

    var kernelISA: qk_isa { qk_isa(rawValue: UInt32(rawValue)) }

    public static func < (a: SIMDLevel, b: SIMDLevel) -> Bool { a.rawValue < b.rawValue }
    public var description: String { ["scalar", "avx2", "avx512"][rawValue] }
}

/// What CPUID says about this machine.
public struct CPUInfo: Sendable {
    public let vendor: String
    public let brand: String
    public let family: Int
    public let model: Int
    public let avx2: Bool
    public let fma: Bool
    public let avx512: Bool        // F, BW and VL, with OS support
    public let avx512BF16: Bool
    public let amx: Bool           // AMX tiles with BF16, with OS support

    public init(vendor: String, brand: String, family: Int, model: Int, avx2: Bool, fma: Bool, avx512: Bool,
                avx512BF16: Bool, amx: Bool) {
        self.vendor = vendor
        self.brand = brand
        self.family = family
        self.model = model
        self.avx2 = avx2
        self.fma = fma
        self.avx512 = avx512
        self.avx512BF16 = avx512BF16
        self.amx = amx
    }

    public static let current: CPUInfo = {
        var i = qk_cpu_info()
        qk_cpu_detect(&i)
        func string<T>(_ tuple: T) -> String {
            withUnsafeBytes(of: tuple) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
                .trimmingCharacters(in: .whitespaces)
        }
        return CPUInfo(vendor: string(i.vendor), brand: string(i.brand), family: Int(i.family), model: Int(i.model),
                       avx2: i.avx2 != 0 && i.os_avx != 0, fma: i.fma != 0,
                       avx512: i.avx512f != 0 && i.avx512bw != 0 && i.avx512vl != 0 && i.os_avx512 != 0,
                       avx512BF16: i.avx512_bf16 != 0 && i.os_avx512 != 0,
                       amx: i.amx_tile != 0 && i.amx_bf16 != 0 && i.os_amx != 0)
    }()

    public var flags: [String] {
        [("avx2", avx2), ("fma", fma), ("avx512", avx512), ("avx512_bf16", avx512BF16), ("amx", amx)]
            .filter(\.1).map(\.0)
    }
}

/// OpenBLAS and OpenMP as qlora runs them.
///
/// Debian's OpenBLAS 0.3.21 detects some AVX-512 CPUs as a generic SSE3 core (`Prescott`,
/// ≈ 5× slower sgemm), and environments often set `OPENBLAS_CORETYPE` globally for other
/// software (`Haswell`, half speed on AVX-512 machines). qlora therefore picks the core from
/// CPUID, sets `OPENBLAS_CORETYPE` before loading the library, and checks what OpenBLAS
/// reports afterwards. `QLORA_BLAS_CORETYPE=<name>` forces a core; `QLORA_BLAS_CORETYPE=inherit`
/// keeps the environment's `OPENBLAS_CORETYPE`.
public enum ComputeRuntime {
    public struct Status: Sendable {
        public let requestedCore: String?
        public let reason: String
        public let inheritedCoreType: String?
        public let corename: String
        public let config: String
        public let library: String
        /// The loaded core is the one asked for (case-insensitive), or none was asked for.
        public let verified: Bool
        public let ompThreads: Int
    }

    /// Loads OpenBLAS once, with the core chosen for this CPU. Thread-safe.
    public static func prepare() throws(QuantError) -> Status {
        switch loaded {
        case let .success(status): return status
        case let .failure(error): throw error
        }
    }

    private static let loaded: Result<Status, QuantError> = {
        let env = ProcessInfo.processInfo.environment
        let inherited = env["OPENBLAS_CORETYPE"]
        let (core, reason) = chooseCore(cpu: .current, override: env["QLORA_BLAS_CORETYPE"])
        var err = [CChar](repeating: 0, count: 512)
        guard qk_blas_load(core, &err, err.count) == 0 else {
            return .failure(.blasUnavailable(String(decoding: err.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)))
        }
        let name = String(cString: qk_blas_corename())
        let verified = core.map { $0.caseInsensitiveCompare(name) == .orderedSame } ?? true
        return .success(Status(requestedCore: core, reason: reason, inheritedCoreType: inherited, corename: name,
                               config: String(cString: qk_blas_config()), library: String(cString: qk_blas_path()),
                               verified: verified, ompThreads: Int(qk_omp_max_threads())))
    }()

    /// The OpenBLAS core for a CPU: the newest x86 kernel family it fully supports that
    /// Debian's 0.3.21 ships (it has no SapphireRapids core; Cooperlake's AVX-512 kernels
    /// run there). nil leaves OpenBLAS's own detection.
    public static func chooseCore(cpu: CPUInfo, override: String?) -> (core: String?, reason: String) {
        if let override, !override.isEmpty {
            if override == "inherit" {
                return (nil, "QLORA_BLAS_CORETYPE=inherit: OpenBLAS decides (OPENBLAS_CORETYPE from the environment)")
            }
            return (override, "QLORA_BLAS_CORETYPE=\(override)")
        }
        if cpu.avx512 && cpu.avx512BF16 { return ("Cooperlake", "AVX-512 with BF16") }
        if cpu.avx512 { return ("SkylakeX", "AVX-512") }
        if cpu.avx2 && cpu.fma { return ("Haswell", "AVX2 with FMA") }
        return (nil, "no AVX2: OpenBLAS's own detection")
    }

    /// Whether the quantized GEMMs can run in bf16 here (AVX-512 with AVX512_BF16, saved by the OS).
    public static var bf16Available: Bool { qk_bf16_available() != 0 }

    /// Decoding's products can take int8 dot products (`ComputeDType.int8`): AVX512_VNNI with
    /// the AVX-512 level in use. Which weights it covers: `QuantizedMatrix.int8DecodeApplies`.
    public static var int8DecodingAvailable: Bool { qk_int8_available() != 0 }

    /// The micro-kernels the bf16 GEMMs can run: vdpbf16ps (AVX512_BF16), AMX-BF16 tiles, and a
    /// software model of those tiles (their packing and layout on any AVX512_BF16 CPU; slow: tests).
    public enum BF16Kernel: Int32, Sendable, CustomStringConvertible {
        case avx512 = 0, amx = 1, amxModel = 2
        public var description: String { ["avx512_bf16", "amx", "amx-model"][Int(rawValue)] }
    }

    /// The kernel this process's bf16 GEMMs run (nil without AVX512_BF16): AMX where the CPU has
    /// it, Linux grants the tile state and a start-up product agrees with vdpbf16ps;
    /// `QLORA_BF16_KERNEL=avx512` keeps vdpbf16ps. `bf16KernelReason` says what decided it.
    public static var bf16Kernel: BF16Kernel? { BF16Kernel(rawValue: qk_bf16_kernel()) }
    public static var bf16KernelReason: String { String(cString: qk_bf16_kernel_reason()) }
    /// The start-up check that admits AMX, for any kernel: the largest difference from vdpbf16ps
    /// on a fixed product over its accumulation bound (≤ 1: they agree; ∞ where it cannot run).
    public static func bf16KernelCheck(_ kernel: BF16Kernel) -> Double { qk_bf16_kernel_check(kernel.rawValue) }
    /// The kernel the calling thread's bf16 GEMMs run now (`withBF16Kernel`'s, else `bf16Kernel`).
    public static var threadBF16Kernel: BF16Kernel? { BF16Kernel(rawValue: qk_bf16_thread_kernel()) }

    /// Runs `body` with this thread's bf16 GEMMs on `kernel` (tests and benchmarks), then back
    /// to `bf16Kernel`. `.bf16Unavailable` where it cannot run (AMX not granted, no AVX512_BF16).
    public static func withBF16Kernel<R>(_ kernel: BF16Kernel, _ body: () throws -> R) throws -> R {
        guard qk_bf16_set_thread_kernel(kernel.rawValue) == 0 else {
            throw QuantError.bf16Unavailable(cpu: CPUInfo.current.brand + " (kernel \(kernel): \(bf16KernelReason))")
        }
        defer { _ = qk_bf16_set_thread_kernel(-1) }
        return try body()
    }

    /// Threads the GEMMs use when not told: OpenMP's default (OMP_NUM_THREADS, else the cores).
    public static var defaultThreads: Int { Int(qk_omp_max_threads()) }

    /// Sets OpenBLAS's own thread count, for dense products run outside the quantized GEMMs.
    public static func setBLASThreads(_ n: Int) { qk_blas_set_num_threads(Int32(n)) }

    /// C[M, N] = A[M, K] · op(B) + beta · C with OpenBLAS (row-major), for dense work such as
    /// LoRA factors and the benchmarks' baseline. `transposeB`: B is [N, K].
    public static func sgemm(m: Int, n: Int, k: Int, a: UnsafePointer<Float>, lda: Int, b: UnsafePointer<Float>, ldb: Int,
                             transposeB: Bool, beta: Float, c: UnsafeMutablePointer<Float>, ldc: Int) throws(QuantError) {
        try sgemm(transposeA: false, transposeB: transposeB, m: m, n: n, k: k, a: a, lda: lda, b: b, ldb: ldb,
                  beta: beta, c: c, ldc: ldc)
    }

    /// C[m, n] = alpha · op(A) · op(B) + beta · C, row-major, op(X) = Xᵀ when transposed:
    /// A is [m, k] (or [k, m] transposed), B is [k, n] (or [n, k] transposed).
    public static func sgemm(transposeA: Bool, transposeB: Bool, m: Int, n: Int, k: Int, alpha: Float = 1,
                             a: UnsafePointer<Float>, lda: Int, b: UnsafePointer<Float>, ldb: Int,
                             beta: Float, c: UnsafeMutablePointer<Float>, ldc: Int) throws(QuantError) {
        _ = try prepare()
        qk_sgemm(transposeA ? 1 : 0, transposeB ? 1 : 0, Int64(m), Int64(n), Int64(k), alpha, a, Int64(lda), b, Int64(ldb),
                 beta, c, Int64(ldc))
    }

    /// C[m, n] = alpha · op(A) · op(B) + beta · C like `sgemm(transposeA:…)`, split over the
    /// OpenMP threads with single-threaded OpenBLAS inside: the products of a training step
    /// (LoRA factors, a dense LM head) run on the same thread pool as the quantized GEMMs, so
    /// the two pools never fight over the cores. `threads` 0: OpenMP's default.
    public static func parallelSgemm(transposeA: Bool = false, transposeB: Bool, m: Int, n: Int, k: Int, alpha: Float = 1,
                                     a: UnsafePointer<Float>, lda: Int, b: UnsafePointer<Float>, ldb: Int,
                                     beta: Float, c: UnsafeMutablePointer<Float>, ldc: Int, threads: Int = 0) throws(QuantError) {
        _ = try prepare()
        qk_sgemm_omp(transposeA ? 1 : 0, transposeB ? 1 : 0, Int64(m), Int64(n), Int64(k), alpha, a, Int64(lda), b, Int64(ldb),
                     beta, c, Int64(ldc), Int32(threads))
    }

    /// A product with a dense fp32 matrix W [rows, cols] in bf16, as the quantized GEMMs run
    /// with `ComputeDType.bf16`: W and the input rounded to bf16 (nearest even), fp32 sums.
    /// `transposeW` true: out[T, rows] = input[T, cols] · Wᵀ (a forward); false: out[T, cols] =
    /// input[T, rows] · W (its backward). `accumulate` adds into `out`. Throws
    /// `.bf16Unavailable` on CPUs without AVX512_BF16.
    public static func bf16Product(weights w: UnsafePointer<Float>, rows: Int, cols: Int, transposeW: Bool,
                                   input: UnsafePointer<Float>, tokens T: Int, out: UnsafeMutablePointer<Float>,
                                   accumulate: Bool = false, threads: Int = 0) throws(QuantError) {
        _ = try prepare()
        let beta: Float = accumulate ? 1 : 0
        let rc = transposeW
            ? qk_dense_forward_bf16(w, Int64(rows), Int64(cols), input, out, Int64(T), beta, Int32(threads))
            : qk_dense_backward_bf16(w, Int64(rows), Int64(cols), input, out, Int64(T), beta, Int32(threads))
        switch rc {
        case 0: return
        case Int32(QK_GEMM_NO_BF16): throw .bf16Unavailable(cpu: CPUInfo.current.brand)
        default: throw .outOfMemory("buffers for a dense [\(rows), \(cols)] bf16 product")
        }
    }
}
