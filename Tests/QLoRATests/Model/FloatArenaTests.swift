@testable import QLoRA
import XCTest

/// The step arena: pieces taken after a mark are taken back by rewinding to it, and what is
/// taken next reuses their memory; a reset sizes the one chunk it keeps to the most the cycle
/// held at once, not to everything it handed out.
final class FloatArenaTests: XCTestCase {
    func testRewindHandsTheSameMemoryOutAgain() {
        let arena = FloatArena()
        let before = arena.take(100)
        let mark = arena.mark()
        let head = arena.take(1000)
        head.base.update(repeating: 7, count: 1000)
        arena.rewind(to: mark)
        let next = arena.take(500)
        XCTAssertEqual(next.base, head.base)
        XCTAssertNotEqual(next.base, before.base)
        XCTAssertEqual(before.base + 112, next.base, "pieces are 16-float aligned, one after the other")
    }

    func testResetKeepsOneChunkOfThePeakNotTheSum() {
        let arena = FloatArena(), M = 1 << 20
        _ = arena.take(M)            // fills the first 1 Mi-float chunk
        let mark = arena.mark()
        _ = arena.take(3 * M)        // a second chunk of 3 Mi
        arena.rewind(to: mark)
        _ = arena.take(2 * M)        // fits in the second chunk: held at once at most 1 + 3 Mi
        XCTAssertEqual(arena.capacity, 4 * M)
        arena.reset()
        XCTAssertEqual(arena.capacity, 4 * M, "one chunk of the peak (4 Mi), not of all taken (6 Mi)")
        // The same cycle again fits in that chunk: nothing new is mapped.
        _ = arena.take(M)
        let again = arena.mark()
        _ = arena.take(3 * M)
        arena.rewind(to: again)
        _ = arena.take(2 * M)
        arena.reset()
        XCTAssertEqual(arena.capacity, 4 * M)
    }
}
