import Foundation

/// How an SFT data file is laid out.
///
///   jsonl   JSON rows (.jsonl, .json): one object a line, or a .json file holding one JSON
///           array of them (`DataSources.jsonRows`), each row in one of the layouts of
///           `SFTRow(json:)`: text, prompt/completion (strings or message lists), messages,
///           ShareGPT conversations, Alpaca instruction/input/output
///   csv     RFC 4180 with a header row; the text column (default "text") is a `text` row (.csv)
///   text    plain text for language modelling (.txt): the whole file tokenized once, with the
///           tokenizer's prefix and EOS, then cut into examples of maxLength tokens
public enum SFTFormat: String, Sendable, Codable, CaseIterable {
    case jsonl, csv, text

    /// The format named by a file's extension, or nil.
    public init?(path: String) {
        let ext = (path as NSString).pathExtension.lowercased()
        guard let format = Self.allCases.first(where: { $0.extensions.contains(ext) }) else { return nil }
        self = format
    }

    /// The file extensions that name the format.
    public var extensions: [String] {
        switch self {
        case .jsonl: ["jsonl", "json"]
        case .csv: ["csv"]
        case .text: ["txt"]
        }
    }
}

/// Tokenized SFT examples from one or more files, ready for `BatchIterator`. Loading,
/// splitting, packing and ordering are pure: each returns a new data set.
///
///   let train = try SFTDataSet.load(path: "train.jsonl", tokenizer: tok, chatTemplate: tpl, maxLength: 512)
///   let (t, v) = try train.split(valFraction: 0.05, seed: 1)       // v sorted longest first
///   var batches = try BatchIterator(examples: t.examples, batchSize: 8, padID: t.padID, seed: 1)
///   let batch = batches.next()                                     // [B, T] ids and labels
public struct SFTDataSet: Sendable, Equatable {
    public var examples: [SFTExample]
    /// What the examples came from (the paths as given), for messages.
    public let source: String
    /// Rows skipped under `skipBad`, and the first few reasons (at most `reasonsKept`).
    public let skipped: Int
    public let skippedReasons: [SFTDataError]
    /// Rows dropped because their trained tokens all lie past max length, and the first few
    /// (at most `reasonsKept`, each `.badRow(path, line, .trainedPastMaxLength)`).
    public let tooLong: Int
    public let tooLongRows: [SFTDataError]
    /// The id padding batches: the tokenizer's EOS, else 0. (Its value does not matter: padding
    /// comes after the real tokens, under causal attention, with labels −100.)
    public let padID: Int

    public static let reasonsKept = 5

    public init(examples: [SFTExample], source: String, skipped: Int = 0, skippedReasons: [SFTDataError] = [],
                tooLong: Int = 0, tooLongRows: [SFTDataError] = [], padID: Int) {
        self.examples = examples
        self.source = source
        self.skipped = skipped
        self.skippedReasons = skippedReasons
        self.tooLong = tooLong
        self.tooLongRows = tooLongRows
        self.padID = padID
    }

    /// Sum of the examples' lengths: the tokens of one epoch.
    public var tokenCount: Int { examples.reduce(0) { $0 + $1.count } }
    /// Targets of one epoch (labels[1...] that are not −100, summed).
    public var trainedTokenCount: Int { examples.reduce(0) { $0 + $1.trainedTokens } }

    /// Reads and tokenizes one data file, folder or glob (`load(paths:)`).
    public static func load(path: String, format: SFTFormat? = nil, tokenizer: Tokenizer, chatTemplate: ChatTemplate? = nil,
                            maxLength: Int, skipBad: Bool = false, textColumn: String = "text") throws(SFTDataError) -> SFTDataSet {
        try load(paths: [path], format: format, tokenizer: tokenizer, chatTemplate: chatTemplate, maxLength: maxLength,
                 skipBad: skipBad, textColumn: textColumn)
    }

    /// Reads and tokenizes data files (see `DataSources` for files, folders and globs,
    /// `SFTFormat` for the layouts and `SFTRow.tokenize` for the labels), their examples in
    /// the order of the files. Each example keeps its first `maxLength` tokens; a row whose
    /// trained tokens all lie past them is dropped and counted in `tooLong` (TRL would train
    /// on it with nothing to score).
    ///
    /// A bad row (invalid JSON, a missing key, a non-string value, an unknown role, empty
    /// content, no chat template for messages, nothing to train, a CSV record with the wrong
    /// field count) throws `.badRow(path, line, problem)`; with `skipBad` it is skipped and
    /// counted instead. A malformed CSV quote or JSON array always throws. No example left
    /// throws `.allTooLong` when every row that loaded was too long, else `.emptyDataSet`
    /// with the first reasons rows were skipped for.
    /// - Parameters:
    ///   - format: nil picks each file's from its extension.
    ///   - chatTemplate: needed for conversations (`LanguageModel.chatTemplate()`); Alpaca rows
    ///     without one read as prompt/completion.
    ///   - textColumn: the CSV column holding the text.
    public static func load(paths: [String], format: SFTFormat? = nil, tokenizer: Tokenizer, chatTemplate: ChatTemplate? = nil,
                            maxLength: Int, skipBad: Bool = false, textColumn: String = "text") throws(SFTDataError) -> SFTDataSet {
        precondition(maxLength > 1, "maxLength \(maxLength)")
        let sources = DataSources(paths)
        var examples: [SFTExample] = []
        var skipped = 0, tooLong = 0
        var reasons: [SFTDataError] = [], tooLongRows: [SFTDataError] = []
        for path in try sources.files(format: format) {
            let bytes = try DataSources.contents(of: path)
            guard let format = format ?? SFTFormat(path: path) else { throw .unknownFormat(path: path) }
            func add(line: Int, _ row: () throws(SFTRowProblem) -> SFTRow) throws(SFTDataError) {
                do {
                    var e = try row().tokenize(tokenizer: tokenizer, chatTemplate: chatTemplate, maxLength: maxLength)
                    e.line = line
                    examples.append(e)
                } catch {
                    let bad = SFTDataError.badRow(path: path, line: line, problem: error)
                    if case .trainedPastMaxLength = error {
                        tooLong += 1
                        if tooLongRows.count < reasonsKept { tooLongRows.append(bad) }
                        return
                    }
                    guard skipBad else { throw bad }
                    skipped += 1
                    if reasons.count < reasonsKept { reasons.append(bad) }
                }
            }
            switch format {
            case .text:
                examples += Self.chunks(String(decoding: bytes, as: UTF8.self), tokenizer: tokenizer, maxLength: maxLength)
            case .jsonl:
                for (line, text) in try DataSources.jsonRows(bytes, path: path) {
                    try add(line: line) { () throws(SFTRowProblem) in try SFTRow(json: text) }
                }
            case .csv:
                let records: [CSVReader.Record]
                do { records = try CSVReader.records(bytes) } catch { throw .badRow(path: path, line: error.line, problem: error.problem) }
                guard let header = records.first else { continue }
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
        }
        guard !examples.isEmpty else {
            throw skipped == 0 && tooLong > 0 ? .allTooLong(path: sources.description, dropped: tooLong, maxLength: maxLength)
                : .emptyDataSet(path: sources.description, skipped: skipped + tooLong, firstReasons: Array((reasons + tooLongRows).prefix(reasonsKept)))
        }
        return SFTDataSet(examples: examples, source: sources.description, skipped: skipped, skippedReasons: reasons,
                          tooLong: tooLong, tooLongRows: tooLongRows, padID: tokenizer.eos ?? 0)
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
}
