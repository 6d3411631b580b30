import Foundation

/// How an SFT data file is laid out.
///
///   jsonl   one JSON object a line (.jsonl, .json), each one of
///           {"text": "..."}
///           {"prompt": "...", "completion": "..."}
///           {"messages": [{"role": "system"|"user"|"assistant"|"tool", "content": "..."}, ...]}
///           (a message's other keys, such as "tool_calls", "tool_call_id" or "name", go to the
///           chat template as they are; content may be left out beside "tool_calls")
///           (the first key present, in the order messages, prompt/completion, text, decides;
///           other keys are ignored; blank lines are skipped)
///   csv     RFC 4180 with a header row; the text column (default "text") is a `text` row (.csv)
///   text    plain text for language modelling (.txt): the whole file tokenized once, with the
///           tokenizer's prefix and EOS, then cut into examples of maxLength tokens
public enum SFTFormat: String, Sendable, CaseIterable {
    case jsonl, csv, text

    /// The format named by a file's extension, or nil.
    public init?(path: String) {
        switch (path as NSString).pathExtension.lowercased() {
        case "jsonl", "json": self = .jsonl
        case "csv": self = .csv
        case "txt": self = .text
        default: return nil
        }
    }
}

/// Tokenized SFT examples from one file, ready for `BatchIterator`. Loading, splitting,
/// packing and ordering are pure: each returns a new data set.
///
///   let train = try SFTDataSet.load(path: "train.jsonl", tokenizer: tok, chatTemplate: tpl, maxLength: 512)
///   let (t, v) = try train.split(valFraction: 0.05, seed: 1)       // v sorted longest first
///   var batches = try BatchIterator(examples: t.examples, batchSize: 8, padID: t.padID, seed: 1)
///   let batch = batches.next()                                     // [B, T] ids and labels
public struct SFTDataSet: Sendable, Equatable {
    public var examples: [SFTExample]
    /// The file the examples came from, for messages.
    public let source: String
    /// Rows skipped under `skipBad`, and the first few reasons (at most `reasonsKept`).
    public let skipped: Int
    public let skippedReasons: [SFTDataError]
    /// The id padding batches: the tokenizer's EOS, else 0. (Its value does not matter: padding
    /// comes after the real tokens, under causal attention, with labels −100.)
    public let padID: Int

    public static let reasonsKept = 5

    public init(examples: [SFTExample], source: String, skipped: Int = 0, skippedReasons: [SFTDataError] = [], padID: Int) {
        self.examples = examples
        self.source = source
        self.skipped = skipped
        self.skippedReasons = skippedReasons
        self.padID = padID
    }

    /// Sum of the examples' lengths: the tokens of one epoch.
    public var tokenCount: Int { examples.reduce(0) { $0 + $1.count } }
    /// Targets of one epoch (labels[1...] that are not −100, summed).
    public var trainedTokenCount: Int { examples.reduce(0) { $0 + $1.trainedTokens } }

    /// Reads and tokenizes a data file (see `SFTFormat` for the layouts and `SFTRow.tokenize`
    /// for the labels). Each example keeps its first `maxLength` tokens.
    ///
    /// A bad row (invalid JSON, a missing key, a non-string value, an unknown role, empty
    /// content, no chat template for messages, every label masked after truncation, a CSV
    /// record with the wrong field count) throws `.badRow(path, line, problem)`; with
    /// `skipBad` it is skipped and counted instead. A malformed CSV quote always throws. No
    /// example at all throws `.emptyDataSet` with the first reasons rows were skipped for.
    /// - Parameters:
    ///   - format: nil picks it from the extension.
    ///   - chatTemplate: needed for messages rows (`LanguageModel.chatTemplate()`).
    ///   - textColumn: the CSV column holding the text.
    public static func load(path: String, format: SFTFormat? = nil, tokenizer: Tokenizer, chatTemplate: ChatTemplate? = nil,
                            maxLength: Int, skipBad: Bool = false, textColumn: String = "text") throws(SFTDataError) -> SFTDataSet {
        precondition(maxLength > 1, "maxLength \(maxLength)")
        guard let format = format ?? SFTFormat(path: path) else { throw .unknownFormat(path: path) }
        guard let data = FileManager.default.contents(atPath: path) else {
            throw .unreadable(path: path, reason: FileManager.default.fileExists(atPath: path) ? "permission denied or a folder" : "no such file")
        }
        var bytes = [UInt8](data)
        if bytes.starts(with: [0xEF, 0xBB, 0xBF]) { bytes.removeFirst(3) }
        let padID = tokenizer.eos ?? 0

        var examples: [SFTExample] = []
        var skipped = 0
        var reasons: [SFTDataError] = []
        func add(line: Int, _ row: () throws(SFTRowProblem) -> SFTRow) throws(SFTDataError) {
            do {
                var e = try row().tokenize(tokenizer: tokenizer, chatTemplate: chatTemplate, maxLength: maxLength)
                e.line = line
                examples.append(e)
            } catch {
                let bad = SFTDataError.badRow(path: path, line: line, problem: error)
                guard skipBad else { throw bad }
                skipped += 1
                if reasons.count < reasonsKept { reasons.append(bad) }
            }
        }
        switch format {
        case .text:
            examples = Self.chunks(String(decoding: bytes, as: UTF8.self), tokenizer: tokenizer, maxLength: maxLength)
        case .jsonl:
            for (line, text) in Self.lines(bytes) where !text.allSatisfy({ $0 == 0x20 || $0 == 0x09 }) {
                try add(line: line) { () throws(SFTRowProblem) in try Self.jsonRow(text) }
            }
        case .csv:
            let records: [CSVReader.Record]
            do { records = try CSVReader.records(bytes) } catch { throw .badRow(path: path, line: error.line, problem: error.problem) }
            guard let header = records.first else { throw .emptyDataSet(path: path, skipped: 0, firstReasons: []) }
            guard let column = header.fields.firstIndex(of: textColumn) else {
                throw .missingColumn(path: path, column: textColumn, header: header.fields)
            }
            for r in records.dropFirst() {
                try add(line: r.line) { () throws(SFTRowProblem) in
                    guard r.fields.count == header.fields.count else { throw .csvFieldCount(found: r.fields.count, expected: header.fields.count) }
                    guard !r.fields[column].isEmpty else { throw .emptyContent(key: textColumn) }
                    return .text(r.fields[column])
                }
            }
        }
        guard !examples.isEmpty else { throw .emptyDataSet(path: path, skipped: skipped, firstReasons: reasons) }
        return SFTDataSet(examples: examples, source: path, skipped: skipped, skippedReasons: reasons, padID: padID)
    }

    /// Language modelling on plain text: prefix + text + EOS cut into `maxLength` tokens, every
    /// label trained but the prefix's; a last chunk with nothing to train (one token) is dropped.
    static func chunks(_ text: String, tokenizer: Tokenizer, maxLength: Int) -> [SFTExample] {
        let ids = tokenizer.encode(text, addSpecialTokens: true) + (tokenizer.eos.map { [$0] } ?? [])
        var examples: [SFTExample] = []
        for start in stride(from: 0, to: ids.count, by: maxLength) {
            let chunk = Array(ids[start..<min(ids.count, start + maxLength)])
            var labels = chunk
            for i in 0..<max(0, min(chunk.count, tokenizer.prefix.count - start)) { labels[i] = SFTExample.ignoreIndex }
            let e = SFTExample(inputIds: chunk, labels: labels)
            if e.trainedTokens > 0 { examples.append(e) }
        }
        return examples
    }

    /// The lines of `bytes` with their 1-based numbers, without "\n" or "\r\n".
    static func lines(_ bytes: [UInt8]) -> [(Int, ArraySlice<UInt8>)] {
        var out: [(Int, ArraySlice<UInt8>)] = []
        var start = 0
        for (i, b) in bytes.enumerated() where b == 0x0A {
            out.append((out.count + 1, bytes[start..<(i > start && bytes[i - 1] == 0x0D ? i - 1 : i)]))
            start = i + 1
        }
        if start < bytes.count { out.append((out.count + 1, bytes[start...])) }
        return out
    }

    /// One JSON Lines row → `SFTRow`, checking keys, types, roles and emptiness.
    static func jsonRow(_ line: ArraySlice<UInt8>) throws(SFTRowProblem) -> SFTRow {
        let value: Any
        do { value = try JSONSerialization.jsonObject(with: Data(line), options: [.fragmentsAllowed]) } catch {
            throw .invalidJSON(detail: (error as NSError).userInfo[NSDebugDescriptionErrorKey] as? String ?? "\(error)")
        }
        guard let object = value as? [String: Any] else {
            throw .notAnObject(kind: value is [Any] ? "an array" : value is String ? "a string" : value is NSNull ? "null" : "a number or boolean")
        }
        func string(_ key: String) throws(SFTRowProblem) -> String {
            guard let v = object[key] else { throw .missingKey("'\(key)'") }
            guard let s = v as? String else { throw .wrongType(key: key, expected: "a string") }
            guard !s.isEmpty else { throw .emptyContent(key: key) }
            return s
        }
        if let m = object["messages"] {
            return .messages(try messages(m, key: "messages", row: line))
        }
        if object["prompt"] != nil || object["completion"] != nil {
            return .promptCompletion(prompt: try string("prompt"), completion: try string("completion"))
        }
        if object["text"] != nil { return .text(try string("text")) }
        throw .missingKey("'text', 'prompt'/'completion' or 'messages' (found: \(object.keys.sorted().joined(separator: ", ")))")
    }

    /// A non-empty JSON list of messages: a known role, and content that is a non-blank string
    /// (or absent, null or empty beside `tool_calls`); the other keys (`tool_calls`,
    /// `tool_call_id`, `name`, `reasoning_content`, …) become the message's fields, read again
    /// from `row` with `JinjaValue(json:)` so that objects keep their key order for tojson.
    /// Problems name `key[i]`.
    static func messages(_ value: Any, key: String, row: ArraySlice<UInt8>) throws(SFTRowProblem) -> [ChatMessage] {
        guard let list = value as? [Any] else { throw .wrongType(key: key, expected: "a list of {role, content}") }
        guard !list.isEmpty else { throw .emptyContent(key: key) }
        var ordered: [JinjaValue]?
        var out: [ChatMessage] = []
        for (i, item) in list.enumerated() {
            guard let d = item as? [String: Any] else { throw .wrongType(key: "\(key)[\(i)]", expected: "an object {role, content}") }
            guard let roleValue = d["role"] else { throw .missingKey("'role' in \(key)[\(i)]") }
            guard let roleName = roleValue as? String else { throw .wrongType(key: "\(key)[\(i)].role", expected: "a string") }
            guard let role = ChatMessage.Role(rawValue: roleName) else { throw .unknownRole(message: i, role: roleName) }
            let toolCalls = d["tool_calls"].map { !($0 is NSNull) } ?? false
            var content = ""
            switch d["content"] {
            case nil where toolCalls, is NSNull where toolCalls: break
            case nil: throw .missingKey("'content' in \(key)[\(i)]")
            case let s as String:
                guard toolCalls || !s.trimmingCharacters(in: .whitespacesAndNewlines).isEmpty else { throw .emptyContent(key: "\(key)[\(i)].content") }
                content = s
            default: throw .wrongType(key: "\(key)[\(i)].content", expected: "a string")
            }
            var fields = JinjaDict()
            if d.keys.contains(where: { $0 != "role" && $0 != "content" }) {
                if ordered == nil, case let .dict(o)? = try? JinjaValue(json: String(decoding: row, as: UTF8.self)), case let .list(l)? = o[key] { ordered = l }
                if let ordered, i < ordered.count, case let .dict(m) = ordered[i] {
                    for (k, v) in m where k != "role" && k != "content" { fields[k] = v }
                }
            }
            out.append(ChatMessage(role, content, fields: fields))
        }
        return out
    }
}
