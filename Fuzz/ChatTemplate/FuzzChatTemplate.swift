import Foundation
import FuzzSupport
import QLoRA

/// One chat template (Jinja) through the parser and renderer with a fixed conversation: it must
/// throw or render, never crash, hang or grow without bound.
func fuzzOne(_ bytes: UnsafeRawBufferPointer) {
    guard let template = try? ChatTemplate(template: String(decoding: bytes, as: UTF8.self), bos: "<s>", eos: "</s>") else { return }
    let messages = [ChatMessage(.system, "Be brief."), ChatMessage(.user, "What is 2 + 2?"), ChatMessage(.assistant, "4."),
                    ChatMessage(.user, "And 3 + 3?")]
    _ = try? template.render(messages, addGenerationPrompt: true)
}

@main
struct Main {
    static func main() throws { try fuzzMain(reader: "chat-template", fuzzOne) }
}
