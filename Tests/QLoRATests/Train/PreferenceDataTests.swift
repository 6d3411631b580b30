import Foundation
@testable import QLoRA
import XCTest

/// Loading preference pairs with SmolLM2's tokenizer (the committed fixture) and a byte
/// tokenizer with BOS: each format's prompt and completion ids checked against the template's
/// text, the implicit prompt TRL extracts, masks and batches, pairs dropped past max length,
/// the orders, bad rows named path:line, and the demo set.
final class PreferenceDataTests: XCTestCase {
    var t: Tokenizer { SFTDataTests.tokenizer }
    var chatml: ChatTemplate { SFTDataTests.chatml }
    static let demo = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("../../../data/demo-preferences").standardized.path
    let M = SFTExample.ignoreIndex

    func load(_ dir: TempDir, _ text: String, maxLength: Int = 256, skipBad: Bool = false) throws -> PreferenceDataSet {
        try PreferenceDataSet.load(path: dir.write("p.jsonl", text), tokenizer: t, chatTemplate: chatml, maxLength: maxLength, skipBad: skipBad)
    }

    func pair(_ row: String) throws -> PreferencePair { try XCTUnwrap(try load(TempDir(), row).pairs.first) }

    func assertBadRow(_ text: String, line: Int, _ problem: SFTRowProblem, says: String? = nil, file: StaticString = #filePath, l: UInt = #line) {
        let dir = TempDir()
        XCTAssertThrowsError(try load(dir, text), file: file, line: l) { e in
            let path = (dir.path as NSString).appendingPathComponent("p.jsonl")
            XCTAssertEqual(e as? SFTDataError, .badRow(path: path, line: line, problem: problem), file: file, line: l)
            XCTAssertTrue("\(e)".hasPrefix("\(path):\(line): " + (says ?? "")), "\(e)", file: file, line: l)
        }
    }

    func testPlainTextPairAppendsEOSToEachCompletion() throws {
        let p = try pair(#"{"prompt": "Question: 2 + 2?\nAnswer:", "chosen": " 4", "rejected": " 5<|im_end|>", "margin": 1.5, "id": 3}"#)
        XCTAssertEqual(p.prompt, t.encode("Question: 2 + 2?\nAnswer:"), "SmolLM2 adds no BOS")
        XCTAssertEqual(p.chosen, t.encode(" 4") + [2])
        XCTAssertEqual(p.rejected, t.encode(" 5") + [2], "EOS not doubled")
        XCTAssertEqual(p.margin, 1.5)
        XCTAssertEqual(p.line, 1)
        XCTAssertEqual(p.inputIds(.chosen), p.prompt + p.chosen)
        XCTAssertEqual(p.completionMask(.rejected), [Bool](repeating: false, count: p.prompt.count) + [Bool](repeating: true, count: p.rejected.count))
        let e = p.example(.chosen)
        XCTAssertEqual(e.labels, [Int](repeating: M, count: p.prompt.count) + p.chosen)
        XCTAssertEqual(e.trainedTokens, p.chosen.count)
        XCTAssertEqual(p.longerCount, p.prompt.count + max(p.chosen.count, p.rejected.count))

        // A tokenizer with a BOS prefix: BOS starts the prompt, EOS ends each completion.
        let bosTok = try Tokenizer(tokens: TokenizerTests.byteTokens + ["<s>", "</s>"], merges: [],
                                   addedTokens: [AddedToken(id: 256, content: "<s>", special: true), AddedToken(id: 257, content: "</s>", special: true)],
                                   preTokenizer: .gpt2, bos: 256, eos: 257, prefix: [256])
        let b = try PreferenceRow.text(prompt: "Q", chosen: "a", rejected: "bc").tokenize(tokenizer: bosTok, chatTemplate: nil)
        XCTAssertEqual([b.prompt, b.chosen, b.rejected], [[256, 81], [97, 257], [98, 99, 257]])
    }

    func testConversationalPairIsPromptWithGenerationPromptThenTheTurn() throws {
        let row = #"{"prompt": [{"role": "user", "content": "Name a colour."}], "chosen": [{"role": "assistant", "content": "Blue."}], "#
            + #""rejected": [{"role": "assistant", "content": "Seven."}]}"#
        let p = try pair(row)
        let user = [ChatMessage(.user, "Name a colour.")]
        let head = try chatml.render(user, addGenerationPrompt: true)
        XCTAssertTrue(head.hasPrefix("<|im_start|>system\n") && head.hasSuffix("<|im_start|>assistant\n"))
        XCTAssertEqual(p.prompt, t.encode(head))
        XCTAssertEqual(t.decode(p.chosen), "Blue.<|im_end|>\n")
        XCTAssertEqual(t.decode(p.rejected), "Seven.<|im_end|>\n")
        XCTAssertEqual(p.inputIds(.chosen), t.encode(try chatml.render(user + [ChatMessage(.assistant, "Blue.")], addGenerationPrompt: false)),
                       "no token spans the boundary in ChatML")
        XCTAssertNil(p.margin)

        // Whole conversations starting with the explicit prompt: the prompt is taken off.
        let whole = #"{"prompt": [{"role": "user", "content": "Name a colour."}], "#
            + #""chosen": [{"role": "user", "content": "Name a colour."}, {"role": "assistant", "content": "Blue."}], "#
            + #""rejected": [{"role": "user", "content": "Name a colour."}, {"role": "assistant", "content": "Seven."}]}"#
        XCTAssertEqual(try pair(whole), p)
        // Without a template: refused.
        let dir = TempDir()
        let path = dir.write("p.jsonl", row)
        XCTAssertThrowsError(try PreferenceDataSet.load(path: path, tokenizer: t, maxLength: 256)) { e in
            XCTAssertEqual(e as? SFTDataError, .badRow(path: path, line: 1, problem: .noChatTemplate))
        }
    }

    func testLlama3PromptCarriesTheTemplatesBOSAndEndsAtTheHeader() throws {
        let llama3 = ChatTemplate(family: .llama3, bos: "<|im_start|>", eos: "<|im_end|>")
        let user = [ChatMessage(.user, "Hi")], reply = [ChatMessage(.assistant, "Hello")]
        let p = try PreferenceRow.messages(prompt: user, chosen: reply, rejected: [ChatMessage(.assistant, "Go away")])
            .tokenize(tokenizer: t, chatTemplate: llama3)
        XCTAssertEqual(p.prompt.first, t.id(of: "<|im_start|>"), "BOS from the template, once")
        XCTAssertEqual(p.prompt, t.encode(try llama3.render(user, addGenerationPrompt: true)))
        XCTAssertEqual(t.decode(p.chosen), "Hello<|eot_id|>")
        // The header's "\n\n" is one token at the prompt's end, two in the whole text: tokenized
        // apart, as TRL does, the sequence is not the whole text's tokens.
        XCTAssertNotEqual(p.inputIds(.chosen), t.encode(try llama3.render(user + reply, addGenerationPrompt: false)))
        XCTAssertEqual(t.decode(p.inputIds(.chosen)), try llama3.render(user + reply, addGenerationPrompt: false))
    }

    func testImplicitPromptIsTheLongestCommonPrefix() throws {
        let s = ChatMessage(.system, "Be brief."), u = ChatMessage(.user, "Hi"), a = ChatMessage(.assistant, "Hello"),
            u2 = ChatMessage(.user, "Colour?"), good = ChatMessage(.assistant, "Blue."), bad = ChatMessage(.assistant, "No.")
        let e = try XCTUnwrap(PreferenceRow.extractPrompt(chosen: [s, u, a, u2, good], rejected: [s, u, a, u2, bad]))
        XCTAssertEqual([e.prompt, e.chosen, e.rejected], [[s, u, a, u2], [good], [bad]])
        // One side a prefix of the other: TRL's loop leaves each side its last message.
        let p = try XCTUnwrap(PreferenceRow.extractPrompt(chosen: [u, a], rejected: [u, a, u2, good]))
        XCTAssertEqual([p.prompt, p.chosen, p.rejected], [[u], [a], [a, u2, good]])
        XCTAssertNil(PreferenceRow.extractPrompt(chosen: [u, a], rejected: [u2, good]))

        // Strings: the shared start less the space before the difference.
        let t1 = try XCTUnwrap(PreferenceRow.extractPrompt(chosen: "The sky is blue.", rejected: "The sky is green."))
        XCTAssertEqual([t1.prompt, t1.chosen, t1.rejected], ["The sky is", " blue.", " green."])
        let t2 = try XCTUnwrap(PreferenceRow.extractPrompt(chosen: "Café: oui", rejected: "Café: non"))
        XCTAssertEqual([t2.prompt, t2.chosen, t2.rejected], ["Café:", " oui", " non"])

        // Loaded, the implicit rows give the explicit rows' pairs.
        func json(_ m: [ChatMessage]) -> String { String(decoding: try! JSONEncoder().encode(m), as: UTF8.self) }
        let implicit = "{\"chosen\": \(json([s, u, a, u2, good])), \"rejected\": \(json([s, u, a, u2, bad]))}"
        let explicit = "{\"prompt\": \(json([s, u, a, u2])), \"chosen\": \(json([good])), \"rejected\": \(json([bad]))}"
        XCTAssertEqual(try pair(implicit), try pair(explicit))
        XCTAssertEqual(try pair(#"{"chosen": "The sky is blue.", "rejected": "The sky is green."}"#),
                       try pair(#"{"prompt": "The sky is", "chosen": " blue.", "rejected": " green."}"#))
    }

    func testBatchesHoldBothSidesOfEachPair() throws {
        let dir = TempDir()
        let set = try load(dir, [#"{"prompt": "a b c", "chosen": " d", "rejected": " e f g h"}"#,
                                 #"{"prompt": "x", "chosen": " y z", "rejected": " w", "margin": -2}"#,
                                 #"{"prompt": "q", "chosen": " r", "rejected": " s"}"#].joined(separator: "\n"))
        let batches = set.batches(pairsPerBatch: 2)
        XCTAssertEqual(batches.map(\.pairCount), [2, 1])
        let b = batches[0], rows = b.rows
        XCTAssertEqual([rows.batchSize, b.indices.count], [4, 2])
        let sides = [set.pairs[0].example(.chosen), set.pairs[1].example(.chosen), set.pairs[0].example(.rejected), set.pairs[1].example(.rejected)]
        XCTAssertEqual(rows.lengths, sides.map(\.count))
        XCTAssertEqual(rows.sequenceLength, sides.map(\.count).max())
        for (r, side) in sides.enumerated() {
            let T = rows.sequenceLength
            XCTAssertEqual(rows.inputIds[r * T..<r * T + side.count].map(Int.init), side.inputIds, "row \(r)")
            XCTAssertEqual(rows.labels[r * T..<r * T + side.count].map(Int.init), side.labels, "row \(r)")
            XCTAssertTrue(rows.inputIds[r * T + side.count..<(r + 1) * T].allSatisfy { $0 == Int32(set.padID) })
            XCTAssertTrue(rows.labels[r * T + side.count..<(r + 1) * T].allSatisfy { $0 == Int32(M) })
        }
        XCTAssertEqual(b.margins, [0, -2])
        XCTAssertEqual(set.padID, 2)
    }

    func testPairsPastMaxLengthAreDroppedAndCounted() throws {
        let dir = TempDir()
        let rows = [#"{"prompt": "one two", "chosen": " three", "rejected": " four five six seven"}"#,
                    #"{"prompt": "one", "chosen": " two", "rejected": " three"}"#]
        let full = try load(dir, rows.joined(separator: "\n"))
        let longest = full.pairs[0].longerCount
        XCTAssertEqual(longest, t.encode("one two").count + t.encode(" four five six seven").count + 1, "by the longer side")
        XCTAssertEqual(try load(dir, rows.joined(separator: "\n"), maxLength: longest).pairs.count, 2)
        let cut = try load(dir, rows.joined(separator: "\n"), maxLength: longest - 1)
        XCTAssertEqual([cut.pairs.count, cut.tooLong, cut.skipped], [1, 1, 0])
        XCTAssertEqual(cut.pairs[0].line, 2)
        let path = (dir.path as NSString).appendingPathComponent("p.jsonl")
        XCTAssertEqual(cut.tooLongRows, [.badRow(path: path, line: 1, problem: .longerThanMaxLength(tokens: longest, maxLength: longest - 1))])
        XCTAssertTrue("\(cut.tooLongRows[0])".hasPrefix("\(path):1: its longer side has \(longest) tokens"), "\(cut.tooLongRows[0])")
        XCTAssertThrowsError(try load(dir, rows[0], maxLength: longest - 1)) { e in
            XCTAssertEqual(e as? SFTDataError, .allTooLong(path: path, dropped: 1, maxLength: longest - 1))
            XCTAssertTrue("\(e)".contains("all 1 rows are too long for max length \(longest - 1)"), "\(e)")
            XCTAssertTrue("\(e)".contains("HINT: raise --max-len"), "\(e)")
        }
    }

    func testValidationIsLongestFirstAndTrainingOrderFollowsTheSeed() throws {
        let dir = TempDir()
        let lines = (1...12).map { i in #"{"prompt": "p\#(i)", "chosen": "\#(String(repeating: " a", count: i))", "rejected": " b"}"# }
        let set = try load(dir, lines.joined(separator: "\n"))
        let (train, val) = try set.split(valFraction: 0.25, seed: 7)
        XCTAssertEqual([train.pairs.count, val.pairs.count], [9, 3])
        XCTAssertEqual(val.pairs.map(\.longerCount), val.pairs.map(\.longerCount).sorted(by: >))
        XCTAssertEqual(train.pairs.map(\.line), train.pairs.map(\.line).sorted(), "training keeps file order")
        XCTAssertEqual(Set(train.pairs.map(\.line) + val.pairs.map(\.line)), Set(1...12))
        XCTAssertEqual(try set.split(valFraction: 0.25, seed: 7).train, train)
        XCTAssertEqual(set.shuffled(seed: 3), set.shuffled(seed: 3))
        XCTAssertNotEqual(set.shuffled(seed: 3).pairs.map(\.line), set.shuffled(seed: 4).pairs.map(\.line))

        var a = try PreferenceBatchIterator(pairs: train.pairs, pairsPerBatch: 4, padID: 2, seed: 5)
        var b = try PreferenceBatchIterator(pairs: train.pairs, pairsPerBatch: 4, padID: 2, seed: 5)
        XCTAssertEqual(a.batchesPerEpoch, 3)
        let epoch0 = (0..<3).map { _ in a.next() }
        XCTAssertEqual(epoch0, (0..<3).map { _ in b.next() })
        XCTAssertEqual(epoch0.map(\.pairCount), [4, 4, 1])
        XCTAssertEqual(epoch0.flatMap(\.indices).sorted(), Array(0..<9))
        XCTAssertEqual(epoch0.flatMap(\.indices), BatchIterator.order(count: 9, seed: 5, epoch: 0))
        var resumed = try PreferenceBatchIterator(pairs: train.pairs, pairsPerBatch: 4, padID: 2, seed: 99, state: a.state)
        XCTAssertEqual(resumed.next(), a.next())
        XCTAssertEqual(a.state.epoch, 1)
        XCTAssertThrowsError(try PreferenceBatchIterator(pairs: val.pairs, pairsPerBatch: 4, padID: 2, seed: 5, state: a.state))
    }

    func testBadRowsNameFileAndLine() {
        let ok = #"{"prompt": "p", "chosen": " a", "rejected": " b"}"#
        let user = #"[{"role": "user", "content": "q"}]"#, other = #"[{"role": "user", "content": "other"}]"#
        let yes = #"[{"role": "assistant", "content": "yes"}]"#, no = #"[{"role": "assistant", "content": "no"}]"#
        assertBadRow(ok + "\n\n" + #"{"prompt": "p", "chosen": "#, line: 3, .invalidJSON(detail: invalidJSONDetail(#"{"prompt": "p", "chosen": "#)), says: "invalid JSON")
        assertBadRow(#"{"prompt": "p", "rejected": " b"}"#, line: 1, .missingKey("'chosen'"), says: "missing key 'chosen'")
        assertBadRow(ok + "\n" + #"{"prompt": "p", "chosen": " a"}"#, line: 2, .missingKey("'rejected'"))
        assertBadRow(#"{"prompt": "p", "chosen": "", "rejected": " b"}"#, line: 1, .emptyContent(key: "chosen"), says: "'chosen' is empty")
        assertBadRow(#"{"prompt": "p", "chosen": " a", "rejected": ""}"#, line: 1, .emptyContent(key: "rejected"))
        assertBadRow(#"{"prompt": \#(user), "chosen": [], "rejected": \#(no)}"#, line: 1, .emptyContent(key: "chosen"))
        assertBadRow(#"{"prompt": "p", "chosen": " a", "rejected": " a"}"#, line: 1, .chosenEqualsRejected, says: "'chosen' and 'rejected' are identical")
        assertBadRow(#"{"prompt": \#(user), "chosen": \#(yes), "rejected": \#(yes)}"#, line: 1, .chosenEqualsRejected)
        assertBadRow(#"{"chosen": "same", "rejected": "same"}"#, line: 1, .chosenEqualsRejected)
        assertBadRow(#"{"prompt": \#(other), "chosen": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "yes"}], "rejected": \#(no)}"#,
                     line: 1, .promptNotPrefix(side: "chosen"), says: "'chosen' is a whole conversation that does not start with the 'prompt' messages")
        assertBadRow(#"{"prompt": "q", "chosen": \#(yes), "rejected": \#(no)}"#, line: 1, .wrongType(key: "prompt", expected: "a list of messages, as 'chosen' is"))
        assertBadRow(#"{"prompt": "q", "chosen": " a", "rejected": \#(no)}"#, line: 1, .wrongType(key: "rejected", expected: "a string, as 'chosen' is"))
        assertBadRow(#"{"prompt": \#(user), "chosen": \#(user), "rejected": \#(no)}"#, line: 1, .emptyContent(key: "chosen"))
        assertBadRow(#"{"chosen": "yes", "rejected": "no"}"#, line: 1, .noSharedPrompt, says: "'chosen' and 'rejected' share no prompt")
        assertBadRow(#"{"chosen": \#(user.dropLast()), {"role": "assistant", "content": "y"}], "rejected": \#(other.dropLast()), {"role": "assistant", "content": "y"}]}"#,
                     line: 1, .noSharedPrompt)
        assertBadRow(ok.dropLast() + #", "margin": "high"}"#, line: 1, .wrongType(key: "margin", expected: "a number"), says: "'margin' must be a number")
        assertBadRow(ok.dropLast() + #", "margin": true}"#, line: 1, .wrongType(key: "margin", expected: "a number"))
        assertBadRow(#"{"prompt": \#(user), "chosen": [{"role": "robot", "content": "y"}], "rejected": \#(no)}"#, line: 1, .unknownRole(message: 0, role: "robot"))
        assertBadRow(#"{"prompt": \#(user), "chosen": [{"role": "assistant", "content": " "}], "rejected": \#(no)}"#, line: 1, .emptyContent(key: "chosen[0].content"))
        assertBadRow(#"{"chosen": 1, "rejected": 2}"#, line: 1, .wrongType(key: "chosen", expected: "a string or a list of messages"))
        assertBadRow(#"[1, 2]"#, line: 1, .notAnObject(kind: "an array"))
    }

    /// What Foundation says about the bad line, so the test does not pin its wording.
    func invalidJSONDetail(_ line: String) -> String {
        do { _ = try JSONSerialization.jsonObject(with: Data(line.utf8), options: [.fragmentsAllowed]) } catch {
            return (error as NSError).userInfo[NSDebugDescriptionErrorKey] as? String ?? "\(error)"
        }
        return "parsed"
    }

    func testFolderOfJSONArraysAndLinesKeepsFileOrderAndLines() throws {
        let dir = TempDir()
        let b = dir.write("b.json", "[\n  {\"prompt\": \"Q\", \"chosen\": \" yes\", \"rejected\": \" no\"},\n\n"
                                    + "  {\"prompt\": \"R\", \"chosen\": \" up\", \"rejected\": \" down\"}\n]")
        dir.write("a.jsonl", #"{"prompt": "P", "chosen": " one", "rejected": " two"}"#)
        dir.write("notes.txt", "not pairs")
        let set = try PreferenceDataSet.load(paths: [dir.path], tokenizer: t, chatTemplate: chatml, maxLength: 64)
        XCTAssertEqual(set.pairs.map { t.decode($0.prompt) }, ["P", "Q", "R"], "a.jsonl, then b.json; no .txt")
        XCTAssertEqual(set.pairs.map(\.line), [1, 2, 4])
        let bad = dir.write("c.json", "[\n{\"chosen\": \"same\", \"rejected\": \"same\"}\n]")
        XCTAssertThrowsError(try PreferenceDataSet.load(paths: [dir.path + "/*.json"], tokenizer: t, maxLength: 64)) { e in
            XCTAssertEqual(e as? SFTDataError, .badRow(path: bad, line: 2, problem: .chosenEqualsRejected))
        }
        let empty = TempDir()
        empty.write("rows.csv", "text\nx\n")
        XCTAssertThrowsError(try PreferenceDataSet.load(paths: [empty.path], tokenizer: t, maxLength: 64)) { e in
            XCTAssertEqual(e as? SFTDataError, .noDataFiles(source: empty.path, reason: "a folder with no .jsonl or .json file"))
        }
    }

    func testMissingFileIsUnreadable() {
        let dir = TempDir()
        let path = (dir.path as NSString).appendingPathComponent("none.jsonl")
        XCTAssertThrowsError(try PreferenceDataSet.load(path: path, tokenizer: t, maxLength: 64)) { e in
            XCTAssertEqual(e as? SFTDataError, .unreadable(path: path, reason: "no such file"))
        }
    }

    func testSkipBadCountsRows() throws {
        let dir = TempDir()
        let lines = [#"{"prompt": "p", "chosen": " a", "rejected": " b"}"#, #"{"prompt": "p", "chosen": " a", "rejected": " a"}"#,
                     "{", #"{"prompt": "p", "chosen": " c", "rejected": " d", "margin": 0.5}"#]
        let set = try load(dir, lines.joined(separator: "\n"), skipBad: true)
        XCTAssertEqual(set.pairs.map(\.line), [1, 4])
        XCTAssertEqual(set.pairs.map(\.margin), [nil, 0.5])
        XCTAssertEqual(set.skipped, 2)
        guard case .badRow(_, 2, .chosenEqualsRejected) = set.skippedReasons[0] else { return XCTFail("\(set.skippedReasons)") }
        guard case .badRow(_, 3, .invalidJSON) = set.skippedReasons[1] else { return XCTFail("\(set.skippedReasons)") }
    }

    func testDemoSetLoadsWithSmolLM2() throws {
        for (name, count) in [("train.jsonl", 400), ("val.jsonl", 80)] {
            let path = (Self.demo as NSString).appendingPathComponent(name)
            let set = try PreferenceDataSet.load(path: path, tokenizer: t, chatTemplate: chatml, maxLength: 512)
            XCTAssertEqual([set.pairs.count, set.skipped, set.tooLong], [count, 0, 0], name)
            let lines = try String(contentsOfFile: path, encoding: .utf8).split(separator: "\n")
            XCTAssertEqual(lines.count, count)
            struct Row: Decodable { let prompt, chosen, rejected: [ChatMessage] }
            for p in set.pairs {
                let row = try JSONDecoder().decode(Row.self, from: Data(lines[p.line - 1].utf8))
                XCTAssertEqual(p.prompt, t.encode(try chatml.render(row.prompt, addGenerationPrompt: true)), "\(name):\(p.line)")
                XCTAssertEqual(t.decode(p.chosen), row.chosen[0].content + "<|im_end|>\n", "\(name):\(p.line)")
                XCTAssertEqual(t.decode(p.rejected), row.rejected[0].content + "<|im_end|>\n", "\(name):\(p.line)")
                XCTAssertNotEqual(p.chosen, p.rejected)
            }
            XCTAssertLessThan(set.pairs.map(\.longerCount).max()!, 200)
        }
    }
}
