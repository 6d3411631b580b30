import Foundation

/// One preference pair tokenized for reward modelling or DPO: the prompt's ids, shared by both
/// sides, and each side's completion ids. A side's sequence is prompt + completion; its labels
/// are −100 on the prompt, so an objective sums log-probs over completion tokens and a reward
/// head reads the last real token (index count − 1).
public struct PreferencePair: Sendable, Equatable {
    public static func == (a: PreferencePair, b: PreferencePair) -> Bool {
        a.prompt == b.prompt && a.chosen == b.chosen && a.rejected == b.rejected && a.margin == b.margin && a.line == b.line
            && a.reference?.chosen == b.reference?.chosen && a.reference?.rejected == b.reference?.rejected
    }

    public enum Side: Sendable, CaseIterable { case chosen, rejected }

    public var prompt: [Int]
    public var chosen: [Int]
    public var rejected: [Int]
    /// The row's `margin` (TRL's reward margin), nil when it has none.
    public var margin: Double?
    /// The line of the data file the pair comes from; 0 when built in code.
    public var line: Int
    /// The reference model's log-probabilities of the chosen and rejected completions, once a
    /// DPO run has computed them (`ReferenceLogProbs`).
    public var reference: (chosen: Double, rejected: Double)?

    public init(prompt: [Int], chosen: [Int], rejected: [Int], margin: Double? = nil, line: Int = 0) {
        self.prompt = prompt
        self.chosen = chosen
        self.rejected = rejected
        self.margin = margin
        self.line = line
    }

    public func completion(_ side: Side) -> [Int] { side == .chosen ? chosen : rejected }
    /// prompt + completion: the sequence the model reads, [T].
    public func inputIds(_ side: Side) -> [Int] { prompt + completion(side) }
    /// [T]: true at the completion's positions.
    public func completionMask(_ side: Side) -> [Bool] {
        [Bool](repeating: false, count: prompt.count) + [Bool](repeating: true, count: completion(side).count)
    }
    /// The side as a causal-LM example: labels −100 on the prompt, the completion's ids after it.
    public func example(_ side: Side) -> SFTExample {
        SFTExample(inputIds: inputIds(side),
                   labels: [Int](repeating: SFTExample.ignoreIndex, count: prompt.count) + completion(side), line: line)
    }
    /// The length of the longer side: what `maxLength` and the validation order look at.
    public var longerCount: Int { prompt.count + max(chosen.count, rejected.count) }
}

/// One row of a preference file, before tokenization, its prompt already found.
public enum PreferenceRow: Sendable, Equatable {
    /// Plain text: each completion follows the prompt as is.
    case text(prompt: String, chosen: String, rejected: String)
    /// Conversational: the completions are what follows the prompt's messages.
    case messages(prompt: [ChatMessage], chosen: [ChatMessage], rejected: [ChatMessage])

    /// Tokenizes the row as TRL's DPOTrainer does (`maybe_apply_chat_template`, then
    /// `tokenize_row`: prompt and completions tokenized apart, so both sides share the
    /// prompt's ids exactly):
    ///
    ///   text       prompt:     tokenizer prefix + encode(prompt)
    ///              completion: encode(completion) + EOS (not doubled where the text ends with it)
    ///   messages   prompt:     encode(render(prompt, addGenerationPrompt: true)), no tokenizer
    ///                          prefix (the template writes BOS where the model wants it)
    ///              completion: encode(render(prompt + completion) less the prompt's render):
    ///                          the assistant turn with its end-of-turn, as the template writes
    ///                          it, no EOS added (TRL's `is_chat` case; older TRL added one)
    ///
    /// The prefix (BOS for Llama-style tokenizers) is where TRL differs: its tokenize_row adds
    /// BOS only for encoder-decoder models. qlora adds it as its SFT rows and TRL's
    /// RewardTrainer (which tokenizes with special tokens) do, so a plain-text prompt reads as
    /// the model was trained to read text.
    ///
    /// A token that would span the boundary in the whole text is cut there (Llama 3's header
    /// "\n\n" is one token at the end of the prompt, two before content), as in TRL. Nothing is
    /// truncated: the data set drops pairs past its max length.
    public func tokenize(tokenizer: Tokenizer, chatTemplate: ChatTemplate?) throws(SFTRowProblem) -> PreferencePair {
        let prompt: [Int], chosen: [Int], rejected: [Int]
        switch self {
        case let .text(p, c, r):
            func completion(_ text: String) -> [Int] {
                var ids = tokenizer.encode(text)
                if let eos = tokenizer.eos, ids.last != eos { ids.append(eos) }
                return ids
            }
            prompt = tokenizer.prefix + tokenizer.encode(p)
            (chosen, rejected) = (completion(c), completion(r))
        case let .messages(p, c, r):
            guard let chatTemplate else { throw .noChatTemplate }
            func render(_ m: [ChatMessage], _ generationPrompt: Bool) throws(SFTRowProblem) -> String {
                do { return try chatTemplate.render(m, addGenerationPrompt: generationPrompt) } catch { throw .template(error) }
            }
            let head = try render(p, true)
            func completion(_ m: [ChatMessage]) throws(SFTRowProblem) -> [Int] {
                guard let rest = SFTRow.remainder(of: try render(p + m, false), after: head) else {
                    throw .templateNotIncremental(message: p.count)
                }
                return tokenizer.encode(rest)
            }
            prompt = tokenizer.encode(head)
            (chosen, rejected) = (try completion(c), try completion(r))
        }
        guard !prompt.isEmpty else { throw .emptyContent(key: "prompt") }
        guard !chosen.isEmpty else { throw .emptyContent(key: "chosen") }
        guard !rejected.isEmpty else { throw .emptyContent(key: "rejected") }
        return PreferencePair(prompt: prompt, chosen: chosen, rejected: rejected)
    }

    /// TRL's `extract_prompt` on message lists: the prompt is the longest common prefix of
    /// chosen and rejected, leaving each side at least its last message. nil when they share
    /// no first message.
    static func extractPrompt(chosen: [ChatMessage], rejected: [ChatMessage]) -> (prompt: [ChatMessage], chosen: [ChatMessage], rejected: [ChatMessage])? {
        let k = commonPrefix(chosen, rejected)
        guard k > 0 else { return nil }
        return (Array(chosen[..<k]), Array(chosen[k...]), Array(rejected[k...]))
    }

    /// TRL's `extract_prompt` on strings, by Unicode scalar as Python indexes str: the longest
    /// common prefix (each side keeping at least its last character), less a space it ends
    /// with when the sides differ after it, so the completions start with that space.
    static func extractPrompt(chosen: String, rejected: String) -> (prompt: String, chosen: String, rejected: String)? {
        let c = Array(chosen.unicodeScalars), r = Array(rejected.unicodeScalars)
        var k = commonPrefix(c, r)
        if k > 0, k < min(c.count, r.count), c[k] != r[k], c[k - 1] == " " { k -= 1 }
        guard k > 0 else { return nil }
        func string(_ s: ArraySlice<Unicode.Scalar>) -> String { String(String.UnicodeScalarView(s)) }
        return (string(c[..<k]), string(c[k...]), string(r[k...]))
    }

    /// TRL's loop: the first index where the sides differ, or the shorter's count − 1.
    static func commonPrefix<T: Equatable>(_ a: [T], _ b: [T]) -> Int {
        let n = min(a.count, b.count)
        return (0..<n).first { a[$0] != b[$0] } ?? max(0, n - 1)
    }
}
