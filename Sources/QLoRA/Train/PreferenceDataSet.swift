import Foundation

/// Tokenized preference pairs from JSON rows, for reward modelling and DPO as TRL takes them:
/// one or more files, folders or globs (`DataSources`), each JSON Lines or a .json array
/// (`DataSources.jsonRows`). Each row an object (other keys ignored), one of
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
    /// What the pairs came from (the paths as given), for messages.
    public let source: String
    /// Bad rows skipped under `skipBad`, and the first few reasons (`SFTDataSet.reasonsKept`).
    public let skipped: Int
    public let skippedReasons: [SFTDataError]
    /// Pairs dropped because their longer side had more than `maxLength` tokens, and the first
    /// few (`SFTDataSet.reasonsKept`, each `.badRow(path, line, .longerThanMaxLength)`).
    public let tooLong: Int
    public let tooLongRows: [SFTDataError]
    /// The id padding batches: the tokenizer's EOS, else 0 (padding follows the real tokens,
    /// under causal attention, with labels −100).
    public let padID: Int

    public init(pairs: [PreferencePair], source: String, skipped: Int = 0, skippedReasons: [SFTDataError] = [], tooLong: Int = 0,
                tooLongRows: [SFTDataError] = [], padID: Int) {
        self.pairs = pairs
        self.source = source
        self.skipped = skipped
        self.skippedReasons = skippedReasons
        self.tooLong = tooLong
        self.tooLongRows = tooLongRows
        self.padID = padID
    }

    /// Reads and tokenizes one preference file, folder or glob (`load(paths:)`).
    public static func load(path: String, tokenizer: Tokenizer, chatTemplate: ChatTemplate? = nil,
                            maxLength: Int, skipBad: Bool = false) throws(SFTDataError) -> PreferenceDataSet {
        try load(paths: [path], tokenizer: tokenizer, chatTemplate: chatTemplate, maxLength: maxLength, skipBad: skipBad)
    }

    /// Reads and tokenizes preference files (`PreferenceRow.tokenize` says how), their pairs
    /// in the order of the files. A pair whose longer side has more than `maxLength` tokens is
    /// dropped and counted in `tooLong`: cutting it would score a completion on part of itself.
    ///
    /// A bad row (invalid JSON, chosen or rejected missing, empty or of another kind than the
    /// other, chosen identical to rejected, a whole conversation not starting with the explicit
    /// prompt, no shared prompt to extract, a margin that is not a number, an unknown role, no
    /// chat template for messages) throws `.badRow(path, line, problem)`; with `skipBad` it is
    /// skipped and counted instead. No pair left throws `.allTooLong` when every row that
    /// loaded was too long, else `.emptyDataSet`.
    /// - Parameter chatTemplate: needed for conversational rows (`LanguageModel.chatTemplate()`).
    public static func load(paths: [String], tokenizer: Tokenizer, chatTemplate: ChatTemplate? = nil,
                            maxLength: Int, skipBad: Bool = false) throws(SFTDataError) -> PreferenceDataSet {
        precondition(maxLength > 1, "maxLength \(maxLength)")
        let sources = DataSources(paths)
        var pairs: [PreferencePair] = []
        var skipped = 0, tooLong = 0
        var reasons: [SFTDataError] = [], tooLongRows: [SFTDataError] = []
        for path in try sources.files(formats: [.jsonl]) {
            for (line, text) in try DataSources.jsonRows(try DataSources.contents(of: path), path: path) {
                do {
                    let (row, margin) = try Self.jsonRow(text)
                    var pair = try row.tokenize(tokenizer: tokenizer, chatTemplate: chatTemplate)
                    pair.margin = margin
                    pair.line = line
                    if pair.longerCount <= maxLength { pairs.append(pair); continue }
                    tooLong += 1
                    if tooLongRows.count < SFTDataSet.reasonsKept {
                        tooLongRows.append(.badRow(path: path, line: line, problem: .longerThanMaxLength(tokens: pair.longerCount, maxLength: maxLength)))
                    }
                } catch {
                    let bad = SFTDataError.badRow(path: path, line: line, problem: error)
                    guard skipBad else { throw bad }
                    skipped += 1
                    if reasons.count < SFTDataSet.reasonsKept { reasons.append(bad) }
                }
            }
        }
        guard !pairs.isEmpty else {
            throw skipped == 0 && tooLong > 0 ? .allTooLong(path: sources.description, dropped: tooLong, maxLength: maxLength)
                                              : .emptyDataSet(path: sources.description, skipped: skipped + tooLong, firstReasons: reasons)
        }
        return PreferenceDataSet(pairs: pairs, source: sources.description, skipped: skipped, skippedReasons: reasons, tooLong: tooLong,
                                 tooLongRows: tooLongRows, padID: tokenizer.eos ?? 0)
    }

    /// One JSON Lines row → its `PreferenceRow` (prompt found) and margin. `allowEqualSides`
    /// lets chosen equal rejected: a single response to score, given as both sides.
    public static func jsonRow(_ line: ArraySlice<UInt8>, allowEqualSides: Bool = false) throws(SFTRowProblem) -> (PreferenceRow, Double?) {
        let object = try SFTRow.jsonObject(line)
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
            let c = try SFTRow.messages(chosen, key: "chosen", row: line)
            guard rejected is [Any] else { throw .wrongType(key: "rejected", expected: "a list of messages, as 'chosen' is") }
            let r = try SFTRow.messages(rejected, key: "rejected", row: line)
            guard c != r || allowEqualSides else { throw .chosenEqualsRejected }
            if let p = object["prompt"] {
                guard p is [Any] else { throw .wrongType(key: "prompt", expected: "a list of messages, as 'chosen' is") }
                let prompt = try SFTRow.messages(p, key: "prompt", row: line)
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
