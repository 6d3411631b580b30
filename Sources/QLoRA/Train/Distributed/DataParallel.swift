import Foundation
import QuantKernels

/// The ranks of a data-parallel run, and what they exchange. Legend: N ranks, b sequences (or
/// pairs) per rank and micro-batch, G = N·b the global micro-batch.
///
/// Every rank maps the same 4-bit base, builds the same adapters from the seed and draws the
/// same global batches in the same seeded order; rank r trains rows [r·G/N, (r+1)·G/N) of each
/// (`TokenBatch.shard`). Every rank knows the whole batch, so the loss's normalizer (scored
/// tokens, or pairs) is the global one without asking: the all-reduced (summed) gradients are
/// one process's gradients of the G rows, up to the order of the sums. The summed gradients
/// make every rank take the same AdamW step, so the weights stay identical; `checkIdentical`
/// compares a hash of them every `checkEvery` updates.
///
/// Rank 0 writes (metrics, checkpoints, adapters, config); the others write nothing in the run
/// directory, and get what a resume needs from rank 0 (`share`), so the run directory need not
/// be on a shared file system.
///
/// Collectives are MPI's (MPIWorld); called from the thread that started MPI.
public final class DataParallel {
    public let process: MPIWorld.Process
    public var rank: Int { process.rank }
    public var size: Int { process.size }
    /// Rank 0: the one that writes the run directory and prints.
    public var isWriter: Bool { rank == 0 }
    /// Updates between two weight comparisons (`checkIdentical`).
    public static let checkEvery = 25

    /// Seconds and bytes the gradient all-reduces took, for the run's summary line; the seconds
    /// ranks waited for the slowest before them (a barrier) apart.
    public private(set) var waitSeconds = 0.0
    public internal(set) var reduceSeconds = 0.0
    public internal(set) var reduceCount = 0
    public internal(set) var reducedBytes = 0
    private var chunk: [Float] = []
    /// Floats per all-reduce call: the flat buffer is sent in pieces of at most this many (16 MiB).
    static let chunkFloats = 1 << 22

    public init(_ process: MPIWorld.Process) {
        self.process = process
    }

    /// A process group of more than one rank when a launcher started this process; nil for
    /// one process (no launcher, or -np 1).
    public static func start() throws -> DataParallel? {
        guard let p = try MPIWorld.start() else { return nil }
        guard p.size > 1 else { return nil }
        return DataParallel(p)
    }

    // MARK: Gradients

    /// Every parameter's grad ← the sum over ranks, as one flat buffer (in pieces of
    /// `chunkFloats`): the parameters in their order, each one's floats in turn.
    public func allReduceGradients(_ parameters: [Parameter]) throws {
        let total = parameters.reduce(0) { $0 + $1.count }
        if chunk.count != min(total, Self.chunkFloats) { chunk = [Float](repeating: 0, count: min(total, Self.chunkFloats)) }
        let arrived = Date()
        try MPIWorld.barrier()
        let start = Date()
        waitSeconds += start.timeIntervalSince(arrived)
        try chunk.withUnsafeMutableBufferPointer { buffer in
            let base = buffer.baseAddress!
            // Pieces of parameters waiting in the buffer: (parameter, its offset, count, where in the buffer).
            var pending: [(p: Parameter, from: Int, count: Int, at: Int)] = []
            var filled = 0
            func flush() throws {
                guard filled > 0 else { return }
                try MPIWorld.allReduceSum(UnsafeMutableBufferPointer(start: base, count: filled))
                for piece in pending { (piece.p.grad.base + piece.from).update(from: base + piece.at, count: piece.count) }
                pending.removeAll(keepingCapacity: true)
                filled = 0
            }
            for p in parameters {
                var from = 0
                while from < p.count {
                    let n = min(p.count - from, buffer.count - filled)
                    (base + filled).update(from: p.grad.base + from, count: n)
                    pending.append((p, from, n, filled))
                    filled += n
                    from += n
                    if filled == buffer.count { try flush() }
                }
            }
            try flush()
        }
        reduceSeconds += Date().timeIntervalSince(start)
        reduceCount += 1
        reducedBytes = total * MemoryLayout<Float>.stride
    }

    // MARK: Overlapped with the backward

    /// Whether the gradient sums start as the backward finishes each block (`Overlapped`), or
    /// after the whole backward (`allReduceGradients`): QLORA_ALLREDUCE=after|overlap, overlap
    /// by default.
    public var overlaps = ProcessInfo.processInfo.environment["QLORA_ALLREDUCE"] != "after"
    private var overlapped: Overlapped?

    /// The reduction of one update's gradients overlapped with its backward, for `parameters`
    /// (the same set every update).
    public func overlapped(_ parameters: [Parameter]) -> Overlapped {
        if let o = overlapped, o.parameters.count == parameters.count, zip(o.parameters, parameters).allSatisfy({ $0 === $1 }) { return o }
        let o = Overlapped(parameters, world: self)
        overlapped = o
        return o
    }

    /// Each block's gradients summed over the ranks as soon as the backward is done with that
    /// block (MPI_Iallreduce on its piece of one flat buffer, moved on by MPI_Test after each
    /// later block), the rest (the final norm, a score head) after the backward; `finish` waits
    /// for every piece and copies the sums back. Every rank starts the pieces in one order:
    /// blocks L−1 … 0, then the rest (a rank whose share of the last micro-batch is empty starts
    /// them all in `finish`, in that order).
    public final class Overlapped {
        let parameters: [Parameter]
        unowned let world: DataParallel
        /// Parameter indices of each piece, in the order the pieces start.
        let pieces: [[Int]]
        let pieceOfBlock: [Int: Int]
        let offsets: [Int]
        let flat: FloatBuffer
        private var requests: [Int64?]
        private var next = 0

        init(_ parameters: [Parameter], world: DataParallel) {
            self.parameters = parameters
            self.world = world
            var byBlock: [Int: [Int]] = [:], rest: [Int] = []
            for (i, p) in parameters.enumerated() {
                let parts = p.name.split(separator: ".")
                if parts.count > 3, parts[0] == "model", parts[1] == "layers", let l = Int(parts[2]) { byBlock[l, default: []].append(i) } else { rest.append(i) }
            }
            let blocks = byBlock.keys.sorted(by: >)
            pieces = blocks.map { byBlock[$0]! } + (rest.isEmpty ? [] : [rest])
            pieceOfBlock = Dictionary(uniqueKeysWithValues: blocks.enumerated().map { ($1, $0) })
            var o = 0, offsets: [Int] = []
            for p in parameters {
                offsets.append(o)
                o += p.count
            }
            self.offsets = offsets
            flat = FloatBuffer(count: max(o, 1))
            requests = [Int64?](repeating: nil, count: pieces.count)
        }

        /// Before the update's first micro-batch.
        public func begin() {
            precondition(requests.allSatisfy { $0 == nil }, "an overlapped reduction began before the last one finished")
            next = 0
        }

        /// The backward has finished block `l` of the update's last micro-batch: start every piece
        /// up to its own, and move the ones in flight on.
        public func blockDone(_ l: Int) throws {
            let start = Date()
            if let piece = pieceOfBlock[l] {
                while next <= piece { try startNext() }
            }
            try progress()
            world.reduceSeconds += Date().timeIntervalSince(start)
        }

        private func startNext() throws {
            let piece = pieces[next]
            for i in piece { (flat.base + offsets[i]).update(from: parameters[i].grad.base, count: parameters[i].count) }
            let from = offsets[piece.first!], count = piece.reduce(0) { $0 + parameters[$1].count }
            var request: Int64 = 0
            let rc = qk_mpi_iallreduce_sum_f32(flat.base + from, Int64(count), &request)
            guard rc == 0 else { throw MPIWorld.Failure.call("MPI_Iallreduce", rc) }
            requests[next] = request
            next += 1
        }

        private func progress() throws {
            for i in requests.indices {
                guard var r = requests[i] else { continue }
                var done: Int32 = 0
                let rc = qk_mpi_test(&r, &done)
                guard rc == 0 else { throw MPIWorld.Failure.call("MPI_Test", rc) }
                requests[i] = r
            }
        }

        /// After the backward: start the pieces not started yet, wait for all, copy the sums back.
        public func finish() throws {
            let start = Date()
            while next < pieces.count { try startNext() }
            for i in requests.indices {
                guard var r = requests[i] else { continue }
                let rc = qk_mpi_wait(&r)
                guard rc == 0 else { throw MPIWorld.Failure.call("MPI_Wait", rc) }
                requests[i] = nil
            }
            for (i, p) in parameters.enumerated() { p.grad.base.update(from: flat.base + offsets[i], count: p.count) }
            world.reduceSeconds += Date().timeIntervalSince(start)
            world.reduceCount += 1
            world.reducedBytes = offsets.last.map { ($0 + parameters.last!.count) * MemoryLayout<Float>.stride } ?? 0
        }
    }

    // MARK: Small exchanges

    /// Every rank's bytes, in rank order, on every rank (of any length).
    public func allGather(_ bytes: [UInt8]) throws -> [[UInt8]] {
        var counts = [Int64](repeating: 0, count: size)
        try gatherValue(Int64(bytes.count), into: &counts)
        let widest = Int(counts.max() ?? 0)
        guard widest > 0 else { return [[UInt8]](repeating: [], count: size) }
        var all = [UInt8](repeating: 0, count: widest * size)
        let padded = bytes + [UInt8](repeating: 0, count: widest - bytes.count)
        try padded.withUnsafeBytes { s in try all.withUnsafeMutableBytes { try gather(s, into: $0) } }
        return (0..<size).map { r in Array(all[(r * widest)..<(r * widest + Int(counts[r]))]) }
    }

    /// Every rank's bytes of `send`, in rank order, into `recv` (size × send.count bytes).
    private func gather(_ send: UnsafeRawBufferPointer, into recv: UnsafeMutableRawBufferPointer) throws {
        guard recv.count >= send.count * size else { throw MPIWorld.Failure.call("MPI_Allgather: buffer too small", -2) }
        let code = qk_mpi_allgather_bytes(send.baseAddress!, Int64(send.count), recv.baseAddress!)
        guard code == 0 else { throw MPIWorld.Failure.call("MPI_Allgather", code) }
    }

    /// Every rank's `value`, in rank order.
    private func gatherValue<T>(_ value: T, into recv: inout [T]) throws {
        var value = value
        try withUnsafeBytes(of: &value) { s in try recv.withUnsafeMutableBytes { try gather(s, into: $0) } }
    }

    /// Whether `flag` holds on any rank (every rank gets the same answer).
    public func any(_ flag: Bool) throws -> Bool {
        var v: [Double] = [flag ? 1 : 0]
        try v.withUnsafeMutableBufferPointer { try MPIWorld.allReduceSum($0) }
        return v[0] > 0
    }

    /// Whether `flag` holds on every rank.
    public func all(_ flag: Bool) throws -> Bool { try !any(!flag) }

    /// The losses of every rank summed in rank order (the same sum on every rank).
    public func combine(_ loss: LossSum) throws -> LossSum { try combine(numbered: [(rank, loss)]) }

    /// Losses of numbered pieces (evaluation batches) computed on different ranks, gathered and
    /// summed in the pieces' order: what one process summing them in that order gets.
    public func combine(numbered: [(index: Int, loss: LossSum)]) throws -> LossSum {
        let mine = numbered.map { NumberedLoss(index: $0.index, loss: WireLoss($0.loss)) }
        let all = try allGather([UInt8](try JSONEncoder().encode(mine)))
            .flatMap { try JSONDecoder().decode([NumberedLoss].self, from: Data($0)) }
            .sorted { $0.index < $1.index }
        return all.reduce(LossSum()) { $0 + $1.loss.value }
    }

    struct NumberedLoss: Codable {
        var index: Int
        var loss: WireLoss
    }

    /// A LossSum as bits, so that not-a-number and infinite sums cross too, exactly.
    struct WireLoss: Codable, Sendable {
        var sum: UInt64
        var tokens: Int
        var metrics: [String: UInt64]

        init(_ l: LossSum) {
            sum = l.sum.bitPattern
            tokens = l.tokens
            metrics = l.metrics.mapValues(\.bitPattern)
        }

        var value: LossSum {
            LossSum(sum: Double(bitPattern: sum), tokens: tokens, metrics: metrics.mapValues { Double(bitPattern: $0) })
        }
    }

    // MARK: Weights

    /// A hash of the parameters' bits (`Parameter.bitsHash`: FNV-1a over their 32-bit words).
    public static func weightHash(_ parameters: [Parameter]) -> UInt64 { Parameter.bitsHash(parameters) }

    public enum Mismatch: Error, CustomStringConvertible {
        case weights(step: Int, ranks: [Int])
        public var description: String {
            switch self {
            case let .weights(step, ranks):
                "after update \(step) the weights of rank(s) \(ranks.map(String.init).joined(separator: ", ")) differ from rank 0's: "
                    + "the ranks no longer train one model (different qlora builds, data files or CPUs computing differently?)"
            }
        }
    }

    /// Throws on every rank when some rank's weights differ from rank 0's.
    public func checkIdentical(_ parameters: [Parameter], step: Int) throws {
        var all = [UInt64](repeating: 0, count: size)
        try gatherValue(Self.weightHash(parameters), into: &all)
        let differing = all.indices.filter { all[$0] != all[0] }
        if !differing.isEmpty { throw Mismatch.weights(step: step, ranks: differing) }
    }

    // MARK: Files

    /// Rank 0's bytes on every rank (`bytes` is read on rank 0 only; nil there: none).
    public func share(_ bytes: [UInt8]?) throws -> [UInt8]? {
        var header: [Int64] = [bytes.map { Int64($0.count) } ?? -1]
        try header.withUnsafeMutableBytes { h in
            let rc = qk_mpi_broadcast(h.baseAddress, Int64(h.count), 0)
            guard rc == 0 else { throw MPIWorld.Failure.call("MPI_Bcast", rc) }
        }
        guard header[0] >= 0 else { return nil }
        var payload = isWriter ? bytes! : [UInt8](repeating: 0, count: Int(header[0]))
        try payload.withUnsafeMutableBytes { p in
            guard p.count > 0 else { return }
            let rc = qk_mpi_broadcast(p.baseAddress, Int64(p.count), 0)
            guard rc == 0 else { throw MPIWorld.Failure.call("MPI_Bcast", rc) }
        }
        return payload
    }

    /// The newest checkpoint of `runDirectory` as rank 0 sees it, on every rank: rank 0's own
    /// path, the others a copy of its files in `scratch` (rank 0 reads, the others receive).
    /// nil on every rank when rank 0 finds none.
    public func sharedCheckpoint(in runDirectory: String) throws -> String? {
        let latest = isWriter ? Checkpoint.latest(in: runDirectory) : nil
        let files = isWriter ? latest.map { path in
            ((try? FileManager.default.contentsOfDirectory(atPath: path)) ?? []).sorted()
        } : nil
        let listing = try share(files.map { [UInt8]($0.joined(separator: "\n").utf8) })
        guard let listing else { return nil }
        let names = String(decoding: listing, as: UTF8.self).split(separator: "\n").map(String.init)
        let name = try share(latest.map { [UInt8](($0 as NSString).lastPathComponent.utf8) }).map { String(decoding: $0, as: UTF8.self) } ?? "checkpoint"
        let target = isWriter ? latest! : scratch + "/" + name
        if !isWriter {
            try? FileManager.default.removeItem(atPath: target)
            try FileManager.default.createDirectory(atPath: target, withIntermediateDirectories: true)
        }
        for file in names {
            let bytes = try share(isWriter ? [UInt8](try Data(contentsOf: URL(fileURLWithPath: target + "/" + file))) : nil) ?? []
            if !isWriter { try Data(bytes).write(to: URL(fileURLWithPath: target + "/" + file)) }
        }
        return target
    }

    /// This rank's own folder for what it must not write into the run directory (ranks > 0);
    /// removed by `finish`.
    public lazy var scratch: String = {
        let path = NSTemporaryDirectory() + "/qlora-rank\(rank)-\(ProcessInfo.processInfo.processIdentifier)"
        try? FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
        return path
    }()

    /// Removes the scratch folder and ends MPI.
    public func finish() {
        if !isWriter { try? FileManager.default.removeItem(atPath: scratch) }
        MPIWorld.finish()
    }

    /// Ends every rank (a rank that failed alone must not leave the others in a collective).
    public func abort(_ code: Int32) -> Never {
        qk_mpi_abort(code)
        exit(code)
    }
}

extension TokenBatch {
    /// Rank `rank`'s share of the batch among `ranks`: contiguous rows (whole pairs for a
    /// preference batch: chosen and rejected sides together, with their margins and reference
    /// log-probabilities), [r·n/N, (r+1)·n/N) of the n rows or pairs, cut to the longest row it
    /// holds. nil when the share is empty (an epoch's last, short batch).
    public func shard(rank: Int, of ranks: Int) -> TokenBatch? {
        precondition((0..<ranks).contains(rank), "rank \(rank) of \(ranks)")
        let units = pairs?.count ?? sequences
        let from = units * rank / ranks, to = units * (rank + 1) / ranks
        guard to > from else { return nil }
        let rows: [Int] = pairs.map { p in Array(from..<to) + Array((p.count + from)..<(p.count + to)) } ?? Array(from..<to)
        let T = rows.map { lengths[$0] }.max()!
        var ids = [Int32](), labels = [Int32]()
        ids.reserveCapacity(rows.count * T)
        labels.reserveCapacity(rows.count * T)
        for r in rows {
            // Positions past T are padding (ids pad, labels −100) in every row kept.
            ids += inputIds[(r * length)..<(r * length + T)]
            labels += self.labels[(r * length)..<(r * length + T)]
        }
        let shardPairs = pairs.map { p in
            PairRows(count: to - from, margins: Array(p.margins[from..<to]),
                     reference: p.reference.map { Array($0[from..<to]) + Array($0[(p.count + from)..<(p.count + to)]) })
        }
        return TokenBatch(inputIds: ids, labels: labels, sequences: rows.count, length: T, lengths: rows.map { lengths[$0] }, pairs: shardPairs)
    }
}
