import Foundation

/// P preference pairs as 2P sequences, both sides of a pair always in the same batch.
/// Legend: P pairs, B = 2P rows, T tokens a row.
public struct PreferenceBatch: Sendable, Equatable {
    /// [B, T]: rows 0..<P the pairs' chosen sides, rows P..<2P their rejected sides in the same
    /// order, padded to the longest with the pad id (labels −100); `rows.lengths` [B] locates each
    /// row's last real token, `rows.labels` is −100 on prompts and padding.
    public let rows: Batch
    /// [P]: the pairs' indices in the pairs batched.
    public let indices: [Int]
    /// [P]: each pair's margin, 0 where its row has none (TRL subtracts none then).
    public let margins: [Float]
    /// The epoch the pairs were drawn in.
    public let epoch: Int
    /// [2P]: the reference log-probabilities of the rows (chosen sides, then rejected), when
    /// every pair has them.
    public let reference: [Double]?

    /// P.
    public var pairCount: Int { indices.count }

    /// pairs[indices]: their chosen sides, then their rejected sides, padded with `padID`.
    public init(pairs: [PreferencePair], indices: [Int], padID: Int, epoch: Int) {
        precondition(!indices.isEmpty, "an empty batch")
        let sides = PreferencePair.Side.allCases.flatMap { side in indices.map { pairs[$0].example(side) } }
        rows = Batch(examples: sides, indices: Array(sides.indices), padID: padID, epoch: epoch)
        self.indices = indices
        margins = indices.map { Float(pairs[$0].margin ?? 0) }
        self.epoch = epoch
        let refs = indices.compactMap { pairs[$0].reference }
        reference = refs.count == indices.count ? refs.map(\.chosen) + refs.map(\.rejected) : nil
    }
}

extension TokenBatch {
    /// The rows of a preference batch as the trainer runs them, with its pairs' margins and
    /// reference log-probabilities.
    public init(_ b: PreferenceBatch) {
        self.init(inputIds: b.rows.inputIds, labels: b.rows.labels, sequences: b.rows.batchSize, length: b.rows.sequenceLength,
                  lengths: b.rows.lengths, pairs: PairRows(count: b.pairCount, margins: b.margins, reference: b.reference))
    }
}

/// Endless batches of P pairs, epoch after epoch, in `BatchIterator`'s seeded orders (the same
/// order for the same seed and pair count) and with its `State` to save and resume.
public struct PreferenceBatchIterator: Sendable {
    public let pairs: [PreferencePair]
    public let pairsPerBatch: Int
    public let padID: Int
    private var cursor: EpochCursor
    public var state: BatchIterator.State { cursor.state }

    /// - Parameter state: a saved state to resume from; nil starts epoch 0 with `seed`.
    public init(pairs: [PreferencePair], pairsPerBatch: Int, padID: Int, seed: UInt64, state: BatchIterator.State? = nil) throws(SFTDataError) {
        precondition(pairsPerBatch > 0, "pairs per batch \(pairsPerBatch)")
        cursor = try EpochCursor(count: pairs.count, seed: seed, state: state, what: "pairs")
        self.pairs = pairs
        self.pairsPerBatch = pairsPerBatch
        self.padID = padID
    }

    /// Batches in one epoch: ⌈pairs / P⌉.
    public var batchesPerEpoch: Int { (pairs.count + pairsPerBatch - 1) / pairsPerBatch }

    /// The next P pairs of this epoch's order (fewer at its end), moving to the next epoch
    /// when this one is done.
    public mutating func next() -> PreferenceBatch {
        let (indices, epoch) = cursor.next(pairsPerBatch)
        return PreferenceBatch(pairs: pairs, indices: indices, padID: padID, epoch: epoch)
    }
}

/// Splitting and ordering, as `SFTDataSet`'s: each returns a new data set.
extension PreferenceDataSet {
    /// Draws round(count · valFraction) pairs (at least 1, leaving at least 1) for validation
    /// with the seeded Fisher–Yates shuffle `SFTDataSet.split` uses; training pairs keep file
    /// order, validation pairs are sorted longest first.
    public func split(valFraction: Double, seed: UInt64) throws(SFTDataError) -> (train: PreferenceDataSet, validation: PreferenceDataSet) {
        let (train, val) = try pairs.validationSplit(fraction: valFraction, seed: seed, source: source)
        return (with(train), with(val).sortedLongestFirst())
    }

    /// Longest first by the longer side, ties in the current order: validation batches pad
    /// little, and the first one shows the peak memory.
    public func sortedLongestFirst() -> PreferenceDataSet {
        with(pairs.sortedLongestFirst(by: \.longerCount))
    }

    /// The pairs in a seeded Fisher–Yates order.
    public func shuffled(seed: UInt64) -> PreferenceDataSet { with(pairs.shuffled(seed: seed)) }

    /// All pairs in the current order, `pairsPerBatch` at a time (the last batch may hold
    /// fewer): for validation.
    public func batches(pairsPerBatch: Int) -> [PreferenceBatch] {
        precondition(pairsPerBatch > 0, "pairs per batch \(pairsPerBatch)")
        return stride(from: 0, to: pairs.count, by: pairsPerBatch).map { start in
            PreferenceBatch(pairs: pairs, indices: Array(start..<min(pairs.count, start + pairsPerBatch)), padID: padID, epoch: 0)
        }
    }

    func with(_ pairs: [PreferencePair]) -> PreferenceDataSet {
        PreferenceDataSet(pairs: pairs, source: source, skipped: skipped, skippedReasons: skippedReasons, tooLong: tooLong,
                          tooLongRows: tooLongRows, padID: padID)
    }
}
