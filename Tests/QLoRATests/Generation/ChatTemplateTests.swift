import Foundation
import QLoRA
import XCTest

/// Renderings against jinja2 running each family's real template (tools/make_chat_template_fixtures.py),
/// and SmolLM2's own template from its GGUF against transformers (tools/make_smollm2_reference.py).
final class ChatTemplateTests: XCTestCase {
    static let fixtures = Bundle.module.url(forResource: "Fixtures", withExtension: nil)!
    static let modelPath = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
        .appendingPathComponent("../../../models/SmolLM2-135M-Instruct.Q4_1.gguf").standardized.path

    struct Fixture: Decodable {
        struct Template: Decodable {
            let bos: String
            let eos: String
            let template: String
        }
        struct Case: Decodable {
            let template: String
            let conversation: String
            let add_generation_prompt: Bool
            let text: String
        }
        let templates: [String: Template]
        let conversations: [String: [ChatMessage]]
        let cases: [Case]
    }

    struct SmolLM2Chat: Decodable {
        struct Chat: Decodable {
            let messages: [ChatMessage]
            let prompt: String
            let ids: [Int]
        }
        let chat: Chat
    }

    func testFamiliesRenderAsJinja() throws {
        let f = try JSONDecoder().decode(Fixture.self, from: Data(contentsOf: Self.fixtures.appendingPathComponent("chat-templates.json")))
        XCTAssertEqual(f.cases.count, 24)
        for c in f.cases {
            let t = try XCTUnwrap(f.templates[c.template])
            let template = try ChatTemplate(template: t.template, bos: t.bos, eos: t.eos)
            let text = try template.render(try XCTUnwrap(f.conversations[c.conversation]), addGenerationPrompt: c.add_generation_prompt)
            XCTAssertEqual(text, c.text, "\(c.template) \(c.conversation) add_generation_prompt=\(c.add_generation_prompt)")
        }
    }

    func testSmolLM2TemplateFromGGUFMatchesTransformers() throws {
        guard FileManager.default.fileExists(atPath: Self.modelPath) else { throw XCTSkip("\(Self.modelPath) missing: run tools/setup.sh") }
        let ref = try JSONDecoder().decode(SmolLM2Chat.self, from: Data(contentsOf: Self.fixtures.appendingPathComponent("smollm2-reference.json")))
        let g = try GGUFFile(path: Self.modelPath)
        let tokenizer = try Tokenizer(gguf: g)
        let template = try ChatTemplate(template: try XCTUnwrap(g.metadata["tokenizer.chat_template"]?.string))
        XCTAssertEqual(template.family, .chatml)
        XCTAssertEqual(template.defaultSystem, "You are a helpful AI assistant named SmolLM, trained by Hugging Face")
        let prompt = try template.render(ref.chat.messages, addGenerationPrompt: true)
        XCTAssertEqual(prompt, ref.chat.prompt)
        XCTAssertEqual(tokenizer.encode(prompt), ref.chat.ids)
        XCTAssertEqual(tokenizer.id(of: template.endOfTurn), 2)
    }

    func testUnknownTemplateSaysWhichNamesToPass() {
        XCTAssertThrowsError(try ChatTemplate(template: "{{ messages[0]['content'] }}<end_of_turn>")) { error in
            XCTAssertTrue("\(error)".contains("--chat-template chatml|llama3|llama2"), "\(error)")
        }
    }

    func testLlama2RolesMustAlternate() {
        let t = ChatTemplate(family: .llama2, bos: "<s>", eos: "</s>")
        XCTAssertThrowsError(try t.render([ChatMessage(.user, "a"), ChatMessage(.user, "b")], addGenerationPrompt: true))
    }
}
