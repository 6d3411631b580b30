import Foundation

/// Tokenized preference pairs from one JSON Lines file, for reward modelling and DPO as TRL
/// takes them. One object a line (blank lines skipped, other keys ignored), one of
///
///   {"prompt": "...", "chosen": "...", "rejected": "..."}                 plain text
///   {"prompt": [messages], "chosen": [messages], "rejected": [messages]}  conversational: the
///       completions are the assistant reply (or replies); a side given as a whole conversation
///       (not starting with an assistant message) must start with the prompt's messages, which
///       are taken off
///   {"chosen": ..., "rejected": ...}                                      implicit prompt:
///       the longest common prefix (TRL's `maybe_extract_prompt`), of messages or of characters
///
/// messages are [{"role": "system"|"user"|"assistant", "content": "..."}, ...]. An optional
/// `"margin": number` is kept with the pair.
///
///   let set = try PreferenceDataSet.load(path: "prefs.jsonl", tokenizer: tok, chatTemplate: tpl, maxLength: 512)
///   let (train, val) = try set.split(valFraction: 0.1, seed: 1)        // val longest first
///   var batches = try PreferenceBatchIterator(pairs: train.pairs, pairsPerBatch: 4, padID: train.padID, seed: 1)
///   let b = batches.next()                           // 8 rows: 4 chosen, then their 4 rejected
public struct PreferenceDataSet: Sendable, Equatable {
    public var pairs: [PreferencePair]
    /// The file the pairs came from, for messages.
    public let source: String
    /// Bad rows skipped under `skipBad`, and the first few reasons (`SFTDataSet.reasonsKept`).
    public let skipped: Int
    public let skippedReasons: [SFTDataError]
    /// Pairs dropped because their longer side had more than `maxLength` tokens.
    public let tooLong: Int
    /// The id padding batches: the tokenizer's EOS, else 0 (padding follows the real tokens,
    /// under causal attention, with labels −100).
    public let padID: Int

    public init(pairs: [PreferencePair], source: String, skipped: Int = 0, skippedReasons: [SFTDataError] = [], tooLong: Int = 0, padID: Int) {
        self.pairs = pairs
        self.source = source
        self.skipped = skipped
        self.skippedReasons = skippedReasons
        self.tooLong = tooLong
        self.padID = padID
    }

    /// Reads and tokenizes a preference file (`PreferenceRow.tokenize` says how). A pair whose
    /// longer side has more than `maxLength` tokens is dropped and counted in `tooLong`: cutting
    /// it would score a completion on part of itself.
    ///
    /// A bad row (invalid JSON, chosen or rejected missing, empty or of another kind than the
    /// other, chosen identical to rejected, a whole conversation not starting with the explicit
    /// prompt, no shared prompt to extract, a margin that is not a number, an unknown role, no
    /// chat template for messages) throws `.badRow(path, line, problem)`; with `skipBad` it is
    /// skipped and counted instead. No pair left throws `.allTooLong` when every row that
    /// loaded was too long, else `.emptyDataSet`.
    /// - Parameter chatTemplate: needed for conversational rows (`LanguageModel.chatTemplate()`).
    public static func load(path: String, tokenizer: Tokenizer, chatTemplate: ChatTemplate? = nil,
                            maxLength: Int, skipBad: Bool = false) throws(SFTDataError) -> PreferenceDataSet {
        precondition(maxLength > 1, "maxLength \(maxLength)")
        guard let data = FileManager.default.contents(atPath: path) else {
            throw .unreadable(path: path, reason: FileManager.default.fileExists(atPath: path) ? "permission denied or a folder" : "no such file")
        }
        var bytes = [UInt8](data)
        if bytes.starts(with: [0xEF, 0xBB, 0xBF]) { bytes.removeFirst(3) }
        var pairs: [PreferencePair] = []
        var skipped = 0, tooLong = 0
        var reasons: [SFTDataError] = []
        for (line, text) in SFTDataSet.lines(bytes) where !text.allSatisfy({ $0 == 0x20 || $0 == 0x09 }) {
            do {
                let (row, margin) = try Self.jsonRow(text)
                var pair = try row.tokenize(tokenizer: tokenizer, chatTemplate: chatTemplate)
                pair.margin = margin
                pair.line = line
                if pair.longerCount > maxLength { tooLong += 1 } else { pairs.append(pair) }
            } catch {
                let bad = SFTDataError.badRow(path: path, line: line, problem: error)
                guard skipBad else { throw bad }
                skipped += 1
                if reasons.count < SFTDataSet.reasonsKept { reasons.append(bad) }
            }
        }
        guard !pairs.isEmpty else {
            throw skipped == 0 && tooLong > 0 ? .allTooLong(path: path, dropped: tooLong, maxLength: maxLength)
                                              : .emptyDataSet(path: path, skipped: skipped + tooLong, firstReasons: reasons)
        }
        return PreferenceDataSet(pairs: pairs, source: path, skipped: skipped, skippedReasons: reasons, tooLong: tooLong, padID: tokenizer.eos ?? 0)
    }

    /// One JSON Lines row → its `PreferenceRow` (prompt found) and margin. `allowEqualSides`
    /// lets chosen equal rejected: a single response to score, given as both sides.
    public static func jsonRow(_ line: ArraySlice<UInt8>, allowEqualSides: Bool = false) throws(SFTRowProblem) -> (PreferenceRow, Double?) {
        let value: Any
        do { value = try JSONSerialization.jsonObject(with: Data(line), options: [.fragmentsAllowed]) } catch {
            throw .invalidJSON(detail: (error as NSError).userInfo[NSDebugDescriptionErrorKey] as? String ?? "\(error)")
        }
        guard let object = value as? [String: Any] else {
            throw .notAnObject(kind: value is [Any] ? "an array" : value is String ? "a string" : value is NSNull ? "null" : "a number or boolean")
        }
        guard let chosen = object["chosen"] else { throw .missingKey("'chosen'") }
        guard let rejected = object["rejected"] else { throw .missingKey("'rejected'") }
        var margin: Double?
        if let m = object["margin"] {
            // JSON true/false arrive as NSNumber too, of type char.
            guard let n = m as? NSNumber, !(m is String), n.objCType.pointee != CChar(UInt8(ascii: "c")), n.doubleValue.isFinite else {
                throw .wrongType(key: "margin", expected: "a number")
            }
            margin = n.doubleValue
        }
        let row: PreferenceRow
        switch chosen {
        case let c as String:
            guard let r = rejected as? String else { throw .wrongType(key: "rejected", expected: "a string, as 'chosen' is") }
            guard !c.isEmpty else { throw .emptyContent(key: "chosen") }
            guard !r.isEmpty else { throw .emptyContent(key: "rejected") }
            guard c != r || allowEqualSides else { throw .chosenEqualsRejected }
            if let p = object["prompt"] {
                guard let p = p as? String else { throw .wrongType(key: "prompt", expected: "a string, as 'chosen' is") }
                guard !p.isEmpty else { throw .emptyContent(key: "prompt") }
                row = .text(prompt: p, chosen: c, rejected: r)
            } else {
                guard let e = PreferenceRow.extractPrompt(chosen: c, rejected: r) else { throw .noSharedPrompt }
                row = .text(prompt: e.prompt, chosen: e.chosen, rejected: e.rejected)
            }
        case is [Any]:
            let c = try SFTDataSet.messages(chosen, key: "chosen", row: line)
            guard rejected is [Any] else { throw .wrongType(key: "rejected", expected: "a list of messages, as 'chosen' is") }
            let r = try SFTDataSet.messages(rejected, key: "rejected", row: line)
            guard c != r || allowEqualSides else { throw .chosenEqualsRejected }
            if let p = object["prompt"] {
                guard p is [Any] else { throw .wrongType(key: "prompt", expected: "a list of messages, as 'chosen' is") }
                let prompt = try SFTDataSet.messages(p, key: "prompt", row: line)
                func completion(_ side: [ChatMessage], _ key: String) throws(SFTRowProblem) -> [ChatMessage] {
                    if side.first?.role == .assistant { return side }
                    guard side.starts(with: prompt) else { throw .promptNotPrefix(side: key) }
                    guard side.count > prompt.count else { throw .emptyContent(key: key) }
                    return Array(side.dropFirst(prompt.count))
                }
                let (cc, rc) = (try completion(c, "chosen"), try completion(r, "rejected"))
                guard cc != rc || allowEqualSides else { throw .chosenEqualsRejected }
                row = .messages(prompt: prompt, chosen: cc, rejected: rc)
            } else {
                guard let e = PreferenceRow.extractPrompt(chosen: c, rejected: r) else { throw .noSharedPrompt }
                row = .messages(prompt: e.prompt, chosen: e.chosen, rejected: e.rejected)
            }
        default:
            throw .wrongType(key: "chosen", expected: "a string or a list of messages")
        }
        return (row, margin)
    }
}
