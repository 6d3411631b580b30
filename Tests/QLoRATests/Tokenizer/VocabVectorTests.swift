import Foundation
import QLoRA
import XCTest

/// The tokenizers on llama.cpp's vocab-only GGUFs against the ids each model's own Hugging Face
/// tokenizer gives (llama.cpp's models/ggml-vocab-*.gguf.inp/.out, the vectors its
/// test-tokenizer-0 checks; tools/make_vocab_vector_fixtures.py). The GGUFs are not in git:
/// tools/setup.sh fetches them into models/vocab/.
final class VocabVectorTests: XCTestCase {
    static let fixtures = Bundle.module.url(forResource: "Fixtures", withExtension: nil)!
    static let vocabDirectory = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
        .appendingPathComponent("../../../models/vocab").standardized.path

    struct Vectors: Decodable {
        struct Case: Decodable {
            let text: String
            let ids: [Int]
        }
        let vocabs: [String: [Case]]
    }

    static let vectors: Vectors = try! JSONDecoder().decode(
        Vectors.self, from: Data(contentsOf: fixtures.appendingPathComponent("llama-vocab-vectors.json")))

    /// The tokenizer of models/vocab/ggml-vocab-NAME.gguf; a missing file fails the test, naming setup.sh.
    ///
    /// gguf-py writes a file without tensors with no padding after the tensor infos, which
    /// llama.cpp reads (it seeks past the end) and GGUFFile refuses as truncated: the test reads
    /// a copy padded to the 32-byte alignment.
    static func tokenizer(_ name: String) throws -> Tokenizer {
        let path = vocabDirectory + "/ggml-vocab-\(name).gguf"
        guard let bytes = FileManager.default.contents(atPath: path) else { throw MissingVocab(path: path) }
        let padded = Array(bytes) + [UInt8](repeating: 0, count: (32 - bytes.count % 32) % 32)
        let dir = TempDir()
        let t = try Tokenizer(gguf: GGUFFile(path: dir.write("ggml-vocab-\(name).gguf", padded)))
        XCTAssertTrue(t.source.hasSuffix("ggml-vocab-\(name).gguf"))
        return t
    }

    struct MissingVocab: Error, CustomStringConvertible {
        let path: String
        var description: String { "\(path) is missing\n---> HINT: run tools/setup.sh (it fetches llama.cpp's vocab GGUFs into models/vocab/)" }
    }

    /// Each text's ids, and the text back from them; the ids of the texts that differ.
    func check(_ name: String, file: StaticString = #filePath, line: UInt = #line) throws -> [Int] {
        let t = try Self.tokenizer(name)
        let cases = try XCTUnwrap(Self.vectors.vocabs[name])
        XCTAssertEqual(cases.count, 46, file: file, line: line)
        var failed: [Int] = []
        for (i, c) in cases.enumerated() {
            let ids = t.encode(c.text)
            if ids != c.ids { failed.append(i) }
            XCTAssertEqual(ids, c.ids, "\(name) #\(i): \(c.text.debugDescription)", file: file, line: line)
            let space = t.addsSpacePrefix && !c.text.isEmpty ? " " : ""
            XCTAssertEqual(t.decode(c.ids), space + c.text, "\(name) #\(i) decoded", file: file, line: line)
        }
        return failed
    }

    func testLlamaSPM() throws {
        let t = try Self.tokenizer("llama-spm")
        XCTAssertEqual(t.model, .sentencePiece)
        XCTAssertEqual([t.vocabSize, t.bos, t.eos], [32000, 1, 2])
        XCTAssertTrue(t.addsSpacePrefix)
        XCTAssertEqual(t.prefix, [1], "add_bos_token")
        XCTAssertEqual(t.missingBytes, [])
        XCTAssertEqual(try check("llama-spm"), [])
    }

    func testPhi3() throws {
        let t = try Self.tokenizer("phi-3")
        XCTAssertEqual([t.vocabSize, t.bos, t.eos], [32064, 1, 32000])
        XCTAssertEqual(["<|user|>", "<|end|>", "<|assistant|>"].map { t.id(of: $0).map(t.isSpecial) }, [true, true, true])
        // general.name "Phi3": llama.cpp drops the whitespace after its added tokens, then the
        // text after one gets the space prefix.
        XCTAssertEqual(t.encode("<|user|>\nHi<|end|>\n<|assistant|>\n"), [32010, 6324, 32007, 32001])
        XCTAssertEqual(t.encode("<s>\n<|endoftext|>\n"), [1, 29871, 13, 32000, 29871, 13], "<s> and <|endoftext|> keep it")
        XCTAssertEqual(t.addedTokens.filter(\.rstrip).count, t.addedTokens.count - 3)
        XCTAssertEqual(try check("phi-3"), [])
    }

    /// The byte-level BPE of each pre-tokenizer family on its real vocabulary.
    func testBytePairVocabularies() throws {
        for (name, pre) in [("qwen2", PreTokenizer.qwen2), ("llama-bpe", .llama3), ("gpt-2", .gpt2), ("starcoder", .digitsThenGPT2),
                            ("refact", .digitsThenGPT2)] {
            let t = try Self.tokenizer(name)
            XCTAssertEqual(t.model, .bytePair)
            XCTAssertEqual(t.preTokenizer, pre, name)
            XCTAssertEqual(try check(name), [], name)
        }
    }
}
