import Foundation

/// How a run of N optimizer updates is split: a pilot of 5%, then 8 equal chunks, then a
/// tail of what is left (integer arithmetic, so the tail is the remainder of the division).
///
///     pilot = int(N · 0.05)              15,000 → 750
///     chunk = (N − pilot) // 8           15,000 → 1,781
///     tail  = N − (pilot + 8 · chunk)    15,000 → 2
///
/// The end of every non-empty segment is a boundary: the run evaluates and checkpoints there.
/// Updates are counted from 1; "after update n" means n updates are done.
public struct TrainingPlan: Sendable, Equatable {
    public enum Phase: Sendable, Equatable, CustomStringConvertible {
        case pilot
        /// 1-based, up to `chunkCount`.
        case chunk(Int)
        case tail

        public var description: String {
            switch self {
            case .pilot: "pilot"
            case let .chunk(i): "chunk \(i)"
            case .tail: "tail"
            }
        }
    }

    /// One phase and the updates it takes, `first...last` (1-based, never empty).
    public struct Segment: Sendable, Equatable {
        public let phase: Phase
        public let first: Int
        public let last: Int
        public var count: Int { last - first + 1 }

        public init(phase: Phase, first: Int, last: Int) {
            self.phase = phase
            self.first = first
            self.last = last
        }
    }

    public let totalUpdates: Int
    public let pilotUpdates: Int
    public let chunkCount: Int
    public let chunkUpdates: Int
    public let tailUpdates: Int
    /// The non-empty segments in order; together they cover 1...totalUpdates.
    public let segments: [Segment]

    /// - Parameters:
    ///   - pilotFraction: the pilot's share of N, truncated like Python's `int()`.
    ///   - chunks: how many equal chunks follow the pilot.
    public init(totalUpdates: Int, pilotFraction: Double = 0.05, chunks: Int = 8) {
        precondition(totalUpdates >= 0, "TrainingPlan: \(totalUpdates) updates")
        precondition((0...1).contains(pilotFraction), "TrainingPlan: pilot fraction \(pilotFraction) is not in [0, 1]")
        precondition(chunks >= 1, "TrainingPlan: \(chunks) chunks")
        self.totalUpdates = totalUpdates
        pilotUpdates = Int(Double(totalUpdates) * pilotFraction)
        chunkCount = chunks
        chunkUpdates = (totalUpdates - pilotUpdates) / chunks
        tailUpdates = totalUpdates - (pilotUpdates + chunks * chunkUpdates)

        var segments: [Segment] = []
        var next = 1
        func add(_ phase: Phase, _ count: Int) {
            guard count > 0 else { return }
            segments.append(Segment(phase: phase, first: next, last: next + count - 1))
            next += count
        }
        add(.pilot, pilotUpdates)
        for i in 1...chunks { add(.chunk(i), chunkUpdates) }
        add(.tail, tailUpdates)
        self.segments = segments
    }

    /// The update counts after which to evaluate and checkpoint, ascending; the last is N.
    public var boundaries: [Int] { segments.map(\.last) }

    public func isBoundary(afterUpdate n: Int) -> Bool { segments.contains { $0.last == n } }

    /// The segment update `n` (1-based) belongs to; nil outside 1...N.
    public func segment(ofUpdate n: Int) -> Segment? { segments.first { (n >= $0.first) && (n <= $0.last) } }
}
