import Foundation
@testable import QLoRA
import XCTest

/// The data formats TRL, axolotl, Unsloth and mlx-lm users bring, with SmolLM2's tokenizer
/// (the committed fixture): Alpaca, ShareGPT and TRL's conversational prompt–completion rows
/// tokenized with the labels TRL would give (prompt and instruction masked, response trained),
/// .json arrays naming a bad row's line, folders, globs and several files in order, and rows
/// whose trained tokens all lie past max length dropped and counted instead of failing the run.
final class SFTDataFormatTests: XCTestCase {
    var t: Tokenizer { SFTDataTests.tokenizer }
    var chatml: ChatTemplate { SFTDataTests.chatml }
    let M = SFTExample.ignoreIndex

    func load(_ dir: TempDir, _ name: String, _ text: String, template: ChatTemplate?, maxLength: Int = 256,
              skipBad: Bool = false) throws -> SFTDataSet {
        try SFTDataSet.load(path: dir.write(name, text), tokenizer: t, chatTemplate: template, maxLength: maxLength, skipBad: skipBad)
    }

    /// The text of an example's trained tokens.
    func trained(_ e: SFTExample) -> String { t.decode(e.inputIds.enumerated().filter { e.labels[$0.offset] != M }.map(\.element)) }

    /// What each example spells, less its EOS: for checking which rows came in which order.
    func texts(_ set: SFTDataSet) -> [String] { set.examples.map { t.decode(Array($0.inputIds.dropLast())) } }

    func testAlpacaRowsAreAUserAssistantConversationWithAChatTemplate() throws {
        let rows = [#"{"instruction": "Translate to French.", "input": "Good morning", "output": "Bonjour"}"#,
                    #"{"instruction": "Name a colour.", "input": "", "output": "Blue."}"#,
                    #"{"instruction": "Say hi.", "output": "Hi!"}"#]
        let set = try load(TempDir(), "a.jsonl", rows.joined(separator: "\n"), template: chatml)
        let expected = [("Translate to French.\n\nGood morning", "Bonjour"), ("Name a colour.", "Blue."), ("Say hi.", "Hi!")]
        XCTAssertEqual(set.examples.count, 3)
        for (e, (user, reply)) in zip(set.examples, expected) {
            let whole = t.encode(try chatml.render([ChatMessage(.user, user), ChatMessage(.assistant, reply)], addGenerationPrompt: false))
            XCTAssertEqual(e.inputIds, whole, user)
            XCTAssertEqual(e.labels.map { $0 != M }, SFTDataTests.expectedAssistantMask(whole), user)
            XCTAssertEqual(trained(e), reply + "<|im_end|>")
        }
    }

    func testAlpacaRowsWithoutATemplateTakeTheAlpacaPrompt() throws {
        let rows = [#"{"instruction": "Translate to French.", "input": "Good morning", "output": "Bonjour"}"#,
                    #"{"instruction": "Say hi.", "output": "Hi!"}"#]
        let set = try load(TempDir(), "a.jsonl", rows.joined(separator: "\n"), template: nil)
        let prompts = ["Below is an instruction that describes a task, paired with an input that provides further context. "
                        + "Write a response that appropriately completes the request.\n\n"
                        + "### Instruction:\nTranslate to French.\n\n### Input:\nGood morning\n\n### Response:\n",
                       "Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n"
                        + "### Instruction:\nSay hi.\n\n### Response:\n"]
        for (e, (prompt, output)) in zip(set.examples, zip(prompts, ["Bonjour", "Hi!"])) {
            XCTAssertEqual(e.inputIds, t.encode(prompt + output) + [2])
            let promptCount = t.encode(prompt).count
            XCTAssertEqual(e.labels, e.inputIds.enumerated().map { $0.offset < promptCount ? M : $0.element }, "prompt masked, output and EOS trained")
            XCTAssertEqual(trained(e), output + "<|im_end|>")
        }
    }

    func testShareGPTConversationsTrainAsTheSameMessages() throws {
        let turns = [("system", "system", "Be brief."), ("human", "user", "Hi"), ("gpt", "assistant", "Hello."),
                     ("user", "user", "Bye"), ("assistant", "assistant", "Bye!")]
        func list(_ items: [String]) -> String { "[" + items.joined(separator: ", ") + "]" }
        let shareGPT = #"{"conversations": "# + list(turns.map { #"{"from": "\#($0.0)", "value": "\#($0.2)"}"# }) + "}"
        let standardized = #"{"conversations": "# + list(turns.map { #"{"role": "\#($0.1)", "content": "\#($0.2)"}"# }) + "}"
        let set = try load(TempDir(), "s.jsonl", shareGPT + "\n" + standardized, template: chatml)
        let messages = turns.map { ChatMessage(ChatMessage.Role(rawValue: $0.1)!, $0.2) }
        let whole = t.encode(try chatml.render(messages, addGenerationPrompt: false))
        for e in set.examples {
            XCTAssertEqual(e.inputIds, whole)
            XCTAssertEqual(e.labels.map { $0 != M }, SFTDataTests.expectedAssistantMask(whole))
            XCTAssertEqual(trained(e), "Hello.<|im_end|>Bye!<|im_end|>")
        }

        let dir = TempDir()
        let path = dir.write("bad.jsonl", #"{"conversations": [{"from": "human", "value": "q"}, {"from": "tool", "value": "x"}]}"#)
        XCTAssertThrowsError(try SFTDataSet.load(path: path, tokenizer: t, chatTemplate: chatml, maxLength: 64)) { e in
            XCTAssertEqual(e as? SFTDataError, .badRow(path: path, line: 1, problem: .unknownSpeaker(key: "conversations[1].from", from: "tool")))
            XCTAssertTrue("\(e)".contains("not a ShareGPT speaker (known: assistant, gpt, human, system, user)"), "\(e)")
        }
        let noValue = dir.write("v.jsonl", #"{"conversations": [{"from": "human"}]}"#)
        XCTAssertThrowsError(try SFTDataSet.load(path: noValue, tokenizer: t, chatTemplate: chatml, maxLength: 64)) { e in
            XCTAssertEqual(e as? SFTDataError, .badRow(path: noValue, line: 1, problem: .missingKey("'value' in conversations[0]")))
        }
    }

    /// TRL masks render(prompt, add_generation_prompt) and trains every token after it; qlora
    /// the same tokens but ChatML's "\n" after the completion's <|im_end|>. The prompt's own
    /// assistant turn stays masked.
    func testConversationalPromptCompletionTrainsTheCompletionOnly() throws {
        let prompt = [ChatMessage(.user, "What is 2+2?"), ChatMessage(.assistant, "4"), ChatMessage(.user, "And 3+3?")]
        let completion = [ChatMessage(.assistant, "6")]
        let row = #"{"prompt": [{"role": "user", "content": "What is 2+2?"}, {"role": "assistant", "content": "4"}, "#
            + #"{"role": "user", "content": "And 3+3?"}], "completion": [{"role": "assistant", "content": "6"}]}"#
        let e = try XCTUnwrap(try load(TempDir(), "c.jsonl", row, template: chatml).examples.first)
        let promptIds = t.encode(try chatml.render(prompt, addGenerationPrompt: true))
        let whole = t.encode(try chatml.render(prompt + completion, addGenerationPrompt: false))
        XCTAssertEqual(e.inputIds, whole)
        XCTAssertEqual(Array(whole.prefix(promptIds.count)), promptIds)
        let trl = whole.indices.map { $0 >= promptIds.count }
        XCTAssertEqual(whole.last, t.encode("\n").first)
        XCTAssertEqual(e.labels.map { $0 != M }, Array(trl.dropLast()) + [false])
        XCTAssertEqual(trained(e), "6<|im_end|>")

        let dir = TempDir()
        let mixed = dir.write("m.jsonl", #"{"prompt": [{"role": "user", "content": "q"}], "completion": "a"}"#)
        XCTAssertThrowsError(try SFTDataSet.load(path: mixed, tokenizer: t, chatTemplate: chatml, maxLength: 64)) { e in
            XCTAssertEqual(e as? SFTDataError, .badRow(path: mixed, line: 1, problem: .wrongType(key: "completion", expected: "a list of messages, as 'prompt' is")))
        }
    }

    func testJSONArrayRowsAreNamedByTheLineTheyStartOn() throws {
        let dir = TempDir()
        let json = """
            [
              {"text": "first row"},
              {
                "prompt": "Q: one? [a, b]",
                "completion": " A: {1}"
              },
              {"instruction": "Say \\"hi\\".", "output": "Hi!"}
            ]

            """
        let set = try load(dir, "rows.json", json, template: chatml)
        XCTAssertEqual(set.examples.map(\.line), [2, 3, 7])
        XCTAssertEqual(texts(set).prefix(2), ["first row", "Q: one? [a, b] A: {1}"])
        XCTAssertEqual(trained(set.examples[2]), "Hi!<|im_end|>")
        XCTAssertEqual(try load(dir, "lines.json", #"{"text": "a"}"# + "\n\n" + #"{"text": "b"}"#, template: nil).examples.map(\.line), [1, 3],
                       "a .json file of JSON Lines, as datasets' to_json writes")

        func assertBad(_ text: String, line: Int, skipBad: Bool = false, _ check: (SFTRowProblem) -> Bool, l: UInt = #line) {
            let path = dir.write("bad.json", text)
            XCTAssertThrowsError(try SFTDataSet.load(path: path, tokenizer: t, chatTemplate: chatml, maxLength: 64, skipBad: skipBad), line: l) { e in
                guard case let .badRow(p, n, problem) = e as? SFTDataError, p == path, n == line, check(problem) else { return XCTFail("\(e)", line: l) }
                XCTAssertTrue("\(e)".hasPrefix("\(path):\(line): "), "\(e)", line: l)
            }
        }
        assertBad("[\n  {\"text\": \"ok\"},\n  {\"text\": 'single'},\n  {\"text\": \"ok\"}\n]", line: 3) {
            if case .invalidJSON = $0 { true } else { false }
        }
        assertBad("[\n  {\"text\": \"ok\"},\n\n  {\"txt\": \"typo\"}\n]", line: 4) { if case .missingKey = $0 { true } else { false } }
        assertBad("[{\"text\": \"a\"},\n {\"text\": \"b\"},\n]", line: 3, skipBad: true) {
            $0 == .invalidJSON(detail: "an empty element in the array (a comma too many?)")
        }
        assertBad("\n[{\"text\": \"a\"},\n {\"text\": \"b\"}\n", line: 2, skipBad: true) { $0 == .invalidJSON(detail: "the array opened here is never closed") }
        assertBad("[{\"text\": \"a\"}]\n{\"text\": \"b\"}\n", line: 2, skipBad: true) { $0 == .invalidJSON(detail: "text after the array's closing ']'") }

        let skipping = try load(dir, "skip.json", "[\n{\"text\": \"a\"},\n{\"text\": 7},\n{\"text\": \"c\"}\n]", template: nil, skipBad: true)
        XCTAssertEqual([skipping.examples.map(\.line), [skipping.skipped]], [[2, 4], [1]])
        XCTAssertThrowsError(try load(dir, "empty.json", " [ ] ", template: nil)) { e in
            guard case .emptyDataSet = e as? SFTDataError else { return XCTFail("\(e)") }
        }
    }

    func testFoldersGlobsAndSeveralFilesKeepTheirOrder() throws {
        let dir = TempDir()
        let a = dir.write("a.json", #"[{"text": "ay"}]"#), b = dir.write("b.jsonl", #"{"text": "bee"}"#)
        let c = dir.write("c.csv", "text\ncee\n")
        dir.write("d.txt", "dee")
        dir.write(".hidden.jsonl", #"{"text": "hidden"}"#)
        try FileManager.default.createDirectory(atPath: dir.path + "/sub", withIntermediateDirectories: true)
        dir.write("sub/z.jsonl", #"{"text": "zed"}"#)
        func load(_ paths: [String], format: SFTFormat? = nil) throws -> SFTDataSet {
            try SFTDataSet.load(paths: paths, format: format, tokenizer: t, maxLength: 64)
        }
        XCTAssertEqual(texts(try load([dir.path])), ["ay", "bee", "cee", "dee"], "by name; no hidden files, no subfolders")
        XCTAssertEqual(texts(try load([dir.path + "/*.json*"])), ["ay", "bee"])
        let several = try load([c, dir.path + "/sub", a, dir.path + "/[b]*"])
        XCTAssertEqual(texts(several), ["cee", "zed", "ay", "bee"], "in the order given")
        XCTAssertEqual(several.source, [c, dir.path + "/sub", a, dir.path + "/[b]*"].joined(separator: ", "))

        let bad = dir.write("sub/y.jsonl", #"{"text": "fine"}"# + "\n" + #"{"text": ""}"#)
        XCTAssertThrowsError(try load([b, dir.path + "/sub"])) { e in
            XCTAssertEqual(e as? SFTDataError, .badRow(path: bad, line: 2, problem: .emptyContent(key: "text")), "names the file the row is in")
        }
        let notes = dir.write("notes", "not data")
        XCTAssertThrowsError(try load([dir.path + "/*"])) { e in
            XCTAssertEqual(e as? SFTDataError, .unknownFormat(path: notes))
            XCTAssertTrue("\(e)".contains("--data-format jsonl|csv|text"), "\(e)")
        }
        XCTAssertEqual(texts(try load([notes], format: .text)), ["not data"], "a file without an extension, as --data-format text reads it")

        let empty = dir.path + "/sub/empty"
        try FileManager.default.createDirectory(atPath: empty, withIntermediateDirectories: true)
        XCTAssertThrowsError(try load([empty])) { e in
            XCTAssertEqual(e as? SFTDataError, .noDataFiles(source: empty, reason: "a folder with no .jsonl, .json, .csv or .txt file"))
        }
        XCTAssertThrowsError(try load([dir.path + "/*.parquet"])) { e in
            XCTAssertEqual(e as? SFTDataError, .noDataFiles(source: dir.path + "/*.parquet", reason: "no file matches"))
        }
        let e1 = dir.write("e1.jsonl", "\n"), e2 = dir.write("e2.jsonl", "")
        XCTAssertThrowsError(try load([e1, e2])) { e in
            XCTAssertEqual(e as? SFTDataError, .emptyDataSet(path: "\(e1), \(e2)", skipped: 0, firstReasons: []))
        }
    }

    func testRowsTrainedPastMaxLengthAreDroppedAndCounted() throws {
        let dir = TempDir()
        let long = String(repeating: "word ", count: 60)
        func chat(_ user: String, _ reply: String) -> String {
            #"{"messages": [{"role": "user", "content": "\#(user)"}, {"role": "assistant", "content": "\#(reply)"}]}"#
        }
        let rows = [chat("q", "short"), chat(long, "a"), #"{"text": "\#(long)"}"#, chat("q2", long), #"{"prompt": "\#(long)", "completion": " b"}"#]
        let path = dir.write("rows.jsonl", rows.joined(separator: "\n"))
        let set = try SFTDataSet.load(path: path, tokenizer: t, chatTemplate: chatml, maxLength: 48)
        XCTAssertEqual(set.examples.map(\.line), [1, 3, 4], "a row trained from within max length is truncated, not dropped")
        XCTAssertTrue(set.examples.allSatisfy { $0.count <= 48 })
        XCTAssertEqual([set.tooLong, set.skipped], [2, 0])
        func past(_ row: SFTRow, line: Int) throws -> SFTDataError {
            let whole = try row.tokenize(tokenizer: t, chatTemplate: chatml, maxLength: 100_000)
            let first = try XCTUnwrap(whole.labels.indices.dropFirst().first { whole.labels[$0] != M })
            XCTAssertGreaterThanOrEqual(first, 48)
            return .badRow(path: path, line: line, problem: .trainedPastMaxLength(tokens: whole.count, firstTrained: first, maxLength: 48))
        }
        XCTAssertEqual(set.tooLongRows, [try past(.messages([ChatMessage(.user, long), ChatMessage(.assistant, "a")]), line: 2),
                                         try past(.promptCompletion(prompt: long, completion: " b"), line: 5)])
        XCTAssertTrue("\(set.tooLongRows[0])".hasPrefix("\(path):2: its "), "\(set.tooLongRows[0])")
        XCTAssertTrue("\(set.tooLongRows[0])".contains("past max length 48"), "\(set.tooLongRows[0])")

        let onlyLong = dir.write("long.jsonl", rows[1] + "\n" + rows[4])
        XCTAssertThrowsError(try SFTDataSet.load(path: onlyLong, tokenizer: t, chatTemplate: chatml, maxLength: 48)) { e in
            XCTAssertEqual(e as? SFTDataError, .allTooLong(path: onlyLong, dropped: 2, maxLength: 48))
            XCTAssertTrue("\(e)".contains("HINT: raise --max-len"), "\(e)")
        }
        let longAndBad = dir.write("mixed.jsonl", rows[1] + "\n" + #"{"text": 1}"#)
        XCTAssertThrowsError(try SFTDataSet.load(path: longAndBad, tokenizer: t, chatTemplate: chatml, maxLength: 48, skipBad: true)) { e in
            guard case let .emptyDataSet(_, skipped, reasons) = e as? SFTDataError else { return XCTFail("\(e)") }
            XCTAssertEqual(skipped, 2)
            XCTAssertEqual(reasons.map { if case let .badRow(_, line, _) = $0 { line } else { 0 } }, [2, 1])
        }
    }

    func testDataSourcesAreAStringInConfigWhenOne() throws {
        let encoder = JSONEncoder()
        encoder.keyEncodingStrategy = .convertToSnakeCase
        encoder.outputFormatting = .sortedKeys
        var config = TrainingConfig(model: "m.gguf", data: "train.jsonl")
        XCTAssertTrue(String(decoding: try encoder.encode(config), as: UTF8.self).contains(#""data":"train.jsonl""#), "as runs before several --data")
        config.data = DataSources(["a.jsonl", "more*.json"])
        config.valFile = "val.jsonl"
        config.dataFormat = .jsonl
        let json = String(decoding: try encoder.encode(config), as: UTF8.self)
        XCTAssertTrue(json.contains(#""data":["a.jsonl","more*.json"]"#), json)
        let dir = TempDir()
        dir.write("config.json", json)
        XCTAssertEqual(try TrainingRun.loadConfig(run: dir.path), config)
        XCTAssertThrowsError(try JSONDecoder().decode(DataSources.self, from: Data("[]".utf8)))
    }
}
