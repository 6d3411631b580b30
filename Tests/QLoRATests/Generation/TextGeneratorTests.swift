import Foundation
import QLoRA
import XCTest

/// Generation on SmolLM2: greedy chat output, seeded reproducibility, stop strings, and text
/// streamed whole characters at a time.
final class TextGeneratorTests: XCTestCase {
    static let modelPath = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
        .appendingPathComponent("../../../models/SmolLM2-135M-Instruct.Q4_1.gguf").standardized.path
    static let loaded: Result<LanguageModel, any Error>? = FileManager.default.fileExists(atPath: modelPath)
        ? Result { try LanguageModel(path: modelPath) } : nil

    func model() throws -> LanguageModel {
        guard let loaded = Self.loaded else { throw XCTSkip("\(Self.modelPath) missing: run tools/setup.sh") }
        return try loaded.get()
    }

    func chatIDs(_ lm: LanguageModel, _ message: String) throws -> (ids: [Int], stop: Set<Int>) {
        let t = try lm.chatTemplate()
        return (lm.tokenizer.encode(try t.render([ChatMessage(.user, message)], addGenerationPrompt: true)), lm.stopTokens(template: t))
    }

    func testGreedyChatAnswersAndStopsAtEndOfTurn() throws {
        let lm = try model()
        let (ids, stop) = try chatIDs(lm, "What is the capital of France?")
        XCTAssertEqual(stop, [2])
        var text = ""
        let report = try TextGenerator(model: lm).generate(prompt: ids, options: .init(maxNewTokens: 40, sampling: .greedy, seed: 0, stopTokens: stop)) { text += $0 }
        XCTAssertEqual(text, "The capital of France is Paris.")
        XCTAssertEqual(report.stopReason, .stopToken)
        XCTAssertEqual(report.generated, try lm.model.generate(prompt: ids, maxNewTokens: 40, stopAt: stop))
    }

    func testSeedReproducesAndStopStringCuts() throws {
        let lm = try model()
        let (ids, stop) = try chatIDs(lm, "Tell me a story.")
        func run(_ seed: UInt64, _ stops: [String] = []) throws -> (String, TextGenerator.Report) {
            var text = ""
            let r = try TextGenerator(model: lm).generate(prompt: ids, options: .init(maxNewTokens: 24, sampling: .init(), seed: seed, stopTokens: stop, stopStrings: stops)) { text += $0 }
            return (text, r)
        }
        let (a, ra) = try run(11), (b, rb) = try run(11)
        XCTAssertEqual(a, b)
        XCTAssertEqual(ra.generated, rb.generated)
        let word = try XCTUnwrap(a.split(separator: " ").dropFirst(2).first.map(String.init))
        let (c, rc) = try run(11, [word])
        XCTAssertEqual(rc.stopReason, .stopString)
        XCTAssertEqual(c, String(a[..<a.range(of: word)!.lowerBound]))
    }

    /// "é" is one token in SmolLM2's vocabulary but the emoji spans byte tokens: nothing is printed
    /// until a character is whole.
    func testStreamPrintsWholeCharacters() throws {
        let lm = try model()
        let ids = lm.tokenizer.encode("Café 🚀 ok")
        var stream = TokenTextStream(tokenizer: lm.tokenizer, stopStrings: [])
        var pieces: [String] = []
        for id in ids { pieces.append(stream.append(id).text) }
        pieces.append(stream.finish())
        XCTAssertEqual(pieces.joined(), "Café 🚀 ok")
        XCTAssertFalse(pieces.contains { $0.contains("\u{FFFD}") })
    }
}
