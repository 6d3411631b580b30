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
///
/// Templates with tools, Llama 3.1's dated system header or Mistral's [INST] without <<SYS>>
/// render otherwise, and are not recognized: pass a family by name instead.
public struct ChatTemplate: Sendable, Equatable {
    public enum Family: String, Sendable, CaseIterable { case chatml, llama3, llama2 }

    public let family: Family
    /// The system prompt the template adds when the conversation has none (SmolLM2's
    /// "You are a helpful AI assistant named SmolLM, trained by Hugging Face"); chatml only.
    public let defaultSystem: String?
    /// The text of the tokenizer's BOS and EOS tokens, which llama3 and llama2 write into the prompt.
    public let bos: String
    public let eos: String

    public init(family: Family, defaultSystem: String? = nil, bos: String = "", eos: String = "") {
        self.family = family
        self.defaultSystem = defaultSystem
        self.bos = bos
        self.eos = eos
    }

    /// Recognizes the family of a Jinja chat template.
    public init(template: String, bos: String = "", eos: String = "") throws(ChatTemplateError) {
        if template.contains("<|im_start|>") {
            self.init(family: .chatml, defaultSystem: Self.chatMLDefaultSystem(template), bos: bos, eos: eos)
        } else if template.contains("<|start_header_id|>") {
            guard !template.contains("Cutting Knowledge Date"), !template.contains("tools") else { throw .unrecognized(excerpt: Self.excerpt(template)) }
            self.init(family: .llama3, bos: bos, eos: eos)
        } else if template.contains("[INST]") && template.contains("<<SYS>>") {
            self.init(family: .llama2, bos: bos, eos: eos)
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
        }
    }

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
        }
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

    public var description: String {
        switch self {
        case let .unrecognized(excerpt):
            "unrecognized chat template \"\(excerpt)\"\n---> HINT: pass --chat-template chatml|llama3|llama2"
        case let .missing(source):
            "\(source) has no chat template\n---> HINT: pass --chat-template chatml|llama3|llama2, or --prompt for plain text"
        case let .rolesMustAlternate(family):
            "\(family.rawValue): conversation roles must alternate user/assistant/user/assistant/..."
        }
    }
}
