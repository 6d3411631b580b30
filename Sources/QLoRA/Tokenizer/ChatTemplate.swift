import Foundation

/// One turn of a conversation. `fields` holds what else a data row gave the message
/// (`tool_calls`, `tool_call_id`, `name`, `reasoning_content`, …), passed to the template as
/// the message's other keys; Codable carries role and content only.
public struct ChatMessage: Sendable, Equatable, Codable {
    public enum Role: String, Sendable, Codable { case system, user, assistant, tool }
    public var role: Role
    public var content: String
    public var fields = JinjaDict()

    enum CodingKeys: String, CodingKey { case role, content }

    public init(_ role: Role, _ content: String, fields: JinjaDict = JinjaDict()) {
        self.role = role
        self.content = content
        self.fields = fields
    }

    /// The message as a chat template sees it: {"role", "content", then `fields`}.
    public var templateValue: JinjaValue {
        var d = JinjaDict([("role", .string(role.rawValue)), ("content", .string(content))])
        for (k, v) in fields { d[k] = v }
        return .dict(d)
    }
}

/// A chat model's prompt format: the model's own Jinja chat template (GGUF
/// `tokenizer.chat_template`, tokenizer_config.json `chat_template` or chat_template.jinja)
/// rendered by `JinjaTemplate` as transformers' `apply_chat_template(messages, tools=…,
/// add_generation_prompt=…, tokenize=False)` renders it, or, for a model that has none, a
/// built-in family named with `--chat-template` (`ChatTemplate.Family`, rendered by hand).
///
/// What training and generation need besides the text, read off the template by rendering a
/// probe conversation [user, assistant] (and the same plus a user turn):
///   endOfTurn   what the template writes right after an assistant message's content, up to
///               the line's end or the next turn's start (`endOfTurn(after:)`): "<|im_end|>",
///               "<|eot_id|>", "<end_of_turn>", "</s>"… (EOS when that is empty); the
///               assistant mask trains through it, and generation stops at it
///   closing     what a rendering without generation prompt writes once after the last message
///               and not after an earlier one (Phi-3.5's EOS); not part of any turn
public struct ChatTemplate: Sendable, Equatable {
    /// The model's template, or nil for a built-in family.
    public let jinja: JinjaTemplate?
    /// The built-in family, or nil for the model's own template.
    public let family: Family?
    /// The system prompt chatml adds when the conversation has none (SmolLM2's
    /// "You are a helpful AI assistant named SmolLM, trained by Hugging Face").
    public let defaultSystem: String?
    /// What gemma writes between a system prompt and the first user message; nil refuses a
    /// system message (Gemma 2).
    public let systemSeparator: String?
    /// The text of the tokenizer's BOS and EOS tokens (`bos_token`, `eos_token` in a template).
    public let bos: String
    public let eos: String
    public let endOfTurn: String
    public let closing: String
    /// What `strftime_now` reads (Llama 3.x's "Today Date"); the clock when nil.
    public let now: Date?
    /// What apply_chat_template's other keyword arguments pass to a template: `enable_thinking`
    /// (Qwen3, SmolLM3), `date_string` (Llama 3.x), …
    public let variables: [String: JinjaValue]

    /// A built-in family.
    public init(family: Family, defaultSystem: String? = nil, systemSeparator: String? = "\n\n", bos: String = "", eos: String = "") {
        self.jinja = nil
        self.family = family
        self.defaultSystem = defaultSystem
        self.systemSeparator = systemSeparator
        self.bos = bos
        self.eos = eos
        self.endOfTurn = family.endOfTurn(eos: eos)
        self.closing = family == .phi3 ? eos : ""
        self.now = nil
        self.variables = [:]
    }

    /// The model's own Jinja template; fails when the text is not Jinja or uses a construct
    /// the interpreter lacks (the error names it and its line).
    public init(template: String, bos: String = "", eos: String = "", now: Date? = nil, variables: [String: JinjaValue] = [:]) throws(ChatTemplateError) {
        do { jinja = try JinjaTemplate(template) } catch { throw .jinja(error) }
        family = nil
        defaultSystem = nil
        systemSeparator = nil
        self.bos = bos
        self.eos = eos
        self.now = now
        self.variables = variables
        let probe = [ChatMessage(.user, "qlora probe question"), ChatMessage(.assistant, "qlora probe answer")]
        let answer = (try? Self.render(jinja!, probe, tools: nil, addGenerationPrompt: false, bos: bos, eos: eos, now: now, variables: variables))?.text
        let next = (try? Self.render(jinja!, probe + [ChatMessage(.user, "qlora probe question")], tools: nil, addGenerationPrompt: true, bos: bos, eos: eos, now: now, variables: variables))?.text
        var end = "", closing = ""
        if let answer, let r = answer.range(of: "qlora probe answer", options: .backwards) {
            end = Self.endOfTurn(after: answer[r.upperBound...])
            // What the rendering without a following turn adds after the turn's end (and the
            // whitespace both share): the closing, when the following turn does not repeat it.
            let turnEnd = answer.utf8.distance(from: answer.startIndex, to: r.upperBound) + (answer[r.upperBound...].range(of: end).map {
                answer.utf8.distance(from: r.upperBound, to: $0.upperBound) } ?? 0)
            if let next, next.utf8.starts(with: answer.utf8.prefix(turnEnd)) {
                let tail = answer.utf8.dropFirst(turnEnd), following = next.utf8.dropFirst(turnEnd)
                let shared = zip(tail, following).prefix { $0 == $1 && [0x20, 0x0A, 0x09].contains($0) }.count
                if !tail.elementsEqual(following.prefix(tail.count)) { closing = String(decoding: tail.dropFirst(shared), as: UTF8.self) }
            }
        }
        self.endOfTurn = end.isEmpty ? eos : end
        self.closing = closing
    }

    /// The end-of-turn in what follows an answer: up to the line's end, spaces trimmed, and
    /// before the first `<…>` piece that starts something ("<|START_OF_TURN_TOKEN|>",
    /// "<|im_start|>", "<start_of_turn>"): Command R writes "<|END_RESPONSE|><|END_OF_TURN_TOKEN|>"
    /// then the next header on the same line.
    static func endOfTurn(after tail: Substring) -> String {
        var line = tail.prefix { $0 != "\n" }.trimmingCharacters(in: .whitespaces)
        var at = line.startIndex
        while let open = line[at...].firstIndex(of: "<"), let close = line[open...].firstIndex(of: ">") {
            if line[open...close].lowercased().contains("start") {
                line = String(line[..<open])
                break
            }
            at = line.index(after: close)
        }
        return line
    }

    public static func == (a: ChatTemplate, b: ChatTemplate) -> Bool {
        a.jinja?.source == b.jinja?.source && a.family == b.family && a.defaultSystem == b.defaultSystem && a.systemSeparator == b.systemSeparator
            && a.bos == b.bos && a.eos == b.eos && a.now == b.now && a.variables == b.variables
    }

    /// The conversation as the model reads it.
    public func render(_ messages: [ChatMessage], tools: JinjaValue? = nil, addGenerationPrompt: Bool) throws(ChatTemplateError) -> String {
        try rendering(messages, tools: tools, addGenerationPrompt: addGenerationPrompt).text
    }

    /// The text, and the UTF-8 byte ranges of it that the template's `{% generation %}`
    /// blocks wrote (none for a template without them, or a built-in family).
    public func rendering(_ messages: [ChatMessage], tools: JinjaValue? = nil, addGenerationPrompt: Bool) throws(ChatTemplateError) -> JinjaTemplate.Rendering {
        guard let jinja else {
            return JinjaTemplate.Rendering(text: try renderFamily(family!, messages, addGenerationPrompt: addGenerationPrompt), generationRanges: [])
        }
        do { return try Self.render(jinja, messages, tools: tools, addGenerationPrompt: addGenerationPrompt, bos: bos, eos: eos, now: now, variables: variables) } catch { throw .jinja(error) }
    }

    /// Whether the template marks assistant text with `{% generation %}` (TRL's training templates).
    public var hasGenerationMarkers: Bool { jinja?.hasGenerationMarkers ?? false }

    /// The variables transformers passes: messages, tools and documents (None when not
    /// given), add_generation_prompt, then the keyword arguments (bos_token and eos_token
    /// among them, as the tokenizer passes its special tokens).
    static func render(_ jinja: JinjaTemplate, _ messages: [ChatMessage], tools: JinjaValue?, addGenerationPrompt: Bool,
                       bos: String, eos: String, now: Date?, variables: [String: JinjaValue]) throws(JinjaError) -> JinjaTemplate.Rendering {
        var all = variables
        all.merge(["messages": .list(messages.map(\.templateValue)), "tools": tools ?? .none, "documents": .none,
                   "add_generation_prompt": .bool(addGenerationPrompt), "bos_token": .string(bos), "eos_token": .string(eos)]) { _, fixed in fixed }
        return try jinja.render(all, now: now ?? Date())
    }
}

public enum ChatTemplateError: Error, Equatable, CustomStringConvertible {
    case jinja(JinjaError)
    case missing(source: String)
    case rolesMustAlternate(family: ChatTemplate.Family)
    case systemNotSupported(family: ChatTemplate.Family)

    static let families = ChatTemplate.Family.allCases.map(\.rawValue).joined(separator: "|")

    public var description: String {
        switch self {
        case let .jinja(e):
            if case .raised = e.kind { "\(e)" } else { "\(e)\n---> HINT: pass --chat-template \(Self.families) to use a built-in format instead" }
        case let .missing(source):
            "\(source) has no chat template\n---> HINT: pass --chat-template \(Self.families), or --prompt for plain text"
        case let .rolesMustAlternate(family):
            "\(family.rawValue): conversation roles must alternate user/assistant/user/assistant/..."
        case let .systemNotSupported(family):
            "\(family.rawValue): this template has no system role (Gemma 2's); put the instructions in the first user message"
        }
    }
}
