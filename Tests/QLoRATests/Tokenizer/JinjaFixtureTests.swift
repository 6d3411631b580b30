import Foundation
import QLoRA
import XCTest

/// Real chat templates (llama.cpp's models/templates from the llama-cpp-python sdist, and TRL's
/// Qwen3 training template) rendered by transformers' apply_chat_template
/// (tools/make_jinja_template_fixtures.py): ChatTemplate's rendering must equal each byte for
/// byte, raise where the template raised, and report the same {% generation %} ranges.
final class JinjaFixtureTests: XCTestCase {
    static let folder = Bundle.module.url(forResource: "Fixtures", withExtension: nil)!.appendingPathComponent("jinja")

    struct Case {
        let template: String
        let conversation: String
        let addGenerationPrompt: Bool
        let expected: JinjaValue
    }

    /// renderings.json read with JinjaValue(json:), which keeps the key order tojson writes back.
    static func fixture() throws -> JinjaValue {
        try JinjaValue(json: String(decoding: try Data(contentsOf: folder.appendingPathComponent("renderings.json")), as: UTF8.self))
    }

    static func field(_ v: JinjaValue, _ key: String) -> JinjaValue? {
        if case let .dict(d) = v { return d[key] }
        return nil
    }

    static func string(_ v: JinjaValue?) -> String? {
        if case let .string(s)? = v { return s }
        return nil
    }

    /// The fixture's messages as ChatMessages: role, content, and every other key as a field.
    static func messages(_ v: JinjaValue) throws -> [ChatMessage] {
        guard case let .list(items) = v else { throw XCTSkip("messages is not a list") }
        return try items.map { item in
            guard case let .dict(d) = item, let role = ChatMessage.Role(rawValue: string(d["role"]) ?? "") else { throw XCTSkip("bad message \(item)") }
            var fields = JinjaDict()
            for (k, value) in d where k != "role" && k != "content" { fields[k] = value }
            return ChatMessage(role, string(d["content"]) ?? "", fields: fields)
        }
    }

    /// Noon on the fixture's date in the local time zone: what transformers' patched clock returned.
    static func now(_ f: JinjaValue) throws -> Date {
        let parts = try XCTUnwrap(string(field(f, "now"))).split(whereSeparator: { "-T:".contains($0) }).compactMap { Int($0) }
        return try XCTUnwrap(Calendar(identifier: .gregorian).date(from: DateComponents(year: parts[0], month: parts[1], day: parts[2],
                                                                                         hour: parts[3], minute: parts[4], second: parts[5])))
    }

    func testRealTemplatesRenderAsTransformers() throws {
        let f = try Self.fixture()
        let now = try Self.now(f)
        guard case let .list(cases)? = Self.field(f, "cases"), case let .dict(templates)? = Self.field(f, "templates"),
              case let .dict(conversations)? = Self.field(f, "conversations") else { return XCTFail("renderings.json layout") }
        XCTAssertEqual(cases.count, templates.count * conversations.count * 2)
        var loaded: [String: ChatTemplate] = [:]
        var matched: [String: Int] = [:], raised = 0, generationRanges = 0
        for c in cases {
            let name = try XCTUnwrap(Self.string(Self.field(c, "template")))
            let conversationName = try XCTUnwrap(Self.string(Self.field(c, "conversation")))
            guard case let .bool(generationPrompt)? = Self.field(c, "add_generation_prompt"), let spec = templates[name],
                  let conversation = conversations[conversationName] else { return XCTFail("case \(c)") }
            let what = "\(name) \(conversationName) add_generation_prompt=\(generationPrompt)"
            if loaded[name] == nil {
                let text = String(decoding: try Data(contentsOf: Self.folder.appendingPathComponent("\(name).jinja")), as: UTF8.self)
                loaded[name] = try ChatTemplate(template: text, bos: Self.string(Self.field(spec, "bos")) ?? "", eos: Self.string(Self.field(spec, "eos")) ?? "", now: now)
            }
            let template = loaded[name]!
            let messages = try Self.messages(try XCTUnwrap(Self.field(conversation, "messages")))
            let tools = Self.field(conversation, "tools")
            if let error = Self.string(Self.field(c, "error")) {
                XCTAssertThrowsError(try template.render(messages, tools: tools, addGenerationPrompt: generationPrompt), what) { e in
                    guard case let .jinja(j)? = e as? ChatTemplateError else { return XCTFail("\(what): \(e)") }
                    switch j.kind {
                    case let .raised(m), let .runtime(m): XCTAssertTrue(error.hasSuffix(": " + m), "\(what): \(error) vs \(m)")
                    default: XCTFail("\(what): \(j)")
                    }
                }
                raised += 1
                continue
            }
            let expected = try XCTUnwrap(Self.string(Self.field(c, "text")))
            do {
                let r = try template.rendering(messages, tools: tools, addGenerationPrompt: generationPrompt)
                XCTAssertEqual(r.text, expected, what)
                if case let .list(ranges)? = Self.field(c, "generation") {
                    let want = ranges.compactMap { r -> Range<Int>? in
                        guard case let .list(b) = r, case let .int(lo) = b[0], case let .int(hi) = b[1] else { return nil }
                        return lo..<hi
                    }
                    XCTAssertEqual(r.generationRanges, want, what)
                    generationRanges += want.count
                }
                if r.text == expected { matched[name, default: 0] += 1 }
            } catch {
                XCTFail("\(what): \(error)")
            }
        }
        // What each model ends an assistant turn with (its stop token), read off the template.
        XCTAssertEqual(loaded.mapValues(\.endOfTurn), [
            "command-r7b": "<|END_RESPONSE|><|END_OF_TURN_TOKEN|>", "deepseek-r1-qwen": "<｜end▁of▁sentence｜>", "gemma2": "<end_of_turn>",
            "gpt-oss": "<|return|>", "granite3.3": "<|end_of_text|>", "hermes3": "<|im_end|>", "llama3.1": "<|eot_id|>", "llama3.2": "<|eot_id|>",
            "llama3.3": "<|eot_id|>", "mistral-nemo": "</s>", "mistral-small3.2": "</s>", "phi3.5": "<|end|>", "qwen2.5": "<|im_end|>",
            "qwen3": "<|im_end|>", "qwen3-trl-training": "<|im_end|>", "qwq": "<|im_end|>", "smollm3": "<|im_end|>"])
        // Phi-3.5 ends a conversation with EOS; Command R7B writes its generation prompt whatever add_generation_prompt says.
        XCTAssertEqual(loaded.filter { !$0.value.closing.isEmpty }.mapValues(\.closing),
                       ["phi3.5": "<|endoftext|>", "command-r7b": "<|START_OF_TURN_TOKEN|><|CHATBOT_TOKEN|><|START_THINKING|><|END_THINKING|>"])
        XCTAssertEqual(raised, 22)
        XCTAssertEqual(generationRanges, 16, "assistant turns of qwen3-trl-training's renderings")
        XCTAssertEqual(matched.values.reduce(0, +) + raised, cases.count, "\(matched)")
    }
}
