import Foundation

/// The built-in families, rendered by hand for models that ship no chat template
/// (`--chat-template NAME`), as transformers renders each family's Jinja template:
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
/// first aside), as their templates do. Tool messages and tool calls have no place in these
/// renderings: a family renders role and content only.
extension ChatTemplate {
    public enum Family: String, Sendable, CaseIterable {
        case chatml, llama3, llama2, gemma, phi3
        case phi3Legacy = "phi3-legacy"

        /// The token that ends an assistant turn, besides EOS.
        func endOfTurn(eos: String) -> String {
            switch self {
            case .chatml: "<|im_end|>"
            case .llama3: "<|eot_id|>"
            case .llama2: eos
            case .gemma: "<end_of_turn>"
            case .phi3, .phi3Legacy: "<|end|>"
            }
        }
    }

    func renderFamily(_ family: Family, _ messages: [ChatMessage], addGenerationPrompt: Bool) throws(ChatTemplateError) -> String {
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
                case .system, .tool: break
                }
            }
            return out
        }
    }

    /// The literal system prompt a ChatML template writes when the first message is not system:
    /// '<|im_start|>system\n…<|im_end|>' as one string literal, newline written as is or as \n.
    public static func chatMLDefaultSystem(_ template: String) -> String? {
        let pattern = #"'<\|im_start\|>system(?:\n|\\n)([^'"{}+]*?)<\|im_end\|>"#
        guard let regex = try? NSRegularExpression(pattern: pattern),
              let m = regex.firstMatch(in: template, range: NSRange(template.startIndex..., in: template)),
              let r = Range(m.range(at: 1), in: template) else { return nil }
        return template[r].replacingOccurrences(of: "\\n", with: "\n")
    }

    /// Python's str.strip() (Jinja's trim): whitespace off both ends.
    static func strip(_ s: String) -> String { s.trimmingCharacters(in: .whitespacesAndNewlines) }

}
