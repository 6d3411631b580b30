import Foundation

/// The JSON layouts of an SFT row, as users of TRL, axolotl, Unsloth and mlx-lm bring them.
/// The first key present, in this order, decides the layout; other keys are ignored:
///
///   messages        {"messages": [{"role": "system"|"user"|"assistant"|"tool", "content": "..."}, ...]}
///                   TRL's conversational language modelling, mlx-lm's chat   → .messages
///                   (other keys of a message, "tool_calls", "tool_call_id", "name"…, go to
///                   the chat template as they are; content may be left out beside "tool_calls")
///   conversations   {"conversations": [{"from": "system"|"human"|"gpt", "value": "..."}, ...]}
///                   ShareGPT (axolotl's and Unsloth's sharegpt); "user" and "assistant" are
///                   taken for from, and {role, content} items as Unsloth's
///                   standardize_sharegpt writes them                         → .messages
///   instruction     {"instruction": "...", "input": "...", "output": "..."}
///                   Alpaca; input is optional and may be empty               → .instruction
///   prompt          {"prompt": "...", "completion": "..."}                   → .promptCompletion
///   completion      {"prompt": [messages], "completion": [messages]}         → .conversation
///                   TRL's prompt–completion, standard and conversational
///   text            {"text": "..."}                                          → .text
extension SFTRow {
    /// ShareGPT's speakers (`from`) and the roles they take.
    static let shareGPTSpeakers: [String: ChatMessage.Role] = ["system": .system, "human": .user, "user": .user,
                                                               "gpt": .assistant, "assistant": .assistant]

    /// One JSON row → its `SFTRow`, checking keys, types, roles and emptiness.
    init(json line: ArraySlice<UInt8>) throws(SFTRowProblem) {
        let object = try Self.jsonObject(line)
        func string(_ key: String, emptyAllowed: Bool = false) throws(SFTRowProblem) -> String {
            guard let v = object[key] else { throw .missingKey("'\(key)'") }
            guard let s = v as? String else { throw .wrongType(key: key, expected: "a string") }
            guard emptyAllowed || !s.isEmpty else { throw .emptyContent(key: key) }
            return s
        }
        if let m = object["messages"] {
            self = .messages(try Self.messages(m, key: "messages", row: line))
        } else if let c = object["conversations"] {
            self = .messages(try Self.messages(c, key: "conversations", shareGPT: true))
        } else if object["instruction"] != nil {
            self = .instruction(instruction: try string("instruction"), input: object["input"] == nil ? "" : try string("input", emptyAllowed: true),
                                output: try string("output"))
        } else if object["prompt"] != nil || object["completion"] != nil {
            guard let p = object["prompt"] else { throw .missingKey("'prompt'") }
            guard let c = object["completion"] else { throw .missingKey("'completion'") }
            if p is [Any] || c is [Any] {
                guard p is [Any] else { throw .wrongType(key: "prompt", expected: "a list of messages, as 'completion' is") }
                guard c is [Any] else { throw .wrongType(key: "completion", expected: "a list of messages, as 'prompt' is") }
                self = .conversation(prompt: try Self.messages(p, key: "prompt", row: line), completion: try Self.messages(c, key: "completion", row: line))
            } else {
                self = .promptCompletion(prompt: try string("prompt"), completion: try string("completion"))
            }
        } else if object["text"] != nil {
            self = .text(try string("text"))
        } else {
            throw .missingKey("'messages', 'conversations', 'instruction'/'output', 'prompt'/'completion' or 'text' "
                              + "(found: \(object.keys.sorted().joined(separator: ", ")))")
        }
    }

    /// A JSON row's object; invalid JSON and other values than an object throw.
    static func jsonObject(_ line: ArraySlice<UInt8>) throws(SFTRowProblem) -> [String: Any] {
        let value: Any
        do { value = try JSONSerialization.jsonObject(with: Data(line), options: [.fragmentsAllowed]) } catch {
            throw .invalidJSON(detail: (error as NSError).userInfo[NSDebugDescriptionErrorKey] as? String ?? "\(error)")
        }
        guard let object = value as? [String: Any] else {
            throw .notAnObject(kind: value is [Any] ? "an array" : value is String ? "a string" : value is NSNull ? "null" : "a number or boolean")
        }
        return object
    }

    /// A non-empty JSON list of {role, content} with known roles and non-blank content (or
    /// content absent, null or empty beside `tool_calls`); problems name `key[i]`. With
    /// `shareGPT`, items may be {from, value} instead, `from` one of `shareGPTSpeakers`. A
    /// message's other keys (`tool_calls`, `tool_call_id`, `name`, `reasoning_content`, …)
    /// become its fields, read again from `row` with `JinjaValue(json:)` so that objects keep
    /// their key order for tojson.
    static func messages(_ value: Any, key: String, shareGPT: Bool = false, row: ArraySlice<UInt8>? = nil) throws(SFTRowProblem) -> [ChatMessage] {
        guard let list = value as? [Any] else { throw .wrongType(key: key, expected: shareGPT ? "a list of {from, value}" : "a list of {role, content}") }
        guard !list.isEmpty else { throw .emptyContent(key: key) }
        var ordered: [JinjaValue]?
        var out: [ChatMessage] = []
        for (i, item) in list.enumerated() {
            let at = "\(key)[\(i)]"
            guard let d = item as? [String: Any] else { throw .wrongType(key: at, expected: shareGPT ? "an object {from, value}" : "an object {role, content}") }
            let (roleKey, contentKey) = shareGPT && d["role"] == nil ? ("from", "value") : ("role", "content")
            guard let roleValue = d[roleKey] else { throw .missingKey("'\(roleKey)' in \(at)") }
            guard let roleName = roleValue as? String else { throw .wrongType(key: "\(at).\(roleKey)", expected: "a string") }
            let role: ChatMessage.Role
            if roleKey == "from" {
                guard let r = shareGPTSpeakers[roleName] else { throw .unknownSpeaker(key: "\(at).from", from: roleName) }
                role = r
            } else {
                guard let r = ChatMessage.Role(rawValue: roleName) else { throw .unknownRole(message: i, role: roleName) }
                role = r
            }
            let toolCalls = d["tool_calls"].map { !($0 is NSNull) } ?? false
            var content = ""
            switch d[contentKey] {
            case nil where toolCalls, is NSNull where toolCalls: break
            case nil: throw .missingKey("'\(contentKey)' in \(at)")
            case let s as String:
                guard toolCalls || !s.trimmingCharacters(in: .whitespacesAndNewlines).isEmpty else { throw .emptyContent(key: "\(at).\(contentKey)") }
                content = s
            default: throw .wrongType(key: "\(at).\(contentKey)", expected: "a string")
            }
            var fields = JinjaDict()
            if let row, d.keys.contains(where: { $0 != roleKey && $0 != contentKey }) {
                if ordered == nil, case let .dict(o)? = try? JinjaValue(json: String(decoding: row, as: UTF8.self)), case let .list(l)? = o[key] { ordered = l }
                if let ordered, i < ordered.count, case let .dict(m) = ordered[i] {
                    for (k, v) in m where k != roleKey && k != contentKey { fields[k] = v }
                }
            }
            out.append(ChatMessage(role, content, fields: fields))
        }
        return out
    }
}
