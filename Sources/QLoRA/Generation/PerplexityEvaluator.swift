import Foundation

/// Perplexity as llama.cpp's `llama-perplexity` computes it (examples/perplexity, default mode),
/// so figures compare with its. Legend: n context, V vocab, K windows.
///
///   tokens = encode(text) (BOS first when the tokenizer adds one)
///   K = tokens.count / n non-overlapping windows; the rest is not scored
///   window k: tokens[k·n ..< (k+1)·n], its first token replaced by BOS when the model adds one
///   logits[n, V] = forward(window) from an empty cache
///   scored: the targets at positions n/2 + 1 ... n − 1, each predicted from the logits one
///           position before (n − 1 − n/2 per window); NLL = logsumexp(l) − l[target] in Double
///   PPL = exp(mean NLL);  ± = PPL · sqrt((mean NLL² − mean NLL²) / (count − 1)),
///         the standard error of the mean NLL carried through exp
public struct PerplexityEvaluator {
    public let model: DecoderModel
    public let context: Int
    /// The id put first in each window, when the tokenizer adds BOS.
    public let bos: Int?

    public init(model: DecoderModel, context: Int, bos: Int?) {
        precondition(context >= 4, "perplexity context \(context)")
        self.model = model
        self.context = context
        self.bos = bos
    }

    /// Running sums of NLL and NLL² over the tokens scored so far.
    public struct Estimate: Sendable, Equatable {
        public var sum = 0.0, sumOfSquares = 0.0
        public var count = 0
        public init() {}

        public mutating func add(_ nll: Double) {
            sum += nll
            sumOfSquares += nll * nll
            count += 1
        }

        public var meanNLL: Double { sum / Double(count) }
        public var perplexity: Double { exp(meanNLL) }
        /// llama.cpp's "±": PPL times the standard error of the mean NLL (0 with one token).
        public var error: Double {
            let variance = sumOfSquares / Double(count) - meanNLL * meanNLL
            return count > 1 && variance > 0 ? perplexity * (variance / Double(count - 1)).squareRoot() : 0
        }
    }

    public struct Progress: Sendable {
        public var window: Int
        public var windows: Int
        public var estimate: Estimate
        /// Tokens run through the model so far and the seconds it took.
        public var tokensRun: Int
        public var seconds: Double
    }

    /// Windows `tokens` splits into.
    public func windows(of tokens: [Int]) -> Int { tokens.count / context }

    public func run(tokens: [Int], onWindow: (Progress) -> Void) throws -> Progress {
        let n = context, K = windows(of: tokens)
        guard K >= 1, tokens.count >= 2 * n else { throw GenerationError.textTooShort(tokens: tokens.count, needed: 2 * n, context: n) }
        var estimate = Estimate()
        let start = Date()
        var progress = Progress(window: 0, windows: K, estimate: estimate, tokensRun: 0, seconds: 0)
        for k in 0..<K {
            var window = Array(tokens[(k * n)..<((k + 1) * n)])
            if let bos { window[0] = bos }
            let logits = try model.forward(tokens: window, logits: .all)
            for nll in Self.scoredNLLs(logits: logits, tokens: window, vocab: model.config.vocabSize) { estimate.add(nll) }
            progress = Progress(window: k + 1, windows: K, estimate: estimate, tokensRun: (k + 1) * n, seconds: Date().timeIntervalSince(start))
            onWindow(progress)
        }
        return progress
    }

    /// NLL of tokens[t + 1] under logits row t, for t = n/2 ..< n − 1.  logits [n, V], tokens [n].
    public static func scoredNLLs(logits: [Float], tokens: [Int], vocab V: Int) -> [Double] {
        let n = tokens.count
        precondition(logits.count == n * V, "logits \(logits.count) for \(n) tokens of vocab \(V)")
        return (n / 2 ..< n - 1).map { t in
            logits.withUnsafeBufferPointer { l in
                let row = UnsafeBufferPointer(rebasing: l[(t * V)..<((t + 1) * V)])
                let m = Double(row.max()!)
                var s = 0.0
                for x in row { s += exp(Double(x) - m) }
                return log(s) + m - Double(row[tokens[t + 1]])
            }
        }
    }
}
