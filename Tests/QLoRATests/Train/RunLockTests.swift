import Foundation
@testable import QLoRA
import XCTest

/// One training process per run directory: a second is refused naming the first, and a holder
/// killed with SIGKILL leaves no stale lock.
final class RunLockTests: XCTestCase {
    func testSecondHolderIsRefusedNamingTheFirstAndReleaseFreesIt() throws {
        let dir = TempDir()
        var first: RunLock? = try RunLock.acquire(run: dir.path + "/run")
        XCTAssertThrowsError(try RunLock.acquire(run: dir.path + "/run")) { e in
            guard case let .held(directory, holder)? = e as? RunLockError else { return XCTFail("\(e)") }
            XCTAssertEqual(directory, dir.path + "/run")
            XCTAssertTrue(holder.hasPrefix("pid \(getpid()) on "), holder)
            XCTAssertTrue("\(e)".contains("STOP"), "\(e)")
        }
        XCTAssertThrowsError(try RunLock.check(run: dir.path + "/run"))
        withExtendedLifetime(first) {}
        first = nil
        XCTAssertNoThrow(try RunLock.check(run: dir.path + "/run"))
        XCTAssertNoThrow(try RunLock.acquire(run: dir.path + "/run"))
    }

    func testHolderKilledWithSIGKILLLeavesNoStaleLock() throws {
        guard FileManager.default.isExecutableFile(atPath: "/usr/bin/flock") else { throw XCTSkip("needs util-linux's flock") }
        let dir = TempDir()
        let run = dir.path + "/run"
        try FileManager.default.createDirectory(atPath: run, withIntermediateDirectories: true)
        let holder = Process()
        holder.executableURL = URL(fileURLWithPath: "/usr/bin/flock")
        holder.arguments = ["-o", run + "/" + RunLock.fileName, "sleep", "20"]   // -o: flock itself holds it, not sleep
        try holder.run()
        // Until the child holds it.
        let deadline = Date().addingTimeInterval(10)
        while (try? RunLock.check(run: run)) != nil, Date() < deadline { usleep(20_000) }
        XCTAssertThrowsError(try RunLock.acquire(run: run), "the child holds the lock")
        kill(holder.processIdentifier, SIGKILL)
        // Not waitUntilExit: Foundation's Process waits for the orphaned `sleep` too (it keeps
        // Process's notification pipe); the lock goes with flock itself.
        var acquired: RunLock? = nil
        let released = Date().addingTimeInterval(5)
        while acquired == nil, Date() < released {
            acquired = try? RunLock.acquire(run: run)
            if acquired == nil { usleep(20_000) }
        }
        XCTAssertNotNil(acquired, "the kernel released it with the process")
    }
}
