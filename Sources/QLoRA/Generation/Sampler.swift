import Foundation

/// Picks the next token from logits [V], as transformers' `generate` does with its logits
/// processors in this order:
///
///   repetition penalty   every id seen so far (prompt included), once: l > 0 → l / r, else l · r
///                        (RepetitionPenaltyLogitsProcessor)
///   temperature 0        arg max (the lowest id on ties), nothing below applies
///   temperature          l / t
///   top-k                keep the k largest (ties at the k-th kept, as torch.topk's threshold)
///   top-p                keep the fewest largest whose probabilities sum to ≥ p
///   min-p                keep those with probability ≥ min-p · the largest probability
///   sample               from softmax of what is left, with a seeded SplitMix64
///
/// Each filter keeps at least one token. The same seed, logits and history give the same ids.
public struct Sampler: Sendable {
    public struct Parameters: Sendable, Equatable {
        /// 0 is greedy.
        public var temperature: Float
        /// 0 disables.
        public var topK: Int
        /// 1 disables.
        public var topP: Float
        /// 0 disables.
        public var minP: Float
        /// 1 disables.
        public var repetitionPenalty: Float

        /// llama.cpp's defaults, repetition penalty off.
        public init(temperature: Float = 0.8, topK: Int = 40, topP: Float = 0.95, minP: Float = 0.05, repetitionPenalty: Float = 1) {
            self.temperature = temperature
            self.topK = topK
            self.topP = topP
            self.minP = minP
            self.repetitionPenalty = repetitionPenalty
        }

        public static let greedy = Parameters(temperature: 0, topK: 0, topP: 1, minP: 0)
    }

    /// A token still in the running and its logit.
    public struct Candidate: Equatable, Sendable {
        public var id: Int
        public var logit: Float
        public init(id: Int, logit: Float) {
            self.id = id
            self.logit = logit
        }
    }

    public let parameters: Parameters
    private var rng: SplitMix64

    public init(_ parameters: Parameters, seed: UInt64) {
        self.parameters = parameters
        rng = SplitMix64(seed: seed)
    }

    /// The next id after `history` (every id so far, prompt included).
    public mutating func next(logits: [Float], history: [Int]) -> Int {
        let p = parameters
        var logits = logits
        if p.repetitionPenalty != 1 { Self.applyRepetitionPenalty(&logits, history: history, penalty: p.repetitionPenalty) }
        if p.temperature == 0 { return Self.argmax(logits) }
        // Only logits ≥ the k-th largest can survive top-k: sort those, not all V.
        let floor = p.topK > 0 ? Self.kthLargest(logits, k: p.topK) : -Float.infinity
        var c = logits.enumerated().filter { $0.element >= floor }.map { Candidate(id: $0.offset, logit: $0.element / p.temperature) }
        c.sort { $0.logit > $1.logit || ($0.logit == $1.logit && $0.id < $1.id) }
        if p.topK > 0 { Self.topK(&c, k: p.topK) }
        if p.topP < 1 { Self.topP(&c, p: p.topP) }
        if p.minP > 0 { Self.minP(&c, minP: p.minP) }
        let probs = Self.softmax(c)
        let u = rng.nextUnitDouble()
        var sum = 0.0
        for (i, q) in probs.enumerated() {
            sum += q
            if u < sum { return c[i].id }
        }
        return c[c.count - 1].id
    }

    /// Divides positive logits of seen ids by `penalty` and multiplies negative ones, once per id.
    public static func applyRepetitionPenalty(_ logits: inout [Float], history: [Int], penalty: Float) {
        for id in Set(history) where logits.indices.contains(id) {
            logits[id] = logits[id] > 0 ? logits[id] / penalty : logits[id] * penalty
        }
    }

    /// The index of the largest value, the first on ties (torch.argmax).
    public static func argmax(_ v: [Float]) -> Int {
        var best = 0
        for i in v.indices where v[i] > v[best] { best = i }
        return best
    }

    /// The k-th largest of v (counting repeats), or its smallest when k ≥ v.count.
    static func kthLargest(_ v: [Float], k: Int) -> Float {
        guard k < v.count else { return v.min() ?? -.infinity }
        var top: [Float] = []    // the k largest so far, descending
        top.reserveCapacity(k + 1)
        for x in v where top.count < k || x > top[k - 1] {
            let i = top.firstIndex { $0 < x } ?? top.count
            top.insert(x, at: i)
            if top.count > k { top.removeLast() }
        }
        return top[k - 1]
    }

    /// Candidates sorted largest first → the k largest, and any tied with the k-th.
    public static func topK(_ c: inout [Candidate], k: Int) {
        guard k < c.count else { return }
        let threshold = c[k - 1].logit
        var n = k
        while n < c.count && c[n].logit >= threshold { n += 1 }
        c.removeSubrange(n...)
    }

    /// Candidates sorted largest first → the fewest whose probabilities sum to ≥ p (at least one).
    /// transformers drops the tokens whose ascending cumulative probability is ≤ 1 − p: the same set.
    public static func topP(_ c: inout [Candidate], p: Float) {
        let probs = softmax(c)
        var sum = 0.0, n = 0
        while n < c.count {
            sum += probs[n]
            n += 1
            if sum >= Double(p) { break }
        }
        c.removeSubrange(n...)
    }

    /// Candidates sorted largest first → those with probability ≥ minP · the largest.
    public static func minP(_ c: inout [Candidate], minP: Float) {
        let probs = softmax(c)
        let threshold = Double(minP) * probs[0]
        var n = 1
        while n < c.count && probs[n] >= threshold { n += 1 }
        c.removeSubrange(n...)
    }

    /// Probabilities of the candidates, in Double.
    public static func softmax(_ c: [Candidate]) -> [Double] {
        let m = Double(c.map(\.logit).max() ?? 0)
        let e = c.map { exp(Double($0.logit) - m) }
        let s = e.reduce(0, +)
        return e.map { $0 / s }
    }
}

/// SplitMix64 (Steele, Lea, Flood 2014; the constants of java.util.SplittableRandom): a 64-bit
/// state, one add and a mix per number. Small, fast and reproducible across platforms.
public struct SplitMix64: RandomNumberGenerator, Sendable {
    /// The whole state: `SplitMix64(seed: r.state)` continues exactly where `r` is (checkpoints).
    public private(set) var state: UInt64
    public init(seed: UInt64) { state = seed }

    public mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }

    /// Uniform in [0, 1), 53 bits.
    public mutating func nextUnitDouble() -> Double { Double(next() >> 11) * 0x1p-53 }

    /// Standard normal by Box–Muller: one normal from two uniforms (u1 in (0, 1]).
    public mutating func nextNormal() -> Double {
        let u1 = 1 - nextUnitDouble(), u2 = nextUnitDouble()
        return (-2 * log(u1)).squareRoot() * cos(2 * Double.pi * u2)
    }
}
