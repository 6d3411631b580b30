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
/// probe conversation [user "Q", assistant "A"] (and the same plus a user turn):
///   endOfTurn   what the template writes right after an assistant message's content, up to
///               the line's end, spaces trimmed: "<|im_end|>", "<|eot_id|>", "<end_of_turn>",
///               "</s>"… (EOS when that is empty); the assistant mask trains through it, and
///               generation stops at it
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
        let probe = [ChatMessage(.user, "Q"), ChatMessage(.assistant, "A")]
        let answer = (try? Self.render(jinja!, probe, tools: nil, addGenerationPrompt: false, bos: bos, eos: eos, now: now, variables: variables))?.text
        let next = (try? Self.render(jinja!, probe + [ChatMessage(.user, "Q")], tools: nil, addGenerationPrompt: true, bos: bos, eos: eos, now: now, variables: variables))?.text
        var end = "", closing = ""
        if let answer, let r = answer.range(of: "A", options: .backwards) {
            let tail = answer[r.upperBound...]
            end = String(tail.prefix { $0 != "\n" }).trimmingCharacters(in: .whitespaces)
            // The text past the turn's end that a following turn does not repeat.
            if let next {
                let shared = answer.utf8.count - zip(answer.utf8, next.utf8).prefix { $0 == $1 }.count
                let turnEnd = answer.utf8.distance(from: answer.startIndex, to: r.upperBound) + (tail.range(of: end).map { tail.utf8.distance(from: tail.startIndex, to: $0.upperBound) } ?? 0)
                if shared > 0, answer.utf8.count - shared >= turnEnd { closing = String(decoding: answer.utf8.suffix(shared), as: UTF8.self) }
            }
        }
        self.endOfTurn = end.isEmpty ? eos : end
        self.closing = closing
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
