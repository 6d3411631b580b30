import Foundation
import QLoRA
import XCTest

/// Loading SFT rows into ids and labels with SmolLM2's tokenizer (the committed fixture): each
/// format's labels checked token by token against masks found independently (searching the
/// whole conversation's tokens for the assistant header and end-of-turn), bad rows named
/// path:line, skipping, refusals, CSV quoting, text chunks, and the demo set.
final class SFTDataTests: XCTestCase {
    static let fixtures = Bundle.module.url(forResource: "Fixtures", withExtension: nil)!
    static let tokenizer: Tokenizer = try! Tokenizer(tokenizerJSON: fixtures.appendingPathComponent("tokenizer-smollm2/tokenizer.json").path)
    static let chatml = ChatTemplate(family: .chatml, defaultSystem: "You are a helpful AI assistant named SmolLM, trained by Hugging Face",
                                     bos: "<|im_start|>", eos: "<|im_end|>")
    static let demo = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("../../../data/demo-sft").standardized.path
    let M = SFTExample.ignoreIndex
    var t: Tokenizer { Self.tokenizer }

    func load(_ dir: TempDir, _ name: String, _ text: String, maxLength: Int = 256, skipBad: Bool = false,
              textColumn: String = "text") throws -> SFTDataSet {
        try SFTDataSet.load(path: dir.write(name, text), tokenizer: t, chatTemplate: Self.chatml, maxLength: maxLength,
                            skipBad: skipBad, textColumn: textColumn)
    }

    func assertBadRow(_ text: String, line: Int, _ problem: SFTRowProblem, maxLength: Int = 256, file: StaticString = #filePath, l: UInt = #line) {
        let dir = TempDir()
        XCTAssertThrowsError(try load(dir, "rows.jsonl", text, maxLength: maxLength), file: file, line: l) { e in
            let path = (dir.path as NSString).appendingPathComponent("rows.jsonl")
            XCTAssertEqual(e as? SFTDataError, .badRow(path: path, line: line, problem: problem), file: file, line: l)
            XCTAssertTrue("\(e)".hasPrefix("\(path):\(line): "), "\(e)", file: file, line: l)
        }
    }

    func testTextRowTrainsEverythingButThePrefix() throws {
        let dir = TempDir()
        let set = try load(dir, "t.jsonl", #"{"text": "The cat sat."}"# + "\n" + #"{"text": "Ends with EOS<|im_end|>"}"#)
        XCTAssertEqual(set.examples.count, 2)
        let ids = t.encode("The cat sat.") + [2]
        XCTAssertEqual(set.examples[0].inputIds, ids)
        XCTAssertEqual(set.examples[0].labels, ids, "SmolLM2 adds no BOS: every token trained")
        XCTAssertEqual(set.examples[1].inputIds, t.encode("Ends with EOS") + [2], "no second EOS")
        XCTAssertEqual(set.examples.map(\.line), [1, 2])

        // A tokenizer with a BOS prefix: BOS in the ids, masked in the labels.
        let byteTokens = TokenizerTests.byteTokens
        let bosTok = try Tokenizer(tokens: byteTokens + ["<s>", "</s>"], merges: [],
                                   addedTokens: [AddedToken(id: 256, content: "<s>", special: true), AddedToken(id: 257, content: "</s>", special: true)],
                                   preTokenizer: .gpt2, bos: 256, eos: 257, prefix: [256])
        let e = try SFTRow.text("hi").tokenize(tokenizer: bosTok, chatTemplate: nil, maxLength: 16)
        XCTAssertEqual(e.inputIds, [256, 104, 105, 257])
        XCTAssertEqual(e.labels, [M, 104, 105, 257])
        XCTAssertEqual(e.trainedTokens, 3)
    }

    func testPromptCompletionMasksThePrompt() throws {
        let dir = TempDir()
        let prompt = "Question: what is the capital of France?\nAnswer:", completion = " Paris."
        let set = try load(dir, "pc.jsonl", "{\"prompt\": \"Question: what is the capital of France?\\nAnswer:\", \"completion\": \" Paris.\", \"id\": 7}\n")
        let e = try XCTUnwrap(set.examples.first)
        let promptIds = t.encode(prompt)
        XCTAssertEqual(e.inputIds, t.encode(prompt + completion) + [2])
        XCTAssertEqual(Array(e.inputIds.prefix(promptIds.count)), promptIds, "no token spans the boundary here")
        for (i, (id, label)) in zip(e.inputIds, e.labels).enumerated() {
            XCTAssertEqual(label, i < promptIds.count ? M : id, "position \(i)")
        }
        XCTAssertEqual(t.decode(e.inputIds.enumerated().filter { e.labels[$0.offset] != M }.map(\.element)), completion + "<|im_end|>")
    }

    /// The expected mask found without the template: in the whole conversation's tokens, after
    /// each `<|im_start|>assistant\n`, every token up to and including the next `<|im_end|>`.
    static func expectedAssistantMask(_ ids: [Int]) -> [Bool] {
        let t = tokenizer
        let header = t.encode("<|im_start|>assistant\n"), end = t.id(of: "<|im_end|>")!
        var trained = [Bool](repeating: false, count: ids.count)
        var i = 0
        while i + header.count <= ids.count {
            guard Array(ids[i..<i + header.count]) == header else { i += 1; continue }
            var k = i + header.count
            while k < ids.count {
                trained[k] = true
                if ids[k] == end { break }
                k += 1
            }
            i = k + 1
        }
        return trained
    }

    func testMessagesTrainAssistantContentAndEndOfTurnOnly() throws {
        let messages = [ChatMessage(.user, "Hi there!"), ChatMessage(.assistant, "Hello! How can I help?"),
                        ChatMessage(.user, "Name a colour."), ChatMessage(.assistant, "Blue.")]
        let row = #"{"messages": [{"role": "user", "content": "Hi there!"}, {"role": "assistant", "content": "Hello! How can I help?"}, "#
            + #"{"role": "user", "content": "Name a colour."}, {"role": "assistant", "content": "Blue."}]}"#
        let dir = TempDir()
        let e = try XCTUnwrap(try load(dir, "m.jsonl", row).examples.first)
        let whole = t.encode(try Self.chatml.render(messages, addGenerationPrompt: false))
        XCTAssertEqual(e.inputIds, whole)
        let mask = Self.expectedAssistantMask(whole)
        XCTAssertEqual(mask.filter { $0 }.count, t.encode("Hello! How can I help?").count + t.encode("Blue.").count + 2)
        for i in whole.indices { XCTAssertEqual(e.labels[i], mask[i] ? whole[i] : M, "token \(i) '\(t.token(of: whole[i])!)'") }
        XCTAssertEqual(whole.last, t.encode("\n").first, "ChatML ends with \\n after <|im_end|>, masked")

        // A system turn and the assistant first: nothing before its content trained.
        let sys = [ChatMessage(.system, "Be brief."), ChatMessage(.assistant, "OK."), ChatMessage(.user, "Thanks")]
        let s = try SFTRow.messages(sys).tokenize(tokenizer: t, chatTemplate: Self.chatml, maxLength: 256)
        let sysWhole = t.encode(try Self.chatml.render(sys, addGenerationPrompt: false))
        XCTAssertEqual(s.inputIds, sysWhole)
        XCTAssertEqual(s.labels.map { $0 != M }, Self.expectedAssistantMask(sysWhole))
        XCTAssertEqual(t.decode(s.inputIds.enumerated().filter { s.labels[$0.offset] != M }.map(\.element)), "OK.<|im_end|>")

        // 0x04 has no token in SmolLM2: encode drops it, and tokens are still traced to turns.
        let ctl = [ChatMessage(.user, "a\u{04}b"), ChatMessage(.assistant, "c\u{04}d")]
        let c = try SFTRow.messages(ctl).tokenize(tokenizer: t, chatTemplate: Self.chatml, maxLength: 256)
        XCTAssertTrue(t.missingBytes.contains(0x04))
        XCTAssertEqual(t.decode(c.inputIds.enumerated().filter { c.labels[$0.offset] != M }.map(\.element)), "cd<|im_end|>")
    }

    func testLlama3MessagesMaskHeaderAndTrainEndOfTurn() throws {
        let llama3 = ChatTemplate(family: .llama3, bos: "<|im_start|>", eos: "<|im_end|>")
        let m = [ChatMessage(.user, "Hi"), ChatMessage(.assistant, " Hello ")]
        let e = try SFTRow.messages(m).tokenize(tokenizer: t, chatTemplate: llama3, maxLength: 256)
        let whole = t.encode(try llama3.render(m, addGenerationPrompt: false))
        XCTAssertEqual(e.inputIds, whole)
        // The header's "\n\n" is "Ċ" "Ċ" before content but "ĊĊ" alone: tokenizing the header
        // apart would give other ids. SmolLM2 lacks <|eot_id|>, so it is BPE'd as text; still trained.
        let newline = t.encode("\n")[0], hello = t.encode("Hello")[0]
        let k = try XCTUnwrap(whole.firstIndex(of: hello))
        XCTAssertEqual(Array(whole[(k - 2)...k]), [newline, newline, hello])
        XCTAssertNotEqual(t.encode("<|end_header_id|>\n\n").suffix(2), [newline, newline])
        XCTAssertEqual(Array(e.labels[(k - 2)...k]), [M, M, hello])
        let trained = e.inputIds.enumerated().filter { e.labels[$0.offset] != M }.map(\.element)
        XCTAssertEqual(t.decode(trained), "Hello<|eot_id|>")
    }

    func testDemoSetIsTheWholeConversationWithAssistantSpansTrained() throws {
        for name in ["train.jsonl", "val.jsonl"] {
            let path = (Self.demo as NSString).appendingPathComponent(name)
            let set = try SFTDataSet.load(path: path, tokenizer: t, chatTemplate: Self.chatml, maxLength: 100_000)
            let lines = try String(contentsOfFile: path, encoding: .utf8).split(separator: "\n")
            XCTAssertEqual(set.examples.count, lines.count)
            for e in set.examples {
                struct Row: Decodable { let messages: [ChatMessage] }
                let row = try JSONDecoder().decode(Row.self, from: Data(lines[e.line - 1].utf8))
                let whole = t.encode(try Self.chatml.render(row.messages, addGenerationPrompt: false))
                XCTAssertEqual(e.inputIds, whole, "\(name):\(e.line)")
                XCTAssertEqual(e.labels.map { $0 != M }, Self.expectedAssistantMask(whole), "\(name):\(e.line)")
            }
        }
    }

    func testDemoSetLoadsWithoutBadRows() throws {
        let train = try SFTDataSet.load(path: Self.demo + "/train.jsonl", tokenizer: t, chatTemplate: Self.chatml, maxLength: 512)
        let val = try SFTDataSet.load(path: Self.demo + "/val.jsonl", tokenizer: t, chatTemplate: Self.chatml, maxLength: 512)
        XCTAssertEqual([train.examples.count, train.skipped, val.examples.count, val.skipped], [798, 0, 100, 0])
        XCTAssertGreaterThan(train.trainedTokenCount, 10_000)
    }

    func testTruncationKeepsTheStart() throws {
        let text = "one two three four five six seven eight nine ten"
        let e = try SFTRow.text(text).tokenize(tokenizer: t, chatTemplate: nil, maxLength: 4)
        XCTAssertEqual(e.inputIds, Array(t.encode(text).prefix(4)))
        XCTAssertEqual(e.labels, e.inputIds)
    }

    func testBadRowsNameFileAndLine() {
        let good = #"{"text": "fine"}"#
        assertBadRow(good + "\n\n" + #"{"text": "unterminated}"#, line: 3, .invalidJSON(detail: invalidJSONDetail(#"{"text": "unterminated}"#)))
        assertBadRow(#"["text"]"#, line: 1, .notAnObject(kind: "an array"))
        assertBadRow(good + "\n" + #"{"txt": "typo"}"#, line: 2, .missingKey("'messages', 'conversations', 'instruction'/'output', 'prompt'/'completion' or 'text' (found: txt)"))
        assertBadRow(#"{"prompt": "no completion"}"#, line: 1, .missingKey("'completion'"))
        assertBadRow(#"{"text": 42}"#, line: 1, .wrongType(key: "text", expected: "a string"))
        assertBadRow(#"{"text": ""}"#, line: 1, .emptyContent(key: "text"))
        assertBadRow(#"{"messages": []}"#, line: 1, .emptyContent(key: "messages"))
        assertBadRow(#"{"messages": [{"role": "narrator", "content": "x"}]}"#, line: 1, .unknownRole(message: 0, role: "narrator"))
        assertBadRow(#"{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "  "}]}"#, line: 1,
                     .emptyContent(key: "messages[1].content"))
        assertBadRow(#"{"messages": [{"role": "user"}]}"#, line: 1, .missingKey("'content' in messages[0]"))
        assertBadRow(#"{"messages": [{"role": "user", "content": "only a question"}]}"#, line: 1,
                     .allLabelsMasked(tokens: t.encode(try! Self.chatml.render([ChatMessage(.user, "only a question")], addGenerationPrompt: false)).count))
    }

    /// What Foundation says about the bad line, so the test does not pin its wording.
    func invalidJSONDetail(_ line: String) -> String {
        do { _ = try JSONSerialization.jsonObject(with: Data(line.utf8), options: [.fragmentsAllowed]) } catch {
            return (error as NSError).userInfo[NSDebugDescriptionErrorKey] as? String ?? "\(error)"
        }
        return "parsed"
    }

    func testMessagesWithoutTemplateAreBadRows() {
        let dir = TempDir()
        let path = dir.write("m.jsonl", #"{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}"#)
        XCTAssertThrowsError(try SFTDataSet.load(path: path, tokenizer: t, maxLength: 64)) { e in
            XCTAssertEqual(e as? SFTDataError, .badRow(path: path, line: 1, problem: .noChatTemplate))
        }
    }

    func testSkipBadCountsRowsAndKeepsTheFirstReasons() throws {
        let dir = TempDir()
        var lines = [#"{"text": "good one"}"#]
        for i in 0..<7 { lines.append(#"{"text": "bad \#(i)"#) }
        lines.append(#"{"text": "good two"}"#)
        let set = try load(dir, "s.jsonl", lines.joined(separator: "\n"), skipBad: true)
        XCTAssertEqual(set.examples.map(\.line), [1, 9])
        XCTAssertEqual(set.skipped, 7)
        XCTAssertEqual(set.skippedReasons.count, SFTDataSet.reasonsKept)
        guard case let .badRow(_, line, .invalidJSON) = set.skippedReasons[0] else { return XCTFail("\(set.skippedReasons[0])") }
        XCTAssertEqual(line, 2)
    }

    func testEmptyAndAllMaskedSetsAreRefused() throws {
        let dir = TempDir()
        let empty = dir.write("empty.jsonl", "\n  \n")
        XCTAssertThrowsError(try SFTDataSet.load(path: empty, tokenizer: t, maxLength: 64)) { e in
            XCTAssertEqual(e as? SFTDataError, .emptyDataSet(path: empty, skipped: 0, firstReasons: []))
        }
        let userOnly = #"{"messages": [{"role": "user", "content": "hello?"}]}"#
        let masked = dir.write("masked.jsonl", userOnly + "\n" + userOnly + "\n")
        XCTAssertThrowsError(try SFTDataSet.load(path: masked, tokenizer: t, chatTemplate: Self.chatml, maxLength: 64)) { e in
            guard case .badRow(masked, 1, .allLabelsMasked) = e as? SFTDataError else { return XCTFail("\(e)") }
        }
        XCTAssertThrowsError(try SFTDataSet.load(path: masked, tokenizer: t, chatTemplate: Self.chatml, maxLength: 64, skipBad: true)) { e in
            guard case let .emptyDataSet(path, skipped, reasons) = e as? SFTDataError else { return XCTFail("\(e)") }
            XCTAssertEqual([path, "\(skipped)", "\(reasons.count)"], [masked, "2", "2"])
            XCTAssertTrue("\(e)".contains("\(masked):2: nothing to train"), "\(e)")
        }
        XCTAssertThrowsError(try SFTDataSet.load(path: dir.write("x.parquet", ""), tokenizer: t, maxLength: 64)) { e in
            guard case .unknownFormat = e as? SFTDataError else { return XCTFail("\(e)") }
        }
    }

    func testCSVQuotingAndLines() throws {
        let dir = TempDir()
        let csv = "id,text,note\r\n"
            + "1,plain text,x\r\n"
            + "2,\"with, a comma\",\"\"\r\n"
            + "3,\"she said \"\"hi\"\"\",y\n"
            + "\n"
            + "4,\"two\nlines\",z\n"
            + "5,a \"bare\" quote,w"
        let set = try load(dir, "d.csv", csv)
        XCTAssertEqual(set.examples.map { t.decode(Array($0.inputIds.dropLast())) },
                       ["plain text", "with, a comma", "she said \"hi\"", "two\nlines", "a \"bare\" quote"])
        XCTAssertEqual(set.examples.map(\.line), [2, 3, 4, 6, 8])

        let path = dir.write("bad.csv", "text,n\n\"a\nb\",1\nonly one field\n")
        XCTAssertThrowsError(try SFTDataSet.load(path: path, tokenizer: t, maxLength: 64)) { e in
            XCTAssertEqual(e as? SFTDataError, .badRow(path: path, line: 4, problem: .csvFieldCount(found: 1, expected: 2)))
        }
        let open = dir.write("open.csv", "text\nok\n\"never closed\n")
        XCTAssertThrowsError(try SFTDataSet.load(path: open, tokenizer: t, maxLength: 64, skipBad: true)) { e in
            XCTAssertEqual(e as? SFTDataError, .badRow(path: open, line: 3, problem: .csvUnterminatedQuote))
        }
        let after = dir.write("after.csv", "text\n\"quoted\"x\n")
        XCTAssertThrowsError(try SFTDataSet.load(path: after, tokenizer: t, maxLength: 64)) { e in
            XCTAssertEqual(e as? SFTDataError, .badRow(path: after, line: 2, problem: .csvCharacterAfterQuote(character: "x")))
        }
        let named = try load(dir, "c.csv", "body,label\nhello world,1\n", textColumn: "body")
        XCTAssertEqual(named.examples.first?.inputIds, t.encode("hello world") + [2])
        XCTAssertThrowsError(try load(dir, "c2.csv", "body,label\nhello,1\n")) { e in
            XCTAssertTrue("\(e)".contains("no column 'text' in the header (body, label)"), "\(e)")
        }
    }

    func testTextFileIsCutIntoMaxLengthChunks() throws {
        let dir = TempDir()
        let text = String(repeating: "The quick brown fox jumps over the lazy dog. ", count: 20)
        let set = try load(dir, "book.txt", text, maxLength: 32)
        let ids = t.encode(text) + [2]
        XCTAssertEqual(set.examples.flatMap(\.inputIds), ids)
        XCTAssertTrue(set.examples.dropLast().allSatisfy { $0.count == 32 })
        XCTAssertEqual(set.examples.flatMap(\.labels), ids)
        XCTAssertEqual(set.examples.count, (ids.count + 31) / 32)
    }
}
