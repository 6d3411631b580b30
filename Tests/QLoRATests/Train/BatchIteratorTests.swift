import Foundation
@testable import QLoRA
import XCTest

/// Ordering and batching: packing, seeded shuffles and splits, padding, epochs, and resuming
/// the data order from a saved state. Examples are made by hand: ids 1000 + i·10 + t, every
/// third label masked.
final class BatchIteratorTests: XCTestCase {
    let M = SFTExample.ignoreIndex

    func examples(_ lengths: [Int]) -> [SFTExample] {
        lengths.enumerated().map { i, n in
            let ids = (0..<n).map { 1000 + i * 10 + $0 }
            return SFTExample(inputIds: ids, labels: ids.enumerated().map { $0.offset % 3 == 0 ? M : $0.element }, line: i + 1)
        }
    }

    func dataSet(_ lengths: [Int]) -> SFTDataSet { SFTDataSet(examples: examples(lengths), source: "hand", padID: 2) }

    func testPackingConcatenatesIntoFullRows() {
        let set = dataSet([5, 7, 3, 9, 4])  // 28 tokens
        let packed = set.packed(length: 8)
        XCTAssertEqual(packed.examples.map(\.count), [8, 8, 8, 4])
        XCTAssertEqual(packed.examples.flatMap(\.inputIds), set.examples.flatMap(\.inputIds))
        XCTAssertEqual(packed.examples.flatMap(\.labels), set.examples.flatMap(\.labels), "labels kept")
        XCTAssertEqual(packed.examples[1].inputIds.first, 1000 + 1 * 10 + 3, "row 1 starts inside example 1")
        // A tail with nothing to train is dropped: here the 1-token remainder.
        XCTAssertEqual(dataSet([5, 4]).packed(length: 8).examples.map(\.count), [8])
    }

    func testShuffleIsASeededPermutation() {
        let set = dataSet(Array(1...50))
        let a = set.shuffled(seed: 7), b = set.shuffled(seed: 7), c = set.shuffled(seed: 8)
        XCTAssertEqual(a.examples, b.examples)
        XCTAssertNotEqual(a.examples, c.examples)
        XCTAssertNotEqual(a.examples, set.examples)
        XCTAssertEqual(a.examples.map(\.line).sorted(), Array(1...50))
        for epoch in 0..<3 {
            let order = BatchIterator.order(count: 1000, seed: 42, epoch: epoch)
            XCTAssertEqual(order.sorted(), Array(0..<1000))
            XCTAssertEqual(order, BatchIterator.order(count: 1000, seed: 42, epoch: epoch))
        }
        XCTAssertNotEqual(BatchIterator.order(count: 1000, seed: 42, epoch: 0), BatchIterator.order(count: 1000, seed: 42, epoch: 1))
        // Fisher–Yates with SplitMix64(seed 42), j = high 64 bits of next()·(i + 1), worked by hand
        // for 4 elements: pins the algorithm so a checkpoint's data order survives releases.
        var rng = SplitMix64(seed: 42)
        var expected = [0, 1, 2, 3]
        for i in stride(from: 3, through: 1, by: -1) { expected.swapAt(i, Int(rng.next().multipliedFullWidth(by: UInt64(i + 1)).high)) }
        XCTAssertEqual(dataSet([1, 2, 3, 4]).shuffled(seed: 42).examples.map(\.line), expected.map { $0 + 1 })
    }

    func testSplitIsSeededAndValidationIsLongestFirst() throws {
        let set = dataSet((0..<40).map { 2 + ($0 * 7) % 11 })
        let (train, val) = try set.split(valFraction: 0.1, seed: 3)
        XCTAssertEqual([train.examples.count, val.examples.count], [36, 4])
        XCTAssertEqual((train.examples + val.examples).map(\.line).sorted(), Array(1...40))
        XCTAssertEqual(train.examples.map(\.line), train.examples.map(\.line).sorted(), "training keeps file order")
        XCTAssertEqual(val.examples.map(\.count), val.examples.map(\.count).sorted(by: >))
        let again = try set.split(valFraction: 0.1, seed: 3), other = try set.split(valFraction: 0.1, seed: 4)
        XCTAssertEqual(again.validation.examples, val.examples)
        XCTAssertNotEqual(Set(other.validation.examples.map(\.line)), Set(val.examples.map(\.line)))
        XCTAssertEqual(try dataSet([3, 4]).split(valFraction: 0.01, seed: 0).validation.examples.count, 1)
        XCTAssertThrowsError(try dataSet([3]).split(valFraction: 0.5, seed: 0)) { e in
            XCTAssertEqual(e as? SFTDataError, .tooFewToSplit(path: "hand", examples: 1))
        }
        XCTAssertEqual(dataSet([2, 5, 3, 5]).sortedLongestFirst().examples.map(\.line), [2, 4, 3, 1], "ties keep their order")
    }

    func testBatchPadsWithPadIDAndMaskedLabels() throws {
        let set = dataSet([3, 5, 2])
        let b = try XCTUnwrap(set.batches(size: 3).first)
        XCTAssertEqual([b.batchSize, b.sequenceLength], [3, 5])
        XCTAssertEqual(b.lengths, [3, 5, 2])
        XCTAssertEqual(b.inputIds, [1000, 1001, 1002, 2, 2,
                                    1010, 1011, 1012, 1013, 1014,
                                    1020, 1021, 2, 2, 2].map(Int32.init))
        let m = Int32(M)
        XCTAssertEqual(b.labels, [m, 1001, 1002, m, m,
                                  m, 1011, 1012, m, 1014,
                                  m, 1021, m, m, m])
        XCTAssertEqual(b.trainedTokens, 2 + 3 + 1)
        XCTAssertEqual(set.batches(size: 2).map(\.batchSize), [2, 1])
    }

    func testEachEpochBatchesEveryExampleOnce() throws {
        let set = dataSet(Array(repeating: 4, count: 10))
        var it = try BatchIterator(examples: set.examples, batchSize: 4, padID: set.padID, seed: 9)
        XCTAssertEqual(it.batchesPerEpoch, 3)
        for epoch in 0..<3 {
            let batches = (0..<3).map { _ in it.next() }
            XCTAssertEqual(batches.map(\.batchSize), [4, 4, 2])
            XCTAssertEqual(batches.map(\.epoch), [epoch, epoch, epoch])
            XCTAssertEqual(batches.flatMap(\.indices).sorted(), Array(0..<10))
            XCTAssertEqual(batches.flatMap(\.indices), BatchIterator.order(count: 10, seed: 9, epoch: epoch))
        }
    }

    func testResumeFromASavedStateGivesTheSameBatches() throws {
        let set = dataSet((0..<13).map { 2 + $0 % 5 })
        var it = try BatchIterator(examples: set.examples, batchSize: 3, padID: set.padID, seed: 2024)
        for _ in 0..<6 { _ = it.next() }  // into epoch 1
        let saved = try JSONEncoder().encode(it.state)
        let state = try JSONDecoder().decode(BatchIterator.State.self, from: saved)
        XCTAssertEqual(state, BatchIterator.State(epoch: 1, position: 3, seed: 2024, examples: 13))
        var resumed = try BatchIterator(examples: set.examples, batchSize: 3, padID: set.padID, seed: 0, state: state)
        for _ in 0..<12 { XCTAssertEqual(resumed.next(), it.next()) }

        XCTAssertThrowsError(try BatchIterator(examples: Array(set.examples.prefix(12)), batchSize: 3, padID: 2, seed: 0, state: state)) { e in
            guard case .stateMismatch = e as? SFTDataError else { return XCTFail("\(e)") }
        }
        XCTAssertThrowsError(try BatchIterator(examples: [], batchSize: 3, padID: 2, seed: 0))
    }

    /// group_by_length: each epoch still batches every example once; the seeded order is cut
    /// into spans of 50 batches sorted longest first, the span with the longest example first;
    /// padding falls; a resumed iterator gives the same batches.
    func testGroupByLengthSortsSpansOfTheSeededOrderAndResumes() throws {
        var rng = SplitMix64(seed: 5)
        let lengths = (0..<230).map { _ in 2 + Int(rng.next() % 120) }
        let set = dataSet(lengths)
        let B = 2, span = EpochCursor.megabatchFactor * B   // 100: spans of 100, 100 and 30
        var plain = try BatchIterator(examples: set.examples, batchSize: B, padID: set.padID, seed: 11)
        var grouped = try BatchIterator(examples: set.examples, batchSize: B, padID: set.padID, seed: 11, groupByLength: true)
        var padPlain = 0, padGrouped = 0
        for epoch in 0..<2 {
            let a = (0..<115).map { _ in plain.next() }, g = (0..<115).map { _ in grouped.next() }
            XCTAssertEqual(g.map(\.epoch), Array(repeating: epoch, count: 115))
            let order = BatchIterator.order(count: 230, seed: 11, epoch: epoch), got = g.flatMap(\.indices)
            XCTAssertEqual(got.sorted(), Array(0..<230))
            // the spans hold the seeded order's items, each sorted longest first (stable), the longest span first
            var spans = stride(from: 0, to: 230, by: span).map { Array(order[$0..<min(230, $0 + span)]) }
            let spanMax: [Int] = spans.map { items in items.map { lengths[$0] }.max()! }
            let longest = spanMax.indices.max { spanMax[$0] < spanMax[$1] }!
            spans.swapAt(0, longest)
            var at = 0
            for spanItems in spans {
                let part = Array(got[at..<(at + spanItems.count)])
                XCTAssertEqual(Set(part), Set(spanItems), "epoch \(epoch)")
                for (x, y) in zip(part, part.dropFirst()) {
                    XCTAssertTrue(lengths[x] > lengths[y] || (lengths[x] == lengths[y] && spanItems.firstIndex(of: x)! < spanItems.firstIndex(of: y)!))
                }
                at += spanItems.count
            }
            XCTAssertEqual(lengths[got[0]], lengths.max())
            padPlain += a.reduce(0) { $0 + $1.batchSize * $1.sequenceLength - $1.lengths.reduce(0, +) }
            padGrouped += g.reduce(0) { $0 + $1.batchSize * $1.sequenceLength - $1.lengths.reduce(0, +) }
        }
        XCTAssertLessThan(padGrouped * 5, padPlain, "padding \(padGrouped) grouped, \(padPlain) not")
        var resumed = try BatchIterator(examples: set.examples, batchSize: B, padID: set.padID, seed: 0, state: grouped.state, groupByLength: true)
        for _ in 0..<130 { XCTAssertEqual(resumed.next(), grouped.next()) }
    }
}
