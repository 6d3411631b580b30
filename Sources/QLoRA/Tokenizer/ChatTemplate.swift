import Foundation

/// One turn of a conversation.
public struct ChatMessage: Sendable, Equatable, Codable {
    public enum Role: String, Sendable, Codable { case system, user, assistant }
    public var role: Role
    public var content: String
    public init(_ role: Role, _ content: String) {
        self.role = role
        self.content = content
    }
}

/// The prompt formats of the chat models qlora runs, rendered as transformers'
/// `apply_chat_template(messages, add_generation_prompt:)` renders each family's Jinja template.
/// The family is recognized from the template text (GGUF `tokenizer.chat_template`,
/// tokenizer_config.json `chat_template` or chat_template.jinja), not from the model name:
///
///   chatml   `<|im_start|>`          SmolLM2, Qwen2:
///            [<|im_start|>system\n{default}<|im_end|>\n when the first message is not system]
///            <|im_start|>{role}\n{content}<|im_end|>\n ...   [<|im_start|>assistant\n]
///   llama3   `<|start_header_id|>`   Llama 3 (3.0's template):
///            {bos}<|start_header_id|>{role}<|end_header_id|>\n\n{content trimmed}<|eot_id|> ...
///            [<|start_header_id|>assistant<|end_header_id|>\n\n]
///   llama2   `[INST]` and `<<SYS>>`   Llama 2:
///            {bos}[INST] {<<SYS>>\n{system}\n<</SYS>>\n\n}{user, stripped} [/INST] {assistant, stripped} {eos}...
///            (no generation prompt: the text already ends where the assistant starts)
///   gemma    `<start_of_turn>`       Gemma 2 and 3:
///            {bos}<start_of_turn>user\n{system + "\n\n", first turn only}{content trimmed}<end_of_turn>\n
///            <start_of_turn>model\n{content trimmed}<end_of_turn>\n ...   [<start_of_turn>model\n]
///            (Gemma 2's template refuses a system message: `systemSeparator` nil)
///   phi3     `<|user|>`, `<|end|>`, `<|system|>`   Phi-3.5 (and Phi-3 since its July 2024 update):
///            [<|system|>\n{system}<|end|>\n when not empty] <|{role}|>\n{content}<|end|>\n ...
///            then <|assistant|>\n with the generation prompt, {eos} without
///   phi3Legacy  the same without `<|system|>`   Phi-3's first template (Phi-3 GGUFs of 2024):
///            {bos}<|user|>\n{content}<|end|>\n<|assistant|>\n {content}<|end|>\n ... (system
///            messages dropped; the assistant header follows every user turn, prompt or not)
///
/// Gemma and llama2 refuse roles that do not alternate user/assistant (a system message
/// first aside), as their templates do.
/// Templates with tools (chatml aside: Qwen2.5's renders as chatml without them), reasoning
/// (`<think>`: Qwen3, SmolLM3), Llama 3.1's dated system header or Mistral's [INST] without
/// <<SYS>> render otherwise, and are not recognized: pass a family by name instead.
public struct ChatTemplate: Sendable, Equatable {
    public enum Family: String, Sendable, CaseIterable {
        case chatml, llama3, llama2, gemma, phi3
        case phi3Legacy = "phi3-legacy"
    }

    public let family: Family
    /// The system prompt the template adds when the conversation has none (SmolLM2's
    /// "You are a helpful AI assistant named SmolLM, trained by Hugging Face"); chatml only.
    public let defaultSystem: String?
    /// What gemma writes between a system prompt and the first user message ("\n\n" in
    /// Gemma 3's template); nil where the template refuses a system message (Gemma 2's).
    public let systemSeparator: String?
    /// The text of the tokenizer's BOS and EOS tokens, which llama3, llama2, gemma and phi3
    /// write into the prompt.
    public let bos: String
    public let eos: String

    public init(family: Family, defaultSystem: String? = nil, systemSeparator: String? = "\n\n", bos: String = "", eos: String = "") {
        self.family = family
        self.defaultSystem = defaultSystem
        self.systemSeparator = systemSeparator
        self.bos = bos
        self.eos = eos
    }

    /// Recognizes the family of a Jinja chat template.
    public init(template: String, bos: String = "", eos: String = "") throws(ChatTemplateError) {
        if template.contains("<|im_start|>") {
            // Qwen3's and SmolLM3's reasoning templates write <think> blocks into assistant turns.
            guard !template.contains("<think>") else { throw .unrecognized(excerpt: Self.excerpt(template)) }
            self.init(family: .chatml, defaultSystem: Self.chatMLDefaultSystem(template), bos: bos, eos: eos)
        } else if template.contains("<|start_header_id|>") {
            guard !template.contains("Cutting Knowledge Date"), !template.contains("tools") else { throw .unrecognized(excerpt: Self.excerpt(template)) }
            self.init(family: .llama3, bos: bos, eos: eos)
        } else if template.contains("[INST]") && template.contains("<<SYS>>") {
            self.init(family: .llama2, bos: bos, eos: eos)
        } else if template.contains("<start_of_turn>") && !template.contains("tools") {
            if template.contains("System role not supported") {
                self.init(family: .gemma, systemSeparator: nil, bos: bos, eos: eos)
            } else if let separator = Self.gemmaSystemSeparator(template) {
                self.init(family: .gemma, systemSeparator: separator, bos: bos, eos: eos)
            } else {
                throw .unrecognized(excerpt: Self.excerpt(template))
            }
        } else if ["<|user|>", "<|assistant|>", "<|end|>"].allSatisfy(template.contains) && !template.contains("tools") {
            self.init(family: template.contains("<|system|>") ? .phi3 : .phi3Legacy, bos: bos, eos: eos)
        } else {
            throw .unrecognized(excerpt: Self.excerpt(template))
        }
    }

    /// The token that ends an assistant turn, besides EOS.
    public var endOfTurn: String {
        switch family {
        case .chatml: "<|im_end|>"
        case .llama3: "<|eot_id|>"
        case .llama2: eos
        case .gemma: "<end_of_turn>"
        case .phi3, .phi3Legacy: "<|end|>"
        }
    }

    /// What render writes after the last message when there is no generation prompt: phi3's EOS.
    public var closing: String { family == .phi3 ? eos : "" }

    public func render(_ messages: [ChatMessage], addGenerationPrompt: Bool) throws(ChatTemplateError) -> String {
        switch family {
        case .chatml:
            var out = ""
            if let defaultSystem, messages.first?.role != .system { out += "<|im_start|>system\n\(defaultSystem)<|im_end|>\n" }
            for m in messages { out += "<|im_start|>\(m.role.rawValue)\n\(m.content)<|im_end|>\n" }
            if addGenerationPrompt { out += "<|im_start|>assistant\n" }
            return out
        case .llama3:
            var out = ""
            for (i, m) in messages.enumerated() {
                out += (i == 0 ? bos : "") + "<|start_header_id|>\(m.role.rawValue)<|end_header_id|>\n\n\(Self.strip(m.content))<|eot_id|>"
            }
            if addGenerationPrompt { out += "<|start_header_id|>assistant<|end_header_id|>\n\n" }
            return out
        case .llama2:
            var turns = messages[...]
            var system: String?
            if turns.first?.role == .system { system = turns.removeFirst().content }
            var out = ""
            for (i, m) in turns.enumerated() {
                guard (m.role == .user) == (i % 2 == 0) else { throw .rolesMustAlternate(family: family) }
                let content = i == 0 && system != nil ? "<<SYS>>\n\(system!)\n<</SYS>>\n\n\(m.content)" : m.content
                out += m.role == .user ? "\(bos)[INST] \(Self.strip(content)) [/INST]" : " \(Self.strip(content)) \(eos)"
            }
            return out
        case .gemma:
            var turns = messages[...]
            var firstPrefix = ""
            if turns.first?.role == .system {
                guard let systemSeparator else { throw .systemNotSupported(family: family) }
                firstPrefix = turns.removeFirst().content + systemSeparator
            }
            var out = bos
            for (i, m) in turns.enumerated() {
                guard (m.role == .user) == (i % 2 == 0) else { throw .rolesMustAlternate(family: family) }
                let role = m.role == .assistant ? "model" : m.role.rawValue
                out += "<start_of_turn>\(role)\n" + (i == 0 ? firstPrefix : "") + Self.strip(m.content) + "<end_of_turn>\n"
            }
            if addGenerationPrompt { out += "<start_of_turn>model\n" }
            return out
        case .phi3:
            var out = ""
            for m in messages where m.role != .system || !m.content.isEmpty { out += "<|\(m.role.rawValue)|>\n\(m.content)<|end|>\n" }
            return out + (addGenerationPrompt ? "<|assistant|>\n" : eos)
        case .phi3Legacy:
            var out = bos
            for m in messages {
                switch m.role {
                case .user: out += "<|user|>\n\(m.content)<|end|>\n<|assistant|>\n"
                case .assistant: out += "\(m.content)<|end|>\n"
                case .system: break
                }
            }
            return out
        }
    }

    /// Gemma 3's `first_user_prefix = messages[0]['content'] + '…'`: the literal, its escapes
    /// (\n, \t, \\, \') read as Jinja reads them.
    static func gemmaSystemSeparator(_ template: String) -> String? {
        let pattern = #"first_user_prefix = messages\[0\]\['content'\] \+ '((?:[^'\\]|\\.)*)'"#
        guard let regex = try? NSRegularExpression(pattern: pattern),
              let m = regex.firstMatch(in: template, range: NSRange(template.startIndex..., in: template)),
              let r = Range(m.range(at: 1), in: template) else { return nil }
        var out = "", escaped = false
        for c in template[r] {
            if escaped {
                switch c {
                case "n": out.append("\n")
                case "t": out.append("\t")
                default: out.append(c)
                }
                escaped = false
            } else if c == "\\" {
                escaped = true
            } else {
                out.append(c)
            }
        }
        return out
    }

    /// The literal system prompt a ChatML template writes when the first message is not system:
    /// '<|im_start|>system\n…<|im_end|>' as one string literal, newline written as is or as \n.
    static func chatMLDefaultSystem(_ template: String) -> String? {
        let pattern = #"'<\|im_start\|>system(?:\n|\\n)([^'"{}+]*?)<\|im_end\|>"#
        guard let regex = try? NSRegularExpression(pattern: pattern),
              let m = regex.firstMatch(in: template, range: NSRange(template.startIndex..., in: template)),
              let r = Range(m.range(at: 1), in: template) else { return nil }
        return template[r].replacingOccurrences(of: "\\n", with: "\n")
    }

    /// Python's str.strip() (Jinja's trim): whitespace off both ends.
    static func strip(_ s: String) -> String { s.trimmingCharacters(in: .whitespacesAndNewlines) }

    static func excerpt(_ template: String) -> String { template.count > 80 ? String(template.prefix(77)) + "..." : template }
}

public enum ChatTemplateError: Error, Equatable, CustomStringConvertible {
    case unrecognized(excerpt: String)
    case missing(source: String)
    case rolesMustAlternate(family: ChatTemplate.Family)
    case systemNotSupported(family: ChatTemplate.Family)

    static let families = ChatTemplate.Family.allCases.map(\.rawValue).joined(separator: "|")

    public var description: String {
        switch self {
        case let .unrecognized(excerpt):
            "unrecognized chat template \"\(excerpt)\"\n---> HINT: pass --chat-template \(Self.families)"
        case let .missing(source):
            "\(source) has no chat template\n---> HINT: pass --chat-template \(Self.families), or --prompt for plain text"
        case let .rolesMustAlternate(family):
            "\(family.rawValue): conversation roles must alternate user/assistant/user/assistant/..."
        case let .systemNotSupported(family):
            "\(family.rawValue): this template has no system role (Gemma 2's); put the instructions in the first user message"
        }
    }
}
