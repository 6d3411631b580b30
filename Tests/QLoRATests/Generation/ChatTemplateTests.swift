import Foundation
import QLoRA
import XCTest

/// Renderings against jinja2 running each family's real template (tools/make_chat_template_fixtures.py):
/// every template renders byte for byte through the Jinja interpreter, and so do the built-in
/// families' hand-written renderings for the templates they were written from; SmolLM2's own
/// template from its GGUF against transformers (tools/make_smollm2_reference.py); assistant-only
/// loss on Gemma and Phi-3.
final class ChatTemplateTests: XCTestCase {
    static let fixtures = Bundle.module.url(forResource: "Fixtures", withExtension: nil)!
    static let modelPath = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
        .appendingPathComponent("../../../models/SmolLM2-135M-Instruct.Q4_1.gguf").standardized.path

    struct Fixture: Decodable {
        struct Template: Decodable {
            let bos: String
            let eos: String
            let template: String
            /// Real templates only: where it comes from, and the family that must recognize it (nil: refused).
            let source: String?
            let family: String?
        }
        struct Case: Decodable {
            let template: String
            let conversation: String
            let add_generation_prompt: Bool
            /// The rendering, or what the template raised.
            let text: String?
            let error: String?
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

    static let fixture: Fixture = try! JSONDecoder().decode(Fixture.self, from: Data(contentsOf: fixtures.appendingPathComponent("chat-templates.json")))

    /// The families' hand-written renderings, for the templates they were written from.
    static let families: [String: ChatTemplate.Family] = ["smollm2": .chatml, "llama3": .llama3, "llama2": .llama2]

    /// Every template through the interpreter, and each family's hand-written rendering for the
    /// templates of its family: both byte for byte as jinja2 / transformers, raising where they raise.
    func testTemplatesAndFamiliesRenderAsJinja() throws {
        let f = Self.fixture
        XCTAssertEqual(f.cases.count, 180)
        var rendered: [String: Int] = [:], byFamily: [String: Int] = [:]
        for c in f.cases {
            let t = try XCTUnwrap(f.templates[c.template])
            let what = "\(c.template) \(c.conversation) add_generation_prompt=\(c.add_generation_prompt)"
            let messages = try XCTUnwrap(f.conversations[c.conversation])
            // The fixtures pass date_string, so that Llama 3.x's templates do not read the clock.
            var templates = [try ChatTemplate(template: t.template, bos: t.bos, eos: t.eos, variables: ["date_string": .string("26 Jul 2024")])]
            if let family = Self.families[c.template] ?? t.family.flatMap(ChatTemplate.Family.init(rawValue:)) {
                templates.append(ChatTemplate(family: family, defaultSystem: family == .chatml ? ChatTemplate.chatMLDefaultSystem(t.template) : nil,
                                              systemSeparator: t.template.contains("System role not supported") ? nil : "\n\n", bos: t.bos, eos: t.eos))
            }
            for template in templates {
                if let error = c.error {
                    XCTAssertThrowsError(try template.render(messages, addGenerationPrompt: c.add_generation_prompt), "\(what) raises \(error)")
                } else {
                    XCTAssertEqual(try template.render(messages, addGenerationPrompt: c.add_generation_prompt), c.text, what)
                    if template.family == nil { rendered[c.template, default: 0] += 1 } else { byFamily[c.template, default: 0] += 1 }
                }
            }
        }
        XCTAssertEqual(byFamily, ["smollm2": 12, "llama3": 12, "llama2": 12, "gemma3": 12, "phi3-gguf": 12, "gemma2": 4, "phi3.5": 12, "qwen2.5": 12])
        XCTAssertEqual(rendered.values.reduce(0, +), f.cases.count - f.cases.count { $0.error != nil })
    }

    func testGemmaFamilyRefusesWhatGemma2Refuses() throws {
        let gemma2 = ChatTemplate(family: .gemma, systemSeparator: nil, bos: "<bos>")
        XCTAssertThrowsError(try gemma2.render([ChatMessage(.system, "s"), ChatMessage(.user, "u")], addGenerationPrompt: true)) { e in
            XCTAssertEqual(e as? ChatTemplateError, .systemNotSupported(family: .gemma))
        }
        XCTAssertThrowsError(try gemma2.render([ChatMessage(.assistant, "a")], addGenerationPrompt: true)) { e in
            XCTAssertEqual(e as? ChatTemplateError, .rolesMustAlternate(family: .gemma))
        }
        // The template itself raises, at its raise_exception call.
        let jinja = try ChatTemplate(template: try XCTUnwrap(Self.fixture.templates["gemma2"]).template, bos: "<bos>")
        XCTAssertThrowsError(try jinja.render([ChatMessage(.system, "s"), ChatMessage(.user, "u")], addGenerationPrompt: true)) { e in
            guard case let .jinja(j)? = e as? ChatTemplateError else { return XCTFail("\(e)") }
            XCTAssertEqual(j.kind, .raised("System role not supported"))
            XCTAssertEqual(j.line, 1)
        }
    }

    func testSmolLM2TemplateFromGGUFMatchesTransformers() throws {
        guard FileManager.default.fileExists(atPath: Self.modelPath) else { throw XCTSkip("\(Self.modelPath) missing: run tools/setup.sh") }
        let ref = try JSONDecoder().decode(SmolLM2Chat.self, from: Data(contentsOf: Self.fixtures.appendingPathComponent("smollm2-reference.json")))
        let g = try GGUFFile(path: Self.modelPath)
        let tokenizer = try Tokenizer(gguf: g)
        let template = try ChatTemplate(template: try XCTUnwrap(g.metadata["tokenizer.chat_template"]?.string))
        XCTAssertEqual(ChatTemplate.chatMLDefaultSystem(template.jinja!.source), "You are a helpful AI assistant named SmolLM, trained by Hugging Face")
        let prompt = try template.render(ref.chat.messages, addGenerationPrompt: true)
        XCTAssertEqual(prompt, ref.chat.prompt)
        XCTAssertEqual(tokenizer.encode(prompt), ref.chat.ids)
        XCTAssertEqual(tokenizer.id(of: template.endOfTurn), 2)
    }

    func testUnsupportedTemplateNamesTheConstructAndTheFamiliesToPass() {
        XCTAssertThrowsError(try ChatTemplate(template: "{{ bos_token }}\n  {% include 'header.jinja' %}")) { error in
            XCTAssertEqual((error as? ChatTemplateError).flatMap { if case let .jinja(j) = $0 { j } else { nil } },
                           JinjaError(kind: .unsupported("tag 'include'"), line: 2, column: 3))
            XCTAssertTrue("\(error)".contains("line 2, column 3: unsupported Jinja: tag 'include'"), "\(error)")
            XCTAssertTrue("\(error)".contains("--chat-template chatml|llama3|llama2|gemma|phi3|phi3-legacy"), "\(error)")
        }
    }

    func testLlama2RolesMustAlternate() {
        let t = ChatTemplate(family: .llama2, bos: "<s>", eos: "</s>")
        XCTAssertThrowsError(try t.render([ChatMessage(.user, "a"), ChatMessage(.user, "b")], addGenerationPrompt: true))
    }

    // MARK: assistant-only loss

    /// The ids of each run of trained labels, decoded.
    func trainedSpans(_ e: SFTExample, _ t: Tokenizer) -> [String] {
        var spans: [[Int]] = [], last = -2
        for (i, label) in e.labels.enumerated() where label != SFTExample.ignoreIndex {
            if i != last + 1 { spans.append([]) }
            spans[spans.count - 1].append(e.inputIds[i])
            last = i
        }
        return spans.map { t.decode($0) }
    }

    static let sftConversation = [ChatMessage(.system, "Be brief."), ChatMessage(.user, "Hi!"), ChatMessage(.assistant, "Hello.\n"),
                                  ChatMessage(.user, "2+2?"), ChatMessage(.assistant, " 4")]

    /// Phi-3's vocabulary (SentencePiece with add_space_prefix: a space the text lacks before
    /// the text after each control token, whose whitespace after is dropped) under Phi-3.5's
    /// template and Phi-3's first one.
    func testPhi3AssistantSpansAreTrained() throws {
        let t = try VocabVectorTests.tokenizer("phi-3")
        let m = Self.sftConversation
        for name in ["phi3.5", "phi3-gguf"] {
            let spec = try XCTUnwrap(Self.fixture.templates[name])
            let template = try ChatTemplate(template: spec.template, bos: "<s>", eos: "<|endoftext|>")
            let e = try SFTRow.messages(m).tokenize(tokenizer: t, chatTemplate: template, maxLength: 256)
            XCTAssertEqual(e.inputIds, t.encode(try template.render(m, addGenerationPrompt: false)), name)
            // Phi-3's added tokens drop the "\n" after them; the text after them gets "▁".
            XCTAssertEqual(trainedSpans(e, t), [" Hello.\n<|end|>", " 4<|end|>"], name)
            XCTAssertEqual(t.id(of: template.endOfTurn), 32007)
        }
    }

    /// Gemma 3's shape: Phi-3's vocabulary with Gemma's control tokens added and no space prefix.
    func testGemmaAssistantSpansAreTrained() throws {
        let phi3 = try VocabVectorTests.tokenizer("phi-3")
        let tokens = (0..<phi3.vocabSize).map { phi3.token(of: $0)! } + ["<bos>", "<eos>", "<start_of_turn>", "<end_of_turn>"]
        let types = (0..<phi3.vocabSize).map { id -> GGUFTokenType in
            let token = phi3.token(of: id)!
            if phi3.isSpecial(id) { return id == 0 ? .unknown : .control }
            return token.utf8.count == 6 && token.hasPrefix("<0x") ? .byte : .normal
        } + [GGUFTokenType](repeating: .control, count: 4)
        let t = try Tokenizer(sentencePieceTokens: tokens, scores: [Float](repeating: 0, count: tokens.count), types: types, addsSpacePrefix: false)
        let template = try ChatTemplate(template: try XCTUnwrap(Self.fixture.templates["gemma3"]).template, bos: "<bos>", eos: "<eos>")
        let e = try SFTRow.messages(Self.sftConversation).tokenize(tokenizer: t, chatTemplate: template, maxLength: 256)
        XCTAssertEqual(e.inputIds.first, t.id(of: "<bos>"), "the template writes BOS")
        XCTAssertEqual(trainedSpans(e, t), ["Hello.<end_of_turn>", "4<end_of_turn>"])
    }

    static func jinjaFixture(_ name: String) throws -> String {
        String(decoding: try Data(contentsOf: fixtures.appendingPathComponent("jinja/\(name).jinja")), as: UTF8.self)
    }

    /// Qwen3 writes an empty <think> block into the last assistant turn only, so a conversation
    /// ending at an earlier answer renders it differently: the mask cuts the whole rendering
    /// where each generation prompt ends, and trains the last answer's empty <think> block too
    /// (as TRL's Qwen3 training template marks it).
    func testQwen3AssistantSpansAreTrained() throws {
        let t = try VocabVectorTests.tokenizer("qwen2")
        let template = try ChatTemplate(template: try Self.jinjaFixture("qwen3"), eos: "<|im_end|>")
        XCTAssertEqual(template.endOfTurn, "<|im_end|>")
        let m = Self.sftConversation
        let whole = try template.render(m, addGenerationPrompt: false)
        XCTAssertTrue(whole.hasSuffix("<|im_start|>assistant\n<think>\n\n</think>\n\n 4<|im_end|>\n"), whole)
        XCTAssertFalse(whole.hasPrefix(try template.render(Array(m.prefix(3)), addGenerationPrompt: false)), "the first answer's render is not a prefix")
        let e = try SFTRow.messages(m).tokenize(tokenizer: t, chatTemplate: template, maxLength: 256)
        XCTAssertEqual(e.inputIds, t.encode(whole))
        XCTAssertEqual(trainedSpans(e, t), ["Hello.\n<|im_end|>", "<think>\n\n</think>\n\n 4<|im_end|>"])
        XCTAssertEqual(t.id(of: template.endOfTurn), t.id(of: "<|im_end|>"))
    }

    /// Llama 3.1: a dated system header the template writes itself, content trimmed; renders incrementally.
    func testLlama31AssistantSpansAreTrained() throws {
        let t = try VocabVectorTests.tokenizer("llama-bpe")
        let template = try ChatTemplate(template: try Self.jinjaFixture("llama3.1"), bos: "<|begin_of_text|>", eos: "<|eot_id|>",
                                        variables: ["date_string": .string("26 Jul 2024")])
        XCTAssertEqual(template.endOfTurn, "<|eot_id|>")
        let e = try SFTRow.messages(Self.sftConversation).tokenize(tokenizer: t, chatTemplate: template, maxLength: 256)
        XCTAssertEqual(e.inputIds.first, t.id(of: "<|begin_of_text|>"))
        XCTAssertEqual(trainedSpans(e, t), ["Hello.<|eot_id|>", "4<|eot_id|>"])
    }

    /// TRL's Qwen3 training template marks assistant text with {% generation %}: exactly that is trained.
    func testGenerationMarkersDecideTheMask() throws {
        let t = try VocabVectorTests.tokenizer("qwen2")
        let template = try ChatTemplate(template: try Self.jinjaFixture("qwen3-trl-training"), eos: "<|im_end|>")
        XCTAssertTrue(template.hasGenerationMarkers)
        let m = Self.sftConversation
        let r = try template.rendering(m, addGenerationPrompt: false)
        let marked = r.generationRanges.map { String(decoding: Array(r.text.utf8)[$0], as: UTF8.self) }
        XCTAssertEqual(marked.count, 2)
        let e = try SFTRow.messages(m).tokenize(tokenizer: t, chatTemplate: template, maxLength: 256)
        XCTAssertEqual(trainedSpans(e, t), marked)
        XCTAssertTrue(marked.allSatisfy { $0.hasSuffix("<|im_end|>\n") }, "\(marked)")
    }

    /// A data row with a tool call and a tool result: the call (no content) is an assistant turn
    /// the mask trains, its arguments written back by tojson in the row's key order.
    func testToolCallRowsAreRenderedAndTrained() throws {
        let t = try VocabVectorTests.tokenizer("qwen2")
        let template = try ChatTemplate(template: try Self.jinjaFixture("qwen3"), eos: "<|im_end|>")
        let row = #"{"messages": [{"role": "user", "content": "Weather in Paris?"}, {"role": "assistant", "tool_calls": [{"type": "function", "function": {"name": "get_weather", "arguments": {"unit": "c", "city": "Paris"}}}]}, {"role": "tool", "name": "get_weather", "content": "21"}, {"role": "assistant", "content": "21 °C."}]}"#
        let dir = TempDir()
        let set = try SFTDataSet.load(path: dir.write("rows.jsonl", Array(row.utf8)), tokenizer: t, chatTemplate: template, maxLength: 512)
        let e = try XCTUnwrap(set.examples.first)
        XCTAssertEqual(trainedSpans(e, t), ["<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"unit\": \"c\", \"city\": \"Paris\"}}\n</tool_call><|im_end|>",
                                            "<think>\n\n</think>\n\n21 °C.<|im_end|>"])
        XCTAssertTrue(t.decode(e.inputIds).contains("<|im_start|>user\n<tool_response>\n21\n</tool_response><|im_end|>"))
    }

    /// TRL's prompt–completion with message lists: the prompt's assistant turn stays masked
    /// however the mask is cut (generation markers, or the whole rendering for Qwen3).
    func testPromptAssistantTurnsStayMaskedForAnyTemplate() throws {
        let t = try VocabVectorTests.tokenizer("qwen2")
        let m = Self.sftConversation
        let row = SFTRow.conversation(prompt: Array(m.prefix(4)), completion: [m[4]])
        let training = try ChatTemplate(template: try Self.jinjaFixture("qwen3-trl-training"), eos: "<|im_end|>")
        let r = try training.rendering(m, addGenerationPrompt: false)
        let marked = r.generationRanges.map { String(decoding: Array(r.text.utf8)[$0], as: UTF8.self) }
        XCTAssertEqual(trainedSpans(try row.tokenize(tokenizer: t, chatTemplate: training, maxLength: 256), t), [marked[1]])
        let qwen3 = try ChatTemplate(template: try Self.jinjaFixture("qwen3"), eos: "<|im_end|>")
        XCTAssertEqual(trainedSpans(try row.tokenize(tokenizer: t, chatTemplate: qwen3, maxLength: 256), t), ["<think>\n\n</think>\n\n 4<|im_end|>"])
    }
}
