import Foundation

/// The JSON layouts of an SFT row, as users of TRL, axolotl, Unsloth and mlx-lm bring them.
/// The first key present, in this order, decides the layout; other keys are ignored:
///
///   messages        {"messages": [{"role": "system"|"user"|"assistant", "content": "..."}, ...]}
///                   TRL's conversational language modelling, mlx-lm's chat   → .messages
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
            self = .messages(try Self.messages(m, key: "messages"))
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
                self = .conversation(prompt: try Self.messages(p, key: "prompt"), completion: try Self.messages(c, key: "completion"))
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

    /// A non-empty JSON list of {role, content} with known roles and non-blank content;
    /// problems name `key[i]`. With `shareGPT`, items may be {from, value} instead, `from`
    /// one of `shareGPTSpeakers`.
    static func messages(_ value: Any, key: String, shareGPT: Bool = false) throws(SFTRowProblem) -> [ChatMessage] {
        guard let list = value as? [Any] else { throw .wrongType(key: key, expected: shareGPT ? "a list of {from, value}" : "a list of {role, content}") }
        guard !list.isEmpty else { throw .emptyContent(key: key) }
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
            guard let contentValue = d[contentKey] else { throw .missingKey("'\(contentKey)' in \(at)") }
            guard let content = contentValue as? String else { throw .wrongType(key: "\(at).\(contentKey)", expected: "a string") }
            guard !content.trimmingCharacters(in: .whitespacesAndNewlines).isEmpty else { throw .emptyContent(key: "\(at).\(contentKey)") }
            out.append(ChatMessage(role, content))
        }
        return out
    }
}
