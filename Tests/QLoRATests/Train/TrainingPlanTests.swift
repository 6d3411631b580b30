import QLoRA
import XCTest

/// The pilot → 8 chunks → tail split of a run's updates.
final class TrainingPlanTests: XCTestCase {
    /// 15,000 updates → 750 + 8 × 1,781 + 2.
    func testFifteenThousand() {
        let plan = TrainingPlan(totalUpdates: 15000)
        XCTAssertEqual([plan.pilotUpdates, plan.chunkUpdates, plan.tailUpdates], [750, 1781, 2])
        XCTAssertEqual(plan.segments.count, 10)
        XCTAssertEqual(plan.boundaries, [750] + (1...8).map { 750 + 1781 * $0 } + [15000])
        XCTAssertEqual(plan.segments[1], .init(phase: .chunk(1), first: 751, last: 2531))
        XCTAssertEqual(plan.segment(ofUpdate: 14999)?.phase, .tail)
        XCTAssertEqual(plan.segment(ofUpdate: 750)?.phase, .pilot)
        XCTAssertEqual(plan.segment(ofUpdate: 751)?.phase, .chunk(1))
        XCTAssertNil(plan.segment(ofUpdate: 15001))
        XCTAssertTrue(plan.isBoundary(afterUpdate: 2531))
        XCTAssertFalse(plan.isBoundary(afterUpdate: 2530))
    }

    func testSegmentsCoverEveryUpdateOnce() {
        for n in [0, 1, 7, 8, 9, 19, 20, 21, 100, 1003] {
            let plan = TrainingPlan(totalUpdates: n)
            XCTAssertEqual(plan.pilotUpdates + plan.chunkCount * plan.chunkUpdates + plan.tailUpdates, n)
            if plan.chunkUpdates > 0 { XCTAssertLessThan(plan.tailUpdates, 8, "N=\(n)") }
            var next = 1
            for s in plan.segments {
                XCTAssertEqual(s.first, next, "N=\(n)")
                XCTAssertGreaterThan(s.count, 0)
                next = s.last + 1
            }
            XCTAssertEqual(next, n + 1, "N=\(n)")
            XCTAssertEqual(plan.boundaries.last, n == 0 ? nil : n)
        }
    }

    /// Fewer than 8 updates: no pilot (int(N·0.05) = 0), empty chunks, everything in the tail.
    func testSmallRuns() {
        let five = TrainingPlan(totalUpdates: 5)
        XCTAssertEqual([five.pilotUpdates, five.chunkUpdates, five.tailUpdates], [0, 0, 5])
        XCTAssertEqual(five.segments, [.init(phase: .tail, first: 1, last: 5)])
        let ten = TrainingPlan(totalUpdates: 10)
        XCTAssertEqual([ten.pilotUpdates, ten.chunkUpdates, ten.tailUpdates], [0, 1, 2])
        XCTAssertEqual(ten.boundaries, Array(1...8) + [10])
        let twenty = TrainingPlan(totalUpdates: 20)
        XCTAssertEqual([twenty.pilotUpdates, twenty.chunkUpdates, twenty.tailUpdates], [1, 2, 3])
        XCTAssertEqual(TrainingPlan(totalUpdates: 0).segments, [])
    }
}
