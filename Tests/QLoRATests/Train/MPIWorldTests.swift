import Foundation
import QLoRA
import QuantKernels
import XCTest

/// MPI is loaded only under a launcher; the collective's own check runs under mpirun in CI
/// (`mpirun -np 2 … qlora info`, two ranks each verifying an all-reduce).
final class MPIWorldTests: XCTestCase {
    func testNothingIsLoadedWithoutALauncher() throws {
        try XCTSkipIf(MPIWorld.launchedSize != nil, "this test process runs under mpirun")
        XCTAssertNil(try MPIWorld.start())
        // before qk_mpi_init every call refuses instead of reaching an unloaded library
        var x: [Float] = [1, 2]
        XCTAssertEqual(qk_mpi_allreduce_sum_f32(&x, 2), -1)
        XCTAssertEqual(x, [1, 2])
        XCTAssertEqual(qk_mpi_barrier(), -1)
        XCTAssertEqual(qk_mpi_size(), 1)
        XCTAssertEqual(String(cString: qk_mpi_library()), "")
    }
}
