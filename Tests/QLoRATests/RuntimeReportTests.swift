import QLoRA
import Quant
import XCTest

final class RuntimeReportTests: XCTestCase {
    func testReportNamesTheCoreAndSIMDInUse() throws {
        let report = try RuntimeReport.current()
        XCTAssertEqual(report.simd, SIMDLevel.current.description)
        XCTAssertTrue(report.lines.contains { $0.hasPrefix("bf16 gemm: \(report.bf16GEMM ? "available" : "unavailable")") })
        XCTAssertEqual(report.blasCore, try ComputeRuntime.prepare().corename)
        XCTAssertTrue(report.lines.contains { $0.hasPrefix("blas core: \(report.blasCore)") })
        XCTAssertEqual(report.blasCoreVerified, !report.lines.contains { $0.hasPrefix("warning:") })
        let decoded = try JSONDecoder().decode(RuntimeReport.self, from: JSONEncoder().encode(report))
        XCTAssertEqual(decoded.blasCore, report.blasCore)
    }
}
