import Foundation

/// B examples padded to the longest of them, T. Legend: B rows, T tokens a row.
public struct Batch: Sendable, Equatable {
    /// [B, T] row-major; padding is `padID`.
    public let inputIds: [Int32]
    /// [B, T] row-major, aligned with inputIds; −100 where not trained and in padding.
    public let labels: [Int32]
    /// B.
    public let batchSize: Int
    /// T: the longest row.
    public let sequenceLength: Int
    /// [B]: each row's real length; positions past it are padding.
    public let lengths: [Int]
    /// Targets the loss sees, summed over rows (labels[b, 1...] that are not −100): the
    /// divisor of a mean loss.
    public let trainedTokens: Int
    /// [B]: the rows' indices in the examples batched.
    public let indices: [Int]
    /// The epoch the rows were drawn in.
    public let epoch: Int

    /// examples[indices] padded to the longest with `padID` (labels −100).
    public init(examples: [SFTExample], indices: [Int], padID: Int, epoch: Int) {
        precondition(!indices.isEmpty, "an empty batch")
        let rows = indices.map { examples[$0] }
        let T = rows.map(\.count).max()!
        var ids = [Int32](repeating: Int32(padID), count: rows.count * T)
        var labels = [Int32](repeating: Int32(SFTExample.ignoreIndex), count: rows.count * T)
        for (b, row) in rows.enumerated() {
            for t in 0..<row.count {
                ids[b * T + t] = Int32(row.inputIds[t])
                labels[b * T + t] = Int32(row.labels[t])
            }
        }
        inputIds = ids
        self.labels = labels
        batchSize = rows.count
        sequenceLength = T
        lengths = rows.map(\.count)
        trainedTokens = rows.reduce(0) { $0 + $1.trainedTokens }
        self.indices = indices
        self.epoch = epoch
    }
}

/// Endless batches over the examples, epoch after epoch, each epoch in its own seeded
/// Fisher–Yates order. An epoch's last batch holds what is left (fewer than B when B does
/// not divide the count), as PyTorch's DataLoader with drop_last false.
///
/// `state` (epoch, position in that epoch's order, seed) is all there is to it: save it with
/// a checkpoint, and `BatchIterator(..., state: saved)` on the same examples gives the same
/// batches from there on.
public struct BatchIterator: Sendable {
    public struct State: Codable, Sendable, Equatable {
        public var epoch: Int
        /// Examples of this epoch's order already batched.
        public var position: Int
        public var seed: UInt64
        /// The number of examples the state belongs to, checked on resume.
        public var examples: Int

        public init(epoch: Int = 0, position: Int = 0, seed: UInt64, examples: Int) {
            self.epoch = epoch
            self.position = position
            self.seed = seed
            self.examples = examples
        }
    }

    public let examples: [SFTExample]
    public let batchSize: Int
    public let padID: Int
    private var cursor: EpochCursor
    public var state: State { cursor.state }

    /// - Parameters:
    ///   - state: a saved state to resume from; nil starts epoch 0 with `seed` (a saved state
    ///     carries its own seed, which wins).
    ///   - groupByLength: batch examples of similar length (`EpochCursor.grouped`), as the
    ///     Hugging Face Trainer's `group_by_length`: less padding, the same examples per epoch.
    public init(examples: [SFTExample], batchSize: Int, padID: Int, seed: UInt64, state: State? = nil,
                groupByLength: Bool = false) throws(SFTDataError) {
        precondition(batchSize > 0, "batch size \(batchSize)")
        cursor = try EpochCursor(count: examples.count, seed: seed, state: state, what: "examples",
                                 grouping: groupByLength ? (examples.map(\.count), batchSize) : nil)
        self.examples = examples
        self.batchSize = batchSize
        self.padID = padID
    }

    /// Batches in one epoch: ⌈count / B⌉.
    public var batchesPerEpoch: Int { (examples.count + batchSize - 1) / batchSize }

    /// The next B examples of this epoch's order (fewer at its end), moving to the next epoch
    /// when this one is done.
    public mutating func next() -> Batch {
        let (indices, epoch) = cursor.next(batchSize)
        return Batch(examples: examples, indices: indices, padID: padID, epoch: epoch)
    }

    /// Epoch e's order: 0..<count shuffled by a SplitMix64 seeded with a hash of (seed, e), so
    /// that the epochs' streams are unrelated (seeds seed + e would give overlapping streams).
    public static func order(count: Int, seed: UInt64, epoch: Int) -> [Int] {
        var mix = SplitMix64(seed: seed ^ UInt64(epoch))
        var rng = SplitMix64(seed: mix.next())
        var order = Array(0..<count)
        order.fisherYatesShuffle(using: &rng)
        return order
    }
}

/// Where an endless, epoch-by-epoch seeded walk over `count` items stands: what both the SFT
/// and the preference batch iterators draw their indices from, and what they save.
struct EpochCursor: Sendable {
    private(set) var state: BatchIterator.State
    /// This epoch's order: indices into the items.
    private var order: [Int]
    /// Each item's length and the batch size, when batches group items of similar length.
    private let grouping: (lengths: [Int], batchSize: Int)?

    /// Megabatches of `megabatchFactor` batches: the span within which lengths are sorted.
    static let megabatchFactor = 50

    /// The seeded order cut into megabatches of 50 batches, each sorted longest first (ties in
    /// the seeded order), the megabatch holding the longest item moved to the front — the
    /// Hugging Face Trainer's LengthGroupedSampler, so that a batch's rows are of similar
    /// length (less padding) while which items share a megabatch stays random, and a run
    /// too long for memory fails at its first update.
    static func grouped(_ order: [Int], lengths: [Int], batchSize: Int) -> [Int] {
        let span = megabatchFactor * batchSize
        var megabatches = stride(from: 0, to: order.count, by: span).map { start in
            order[start..<min(order.count, start + span)].enumerated()
                .sorted { lengths[$0.element] != lengths[$1.element] ? lengths[$0.element] > lengths[$1.element] : $0.offset < $1.offset }
                .map(\.element)
        }
        if let longest = megabatches.indices.max(by: { lengths[megabatches[$0][0]] < lengths[megabatches[$1][0]] }), longest > 0 {
            megabatches.swapAt(0, longest)
        }
        return megabatches.flatMap { $0 }
    }

    private func arrange(_ order: [Int]) -> [Int] {
        guard let grouping else { return order }
        return Self.grouped(order, lengths: grouping.lengths, batchSize: grouping.batchSize)
    }

    /// Checks a saved state against `count` items (`what` names them in errors).
    init(count: Int, seed: UInt64, state: BatchIterator.State?, what: String,
         grouping: (lengths: [Int], batchSize: Int)? = nil) throws(SFTDataError) {
        guard count > 0 else { throw .emptyDataSet(path: "(batches)", skipped: 0, firstReasons: []) }
        let state = state ?? BatchIterator.State(seed: seed, examples: count)
        guard state.examples == count else {
            throw .stateMismatch(detail: "the state is for \(state.examples) \(what), the data set has \(count)")
        }
        guard state.epoch >= 0, (0...count).contains(state.position) else {
            throw .stateMismatch(detail: "epoch \(state.epoch), position \(state.position) is outside \(count) \(what)")
        }
        self.state = state
        self.grouping = grouping
        order = []
        order = arrange(BatchIterator.order(count: count, seed: state.seed, epoch: state.epoch))
    }

    /// The next n indices of this epoch's order (fewer at its end) and their epoch, moving to
    /// the next epoch when this one is done.
    mutating func next(_ n: Int) -> (indices: [Int], epoch: Int) {
        let count = state.examples
        if state.position == count {
            state.epoch += 1
            state.position = 0
            order = arrange(BatchIterator.order(count: count, seed: state.seed, epoch: state.epoch))
        }
        let end = min(count, state.position + n)
        defer { state.position = end }
        return (Array(order[state.position..<end]), state.epoch)
    }
}

extension Array {
    /// Fisher–Yates (Durstenfeld): for i from count − 1 down to 1, swap i with j uniform in
    /// 0...i, j = ⌊next() · (i + 1) / 2⁶⁴⌋ (Lemire's multiply, bias below (i + 1) / 2⁶⁴).
    /// The same generator state gives the same order on every platform and Swift version,
    /// which `shuffle(using:)` does not promise.
    mutating func fisherYatesShuffle(using rng: inout SplitMix64) {
        guard count > 1 else { return }
        for i in stride(from: count - 1, through: 1, by: -1) {
            let j = Int(rng.next().multipliedFullWidth(by: UInt64(i + 1)).high)
            swapAt(i, j)
        }
    }
}
