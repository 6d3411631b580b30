import Foundation

/// What is wrong with one row of an SFT data file. `SFTDataError.badRow` adds the file and line.
public enum SFTRowProblem: Error, Equatable, Sendable, CustomStringConvertible {
    case invalidJSON(detail: String)
    /// A JSON line that is not an object: `kind` is what it is ("array", "string"...).
    case notAnObject(kind: String)
    /// None of `text`, `prompt`/`completion`, `messages`; or one of a pair without the other.
    case missingKey(String)
    case wrongType(key: String, expected: String)
    case unknownRole(message: Int, role: String)
    /// A ShareGPT message whose `from` is none of system, human, gpt, user, assistant.
    case unknownSpeaker(key: String, from: String)
    /// `key` is "text", "prompt", "completion", "messages" (an empty list) or "messages[i].content".
    case emptyContent(key: String)
    case noChatTemplate
    case template(ChatTemplateError)
    /// Rendering messages[..<i] (with the generation prompt) is a prefix neither of rendering
    /// messages[...i] nor of the whole conversation: the template rewrites earlier turns.
    case templateNotIncremental(message: Int)
    /// The tokens of the rendered conversation do not spell it byte for byte, so tokens cannot
    /// be traced to turns.
    case untraceableTokens
    /// Nothing to train: every label after the first is −100 (a conversation without an
    /// assistant turn).
    case allLabelsMasked(tokens: Int)
    /// Every trained token lies past max length (the first at `firstTrained`): the row is
    /// dropped and counted, not an error (`SFTDataSet.tooLong`).
    case trainedPastMaxLength(tokens: Int, firstTrained: Int, maxLength: Int)
    /// A preference pair whose longer side (prompt + completion) has more than max length
    /// tokens: dropped and counted (`PreferenceDataSet.tooLong`).
    case longerThanMaxLength(tokens: Int, maxLength: Int)
    case csvFieldCount(found: Int, expected: Int)
    case csvCharacterAfterQuote(character: String)
    case csvUnterminatedQuote
    /// A preference row whose chosen and rejected are the same (before any prompt is taken off).
    case chosenEqualsRejected
    /// A preference row with an explicit `prompt` whose `side` ("chosen" or "rejected") is a
    /// whole conversation (it does not start with an assistant message) not starting with it.
    case promptNotPrefix(side: String)
    /// A preference row with no `prompt` whose chosen and rejected have no first message
    /// (or first character) in common: there is no prompt to extract.
    case noSharedPrompt

    public var description: String {
        switch self {
        case let .invalidJSON(detail): "invalid JSON: \(detail)"
        case let .notAnObject(kind): "a row must be a JSON object, found \(kind)"
        case let .missingKey(key): "missing key \(key)"
        case let .wrongType(key, expected): "'\(key)' must be \(expected)"
        case let .unknownRole(message, role):
            "messages[\(message)] has unknown role '\(role)' (known: \(ChatMessage.Role.allNames))"
        case let .emptyContent(key): "'\(key)' is empty"
        case .noChatTemplate: "a messages row needs a chat template, and none was given\n---> HINT: pass --chat-template " + ChatTemplate.Family.allCases.map(\.rawValue).joined(separator: "|")
        case let .template(error): error.description
        case let .templateNotIncremental(message):
            "the chat template renders messages[...\(message)] with a different start than messages[..<\(message)], so turns cannot be masked"
        case .untraceableTokens: "the tokens of the rendered conversation do not spell it byte for byte, so turns cannot be masked"
        case let .unknownSpeaker(key, from):
            "'\(key)' is '\(from)', not a ShareGPT speaker (known: \(SFTRow.shareGPTSpeakers.keys.sorted().joined(separator: ", ")))"
        case let .allLabelsMasked(tokens):
            "nothing to train: every label of its \(tokens) tokens is masked\n---> HINT: a conversation needs an assistant turn"
        case let .trainedPastMaxLength(tokens, firstTrained, maxLength):
            "its \(tokens) tokens are trained from token \(firstTrained) on, past max length \(maxLength)"
        case let .longerThanMaxLength(tokens, maxLength): "its longer side has \(tokens) tokens, over max length \(maxLength)"
        case let .csvFieldCount(found, expected): "\(found) fields, the header has \(expected)"
        case let .csvCharacterAfterQuote(character): "'\(character)' after a closing quote (expected ',' or a line end)"
        case .csvUnterminatedQuote: "a quoted field is never closed"
        case .chosenEqualsRejected: "'chosen' and 'rejected' are identical: the pair prefers nothing"
        case let .promptNotPrefix(side):
            "'\(side)' is a whole conversation that does not start with the 'prompt' messages"
            + "\n---> HINT: give '\(side)' as the assistant reply alone, or as the prompt's messages followed by it"
        case .noSharedPrompt: "'chosen' and 'rejected' share no prompt: they differ from their first message (or character)"
            + "\n---> HINT: add a 'prompt' key"
        }
    }
}

/// Why an SFT data file could not be loaded, batched or resumed. Rows are named path:line
/// (1-based physical lines; for CSV the line where the record starts, for a JSON array the line
/// where the element starts).
public enum SFTDataError: Error, Equatable, Sendable, CustomStringConvertible {
    case unreadable(path: String, reason: String)
    case unknownFormat(path: String)
    /// A folder without data files, a glob matching no file.
    case noDataFiles(source: String, reason: String)
    case badRow(path: String, line: Int, problem: SFTRowProblem)
    case missingColumn(path: String, column: String, header: [String])
    /// No example left: the file had no rows, or every row was skipped (`firstReasons` says why).
    case emptyDataSet(path: String, skipped: Int, firstReasons: [SFTDataError])
    case tooFewToSplit(path: String, examples: Int)
    /// Nothing left: each row that loaded was too long for `maxLength` (an SFT row's trained
    /// tokens all past it, a pair's longer side over it).
    case allTooLong(path: String, dropped: Int, maxLength: Int)
    /// A saved `BatchIterator.State` that does not fit the examples it is resumed on.
    case stateMismatch(detail: String)

    public var description: String {
        switch self {
        case let .unreadable(path, reason): "cannot read \(path): \(reason)"
        case let .unknownFormat(path):
            "\(path): unknown data format\n---> HINT: name it .jsonl, .json, .csv or .txt, or pass --data-format jsonl|csv|text"
        case let .noDataFiles(source, reason): "\(source): \(reason)"
        case let .badRow(path, line, problem): "\(path):\(line): \(problem)"
        case let .missingColumn(path, column, header):
            "\(path):1: no column '\(column)' in the header (\(header.joined(separator: ", ")))\n---> HINT: pass --text-column NAME"
        case let .emptyDataSet(path, skipped, firstReasons):
            skipped == 0 ? "\(path): no examples" : "\(path): no examples: all \(skipped) rows were skipped, first:\n"
                + firstReasons.map { "  \($0)" }.joined(separator: "\n")
        case let .tooFewToSplit(path, examples): "\(path): \(examples) example(s) cannot be split into training and validation sets"
        case let .allTooLong(path, dropped, maxLength):
            "\(path): nothing left: all \(dropped) rows are too long for max length \(maxLength) "
                + "(the trained tokens of an SFT row start past it; a pair's longer side is over it)\n---> HINT: raise --max-len"
        case let .stateMismatch(detail): "cannot resume the data order: \(detail)"
        }
    }
}

extension ChatMessage.Role {
    static let allNames = "system, user, assistant, tool"
}
