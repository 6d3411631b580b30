import Foundation

/// Sampled generation with a KV cache, streamed as text. Legend: P prompt tokens, N new tokens.
///
///   logits = forward(prompt[P])                     one pass, timed as the prompt
///   repeat: id = sampler.next(logits, history)      stop at a stop token (not printed)
///           text += decode(id)                      whole UTF-8 characters only (TokenTextStream)
///           stop when text holds a stop string      (the text before it is kept)
///           logits = forward([id])                  timed as generation
///
/// The library reports text through `onText` and returns counts and times; the CLI prints.
public struct TextGenerator {
    public let model: LanguageModel

    public struct Options: Sendable {
        public var maxNewTokens: Int
        public var sampling: Sampler.Parameters
        public var seed: UInt64
        public var stopTokens: Set<Int>
        public var stopStrings: [String]
        public init(maxNewTokens: Int, sampling: Sampler.Parameters, seed: UInt64, stopTokens: Set<Int>, stopStrings: [String] = []) {
            self.maxNewTokens = maxNewTokens
            self.sampling = sampling
            self.seed = seed
            self.stopTokens = stopTokens
            self.stopStrings = stopStrings
        }
    }

    public enum StopReason: String, Sendable { case stopToken = "stop token", stopString = "stop string", maxTokens = "max tokens", contextFull = "context full" }

    public struct Report: Sendable {
        public var promptTokens: Int
        public var promptSeconds: Double
        /// Ids sampled, the stop token included.
        public var generated: [Int]
        /// Seconds of the forwards after the prompt's.
        public var generationSeconds: Double
        public var stopReason: StopReason
        /// Forwards after the prompt's (the last sampled id is not run).
        public var generationForwards: Int
    }

    public init(model: LanguageModel) { self.model = model }

    public func generate(prompt: [Int], options o: Options, onText: (String) -> Void) throws -> Report {
        let m = model.model
        let capacity = min(prompt.count + o.maxNewTokens, m.config.maxPositionEmbeddings)
        guard prompt.count < capacity else { throw GenerationError.promptTooLong(tokens: prompt.count, context: m.config.maxPositionEmbeddings) }
        let cache = KVCache(config: m.config, capacity: capacity)
        var sampler = Sampler(o.sampling, seed: o.seed)
        var stream = TokenTextStream(tokenizer: model.tokenizer, stopStrings: o.stopStrings)
        var history = prompt, generated: [Int] = []

        var start = Date()
        var logits = try m.forward(tokens: prompt, cache: cache)
        let promptSeconds = Date().timeIntervalSince(start)
        start = Date()
        var forwards = 0
        var reason = StopReason.maxTokens
        while generated.count < o.maxNewTokens {
            let id = sampler.next(logits: logits, history: history)
            generated.append(id)
            history.append(id)
            if o.stopTokens.contains(id) {
                reason = .stopToken
                break
            }
            let (text, stopped) = stream.append(id)
            if !text.isEmpty { onText(text) }
            if stopped {
                reason = .stopString
                break
            }
            guard generated.count < o.maxNewTokens else { break }
            guard cache.count < cache.capacity else {
                reason = .contextFull
                break
            }
            logits = try m.forward(tokens: [id], cache: cache)
            forwards += 1
        }
        if reason != .stopString {
            let rest = stream.finish()
            if !rest.isEmpty { onText(rest) }
        }
        return Report(promptTokens: prompt.count, promptSeconds: promptSeconds, generated: generated,
                      generationSeconds: Date().timeIntervalSince(start), stopReason: reason, generationForwards: forwards)
    }
}

/// Turns ids into text as they come: a character split across tokens (UTF-8 bytes of one
/// character in two byte-level tokens) waits for its last byte, and text that may be the start
/// of a stop string waits until it is known not to be.
public struct TokenTextStream {
    let tokenizer: Tokenizer
    let stopStrings: [String]
    /// Ids whose text is not complete yet (up to 3 more bytes may finish a character).
    private var pendingIDs: [Int] = []
    /// Decoded text held back because a stop string may start in it.
    private var held = ""

    public init(tokenizer: Tokenizer, stopStrings: [String]) {
        self.tokenizer = tokenizer
        self.stopStrings = stopStrings.filter { !$0.isEmpty }
    }

    /// The text that can be printed now, and whether a stop string was reached.
    public mutating func append(_ id: Int) -> (text: String, stopped: Bool) {
        pendingIDs.append(id)
        let text = tokenizer.decode(pendingIDs)
        if text.hasSuffix("\u{FFFD}") && pendingIDs.count < 4 { return ("", false) }
        pendingIDs = []
        held += text
        for s in stopStrings {
            if let r = held.range(of: s) {
                let out = String(held[..<r.lowerBound])
                held = ""
                return (out, true)
            }
        }
        let keep = stopStrings.map { s in Self.overlap(held, s) }.max() ?? 0
        let cut = held.index(held.endIndex, offsetBy: -keep)
        let out = String(held[..<cut])
        held = String(held[cut...])
        return (out, false)
    }

    /// What is still held, at the end.
    public mutating func finish() -> String {
        let out = held + tokenizer.decode(pendingIDs)
        held = ""
        pendingIDs = []
        return out
    }

    /// The length in characters of the longest end of `text` that starts `stop`.
    static func overlap(_ text: String, _ stop: String) -> Int {
        let t = Array(text), s = Array(stop)
        for n in stride(from: min(t.count, s.count - 1), to: 0, by: -1) where Array(t[(t.count - n)...]) == Array(s[..<n]) { return n }
        return 0
    }
}

public enum GenerationError: Error, Equatable, CustomStringConvertible {
    case promptTooLong(tokens: Int, context: Int)
    case textTooShort(tokens: Int, needed: Int, context: Int)

    public var description: String {
        switch self {
        case let .promptTooLong(tokens, context): "the prompt is \(tokens) tokens, the model's context \(context)"
        case let .textTooShort(tokens, needed, context):
            "the text is \(tokens) tokens; perplexity with --ctx \(context) needs at least \(needed) (two windows)\n---> HINT: pass a smaller --ctx"
        }
    }
}
