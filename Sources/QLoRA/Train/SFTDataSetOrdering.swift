import Foundation

/// Splitting, packing and reordering a data set; each returns a new one.
extension SFTDataSet {
    /// Draws round(count · valFraction) examples (at least 1, leaving at least 1) for
    /// validation with a seeded Fisher–Yates shuffle; the training examples keep file order,
    /// the validation examples are sorted longest first (`sortedLongestFirst`).
    public func split(valFraction: Double, seed: UInt64) throws(SFTDataError) -> (train: SFTDataSet, validation: SFTDataSet) {
        let (train, val) = try examples.validationSplit(fraction: valFraction, seed: seed, source: source)
        return (with(train), with(val).sortedLongestFirst())
    }

    /// Longest first, ties in the current order: validation batches then pad little, and the
    /// first one shows the peak memory.
    public func sortedLongestFirst() -> SFTDataSet {
        with(examples.sortedLongestFirst(by: \.count))
    }

    /// The examples in a seeded Fisher–Yates order.
    public func shuffled(seed: UInt64) -> SFTDataSet { with(examples.shuffled(seed: seed)) }

    /// TRL's packing without position reset: the examples' ids and labels concatenated in the
    /// current order and cut into rows of `length` tokens, all full but the last. A row keeps
    /// the labels its tokens had, so attention crosses example boundaries (each example starts
    /// after the previous one's EOS). A row with nothing to train (a short or masked tail) is
    /// dropped. Rows have line 0.
    public func packed(length: Int) -> SFTDataSet {
        precondition(length > 1, "length \(length)")
        let ids = examples.flatMap(\.inputIds), labels = examples.flatMap(\.labels)
        var rows: [SFTExample] = []
        for start in stride(from: 0, to: ids.count, by: length) {
            let end = min(ids.count, start + length)
            let row = SFTExample(inputIds: Array(ids[start..<end]), labels: Array(labels[start..<end]))
            if row.trainedTokens > 0 { rows.append(row) }
        }
        return with(rows)
    }

    /// All examples in the current order, `size` at a time (the last batch may be smaller):
    /// for validation.
    public func batches(size: Int) -> [Batch] {
        precondition(size > 0, "batch size \(size)")
        return stride(from: 0, to: examples.count, by: size).map { start in
            let indices = Array(start..<min(examples.count, start + size))
            return Batch(examples: examples, indices: indices, padID: padID, epoch: 0)
        }
    }

    func with(_ examples: [SFTExample]) -> SFTDataSet {
        SFTDataSet(examples: examples, source: source, skipped: skipped, skippedReasons: skippedReasons, tooLong: tooLong,
                   tooLongRows: tooLongRows, padID: padID)
    }
}

/// The orderings the SFT and the preference data sets share.
extension Array {
    /// round(count · fraction) elements (at least 1, leaving at least 1) drawn for validation
    /// with a seeded Fisher–Yates shuffle; both parts keep the current order.
    func validationSplit(fraction: Double, seed: UInt64, source: String) throws(SFTDataError) -> (train: [Element], validation: [Element]) {
        precondition(fraction > 0 && fraction < 1, "valFraction \(fraction)")
        guard count >= 2 else { throw .tooFewToSplit(path: source, examples: count) }
        let valCount = Swift.min(count - 1, Swift.max(1, Int((Double(count) * fraction).rounded())))
        var order = Array<Int>(indices)
        var rng = SplitMix64(seed: seed)
        order.fisherYatesShuffle(using: &rng)
        let isVal = Set(order.prefix(valCount))
        return (indices.filter { !isVal.contains($0) }.map { self[$0] }, indices.filter { isVal.contains($0) }.map { self[$0] })
    }

    /// Longest first by `length`, ties in the current order.
    func sortedLongestFirst(by length: (Element) -> Int) -> [Element] {
        enumerated().sorted { (length($0.element), $1.offset) > (length($1.element), $0.offset) }.map(\.element)
    }

    /// The elements in a seeded Fisher–Yates order.
    func shuffled(seed: UInt64) -> [Element] {
        var rng = SplitMix64(seed: seed)
        var copy = self
        copy.fisherYatesShuffle(using: &rng)
        return copy
    }
}
