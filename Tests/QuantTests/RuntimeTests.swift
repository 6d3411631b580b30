import Quant
import XCTest

final class RuntimeTests: XCTestCase {
    func cpu(avx2: Bool = true, avx512: Bool = false, bf16: Bool = false, amx: Bool = false) -> CPUInfo {
        CPUInfo(vendor: "x", brand: "x", family: 0, model: 0, avx2: avx2, fma: avx2, avx512: avx512, avx512BF16: bf16, amx: amx)
    }

    /// The core chosen from CPUID, never from the CPU's name: Debian's 0.3.21 has no
    /// SapphireRapids core, so AMX machines get Cooperlake's AVX-512 kernels.
    func testCoreChoice() {
        XCTAssertEqual(ComputeRuntime.chooseCore(cpu: cpu(avx512: true, bf16: true, amx: true), override: nil).core, "Cooperlake")
        XCTAssertEqual(ComputeRuntime.chooseCore(cpu: cpu(avx512: true, bf16: true), override: nil).core, "Cooperlake")
        XCTAssertEqual(ComputeRuntime.chooseCore(cpu: cpu(avx512: true), override: nil).core, "SkylakeX")
        XCTAssertEqual(ComputeRuntime.chooseCore(cpu: cpu(), override: nil).core, "Haswell")
        XCTAssertNil(ComputeRuntime.chooseCore(cpu: cpu(avx2: false), override: nil).core)
        XCTAssertEqual(ComputeRuntime.chooseCore(cpu: cpu(avx512: true), override: "Zen").core, "Zen")
        XCTAssertNil(ComputeRuntime.chooseCore(cpu: cpu(avx512: true), override: "inherit").core)
    }

    /// On this machine: OpenBLAS loads, runs the core qlora asked for, and multiplies correctly.
    func testBLASLoadsTheChosenCoreAndIsCorrect() throws {
        let status = try ComputeRuntime.prepare()
        XCTAssertTrue(status.verified, "asked for \(status.requestedCore ?? "-"), OpenBLAS runs \(status.corename)")
        XCTAssertFalse(status.corename.isEmpty)
        let a: [Float] = [1, 2, 3, 4, 5, 6], b: [Float] = [1, 0, -1, 2, 0.5, 1]  // A[2,3], B[2,3] used as Bᵀ
        var c = [Float](repeating: 9, count: 4)
        try ComputeRuntime.sgemm(m: 2, n: 2, k: 3, a: a, lda: 3, b: b, ldb: 3, transposeB: true, beta: 0, c: &c, ldc: 2)
        XCTAssertEqual(c, [-2, 6, -2, 16.5])
    }

    func testSIMDLevelsFollowTheCPU() {
        let cpu = CPUInfo.current
        XCTAssertEqual(SIMDLevel.best == .avx512, cpu.avx512)
        XCTAssertTrue(SIMDLevel.available.contains(.scalar))
        if SIMDLevel.best == .avx2 { XCTAssertTrue(cpu.avx2) }
        XCTAssertEqual(ComputeRuntime.bf16Available, cpu.avx512 && cpu.avx512BF16)
    }
}
