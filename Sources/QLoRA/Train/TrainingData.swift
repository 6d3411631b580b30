import Foundation

/// What a run trains and evaluates on, as token batches: SFT examples (`SFTDataSet`) or
/// preference pairs (`PreferenceDataSet`, a batch of P pairs being 2P rows). The run draws
/// training batches from a resumable stream and evaluates on the batches in order.
public protocol TrainingData: Sendable {
    /// The file the data came from, for messages.
    var source: String { get }
    /// Examples, or pairs: what a batch size counts.
    var count: Int { get }
    /// Tokens the objective scores over the whole set (0: nothing would train).
    var trainedTokenCount: Int { get }
    /// Endless batches of `batchSize` items in the seeded order, from `state` when resuming;
    /// with `groupByLength`, items of similar length batched together (`EpochCursor.grouped`).
    func batchStream(batchSize: Int, seed: UInt64, state: BatchIterator.State?, groupByLength: Bool) throws -> any TokenBatchStream
    /// Every item in the current order, `batchSize` at a time: for evaluation.
    func evaluationBatches(batchSize: Int) -> [TokenBatch]
}

/// An endless, resumable stream of training batches.
public protocol TokenBatchStream: Sendable {
    mutating func nextBatch() -> TokenBatch
    /// Saved with each checkpoint; the same data and state give the same batches again.
    var state: BatchIterator.State { get }
}

extension BatchIterator: TokenBatchStream {
    public mutating func nextBatch() -> TokenBatch { TokenBatch(next()) }
}

extension PreferenceBatchIterator: TokenBatchStream {
    public mutating func nextBatch() -> TokenBatch { TokenBatch(next()) }
}

extension SFTDataSet: TrainingData {
    public var count: Int { examples.count }

    public func batchStream(batchSize: Int, seed: UInt64, state: BatchIterator.State?, groupByLength: Bool) throws -> any TokenBatchStream {
        try BatchIterator(examples: examples, batchSize: batchSize, padID: padID, seed: seed, state: state, groupByLength: groupByLength)
    }

    public func evaluationBatches(batchSize: Int) -> [TokenBatch] { batches(size: batchSize).map(TokenBatch.init) }
}

extension PreferenceDataSet: TrainingData {
    public var count: Int { pairs.count }

    /// Completion tokens of both sides.
    public var trainedTokenCount: Int { pairs.reduce(0) { $0 + $1.chosen.count + $1.rejected.count } }

    public func batchStream(batchSize: Int, seed: UInt64, state: BatchIterator.State?, groupByLength: Bool) throws -> any TokenBatchStream {
        try PreferenceBatchIterator(pairs: pairs, pairsPerBatch: batchSize, padID: padID, seed: seed, state: state, groupByLength: groupByLength)
    }

    public func evaluationBatches(batchSize: Int) -> [TokenBatch] { batches(pairsPerBatch: batchSize).map(TokenBatch.init) }
}

/// The reference log-probabilities of DPO: each pair's chosen and rejected completion under the
/// reference weights (the base with the adapter off, the adapter a run starts from, or a
/// frozen `--ref-adapter`), computed once in a no-grad pass before the first update and kept
/// in `<run>/reference_logps.json`, so that a resumed run reads them back instead of needing
/// the reference weights again (the adapter it started from has trained since).
///
///   {"format": 1, "reference": "<what the reference is>",
///    "train": {"pairs": N, "checksum": crc32 of the pairs' ids, "logps": ["<f64 bits hex>", … 2N]},
///    "validation": {…}}
///
/// logps per set are the chosen sides in pair order, then the rejected sides; stored as the
/// bits of each float64 so that they read back exactly.
public enum ReferenceLogProbs {
    public static let file = "reference_logps.json"

    struct Stored: Codable {
        var format: Int
        var reference: String
        var train: Part
        var validation: Part
    }

    struct Part: Codable {
        var pairs: Int
        var checksum: UInt32
        var logps: [String]
    }

    /// CRC-32 of every pair's prompt, chosen and rejected ids (little-endian Int32, a −1
    /// between lists): a cache made for other data is not used.
    static func checksum(_ pairs: [PreferencePair]) -> UInt32 {
        var bytes: [UInt8] = []
        for p in pairs {
            for list in [p.prompt, p.chosen, p.rejected] {
                for id in list + [-1] { withUnsafeBytes(of: Int32(truncatingIfNeeded: id).littleEndian) { bytes += $0 } }
            }
        }
        return CRC32.checksum(bytes)
    }

    /// Log-probabilities of each pair's sides with `reference`'s weights, `pairsPerBatch` pairs a pass.
    public static func compute(_ pairs: [PreferencePair], reference: Trainer, pairsPerBatch: Int,
                               progress: (_ done: Int, _ total: Int) -> Void = { _, _ in }) throws -> [(chosen: Double, rejected: Double)] {
        var out: [(chosen: Double, rejected: Double)] = []
        out.reserveCapacity(pairs.count)
        let set = PreferenceDataSet(pairs: pairs, source: "", padID: 0)
        for b in set.batches(pairsPerBatch: pairsPerBatch) {
            let logps = try PreferenceObjective.completionLogProbs(TokenBatch(b), trainer: reference)
            for p in 0..<b.pairCount { out.append((logps[p], logps[b.pairCount + p])) }
            progress(out.count, pairs.count)
        }
        return out
    }

    /// The pairs with their reference log-probabilities: read from `directory`'s cache when it
    /// holds values for exactly these pairs and this reference, else computed with
    /// `reference()` and written there (atomically).
    public static func attach(train: PreferenceDataSet, validation: PreferenceDataSet, directory: String, describing: String,
                              pairsPerBatch: Int, reference: () throws -> Trainer, onEvent: (TrainingEvent) -> Void) throws
        -> (train: PreferenceDataSet, validation: PreferenceDataSet) {
        let path = directory + "/" + file
        func values(_ part: Part?, _ pairs: [PreferencePair]) -> [Double]? {
            guard let part, part.pairs == pairs.count, part.checksum == checksum(pairs), part.logps.count == 2 * pairs.count else { return nil }
            let bits = part.logps.compactMap { UInt64($0, radix: 16) }
            return bits.count == part.logps.count ? bits.map(Double.init(bitPattern:)) : nil
        }
        func attach(_ set: PreferenceDataSet, _ v: [Double]) -> PreferenceDataSet {
            var pairs = set.pairs
            for i in pairs.indices { pairs[i].reference = (v[i], v[pairs.count + i]) }
            return set.with(pairs)
        }
        if let data = FileManager.default.contents(atPath: path), let stored = try? JSONDecoder().decode(Stored.self, from: data),
           stored.format == 1, stored.reference == describing,
           let t = values(stored.train, train.pairs), let v = values(stored.validation, validation.pairs) {
            onEvent(.message("reference log-probabilities read from \(path)"))
            return (attach(train, t), attach(validation, v))
        }
        let trainer = try reference()
        let all = train.pairs + validation.pairs
        let start = Date()
        var lastReport = Date.distantPast
        let computed = try compute(all, reference: trainer, pairsPerBatch: pairsPerBatch) { done, total in
            guard Date().timeIntervalSince(lastReport) > 10 || done == total else { return }
            lastReport = Date()
            let rate = Double(done) / max(Date().timeIntervalSince(start), 1e-9)
            onEvent(.message(String(format: "reference log-probabilities (%@): %d/%d pairs, ETA %.0fs", describing, done, total,
                                    Double(total - done) / max(rate, 1e-9))))
        }
        func part(_ slice: ArraySlice<(chosen: Double, rejected: Double)>, _ pairs: [PreferencePair]) -> (Part, [Double]) {
            let v = slice.map(\.chosen) + slice.map(\.rejected)
            return (Part(pairs: pairs.count, checksum: checksum(pairs), logps: v.map { String($0.bitPattern, radix: 16) }), v)
        }
        let (tp, tv) = part(computed[..<train.pairs.count], train.pairs)
        let (vp, vv) = part(computed[train.pairs.count...], validation.pairs)
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        try AtomicFile.write(to: path, bytes: [UInt8](try encoder.encode(Stored(format: 1, reference: describing, train: tp, validation: vp))))
        return (attach(train, tv), attach(validation, vv))
    }
}
