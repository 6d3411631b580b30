import Foundation
import QLoRA
import XCTest

/// The tokenizer against Hugging Face `tokenizers` (tools/make_tokenizer_fixtures.py): 73
/// strings through SmolLM2's vocabulary under four pre-tokenizers, from the GGUF and from the
/// tokenizer.json transformers saves; and the merge loop by hand on a tiny vocabulary.
final class TokenizerTests: XCTestCase {
    static let fixtures = Bundle.module.url(forResource: "Fixtures", withExtension: nil)!
    static let modelPath = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
        .appendingPathComponent("../../../models/SmolLM2-135M-Instruct.Q4_1.gguf").standardized.path
    static let tokenizerJSON = fixtures.appendingPathComponent("tokenizer-smollm2/tokenizer.json").path

    struct Reference: Decodable, Sendable {
        struct Case: Decodable, Sendable {
            let text: String
            let decoded: String
            let decoded_skip_special: String
        }
        struct Variant: Decodable, Sendable {
            let ignore_merges: Bool
            let ids: [[Int]]
        }
        struct Partial: Decodable, Sendable {
            let ids: [Int]
            let decoded: String
        }
        let cases: [Case]
        let variants: [String: Variant]
        let decode_partial: [Partial]
        let differs_from_transformers_gguf: [Int]
        let missing_bytes: [UInt8]
    }

    static let reference: Reference = try! JSONDecoder().decode(
        Reference.self, from: Data(contentsOf: fixtures.appendingPathComponent("tokenizer-smollm2.json")))
    /// The tokenizer transformers builds from the GGUF and saves: GPT-2's ByteLevel regex.
    static let saved: Tokenizer = try! Tokenizer(tokenizerJSON: tokenizerJSON)

    func assertEncodes(_ tokenizer: Tokenizer, _ variant: String, file: StaticString = #filePath, line: UInt = #line) {
        let expected = Self.reference.variants[variant]!.ids
        XCTAssertEqual(Self.reference.cases.count, expected.count)
        for (c, ids) in zip(Self.reference.cases, expected) {
            XCTAssertEqual(tokenizer.encode(c.text), ids, "\(variant): \(c.text.debugDescription)", file: file, line: line)
        }
    }

    func testGGUFEncodesAsSmolLM2sTokenizer() throws {
        guard FileManager.default.fileExists(atPath: Self.modelPath) else { throw XCTSkip("\(Self.modelPath) missing: run tools/setup.sh") }
        let t = try Tokenizer(gguf: GGUFFile(path: Self.modelPath))
        XCTAssertEqual(t.preTokenizer, .digitsThenGPT2)
        XCTAssertEqual([t.vocabSize, t.bos, t.eos], [49152, 1, 2])
        XCTAssertEqual(t.addedTokens.count, 17)
        assertEncodes(t, "smollm")
        for (c, ids) in zip(Self.reference.cases, Self.reference.variants["smollm"]!.ids) {
            XCTAssertEqual(t.decode(ids), c.decoded)
            XCTAssertEqual(t.decode(ids, skipSpecialTokens: true), c.decoded_skip_special)
            XCTAssertEqual(t.encode(c.text, addSpecialTokens: true), ids, "add_bos_token is false")
        }
        // Where transformers' own GGUF tokenizer (no digit split) disagrees: spaces before a digit.
        XCTAssertEqual(Self.reference.differs_from_transformers_gguf.map { Self.reference.cases[$0].text.prefix(4) }, ["x  1", "1  2", "Frac"])
        XCTAssertEqual(t.encode("x  1"), [104, 256, 33])  // x ĠĠ 1
        XCTAssertEqual(Self.saved.encode("x  1"), [104, 216, 216, 33])  // x Ġ Ġ 1
    }

    func testTokenizerJSONAsTransformersSavedIt() {
        let t = Self.saved
        XCTAssertEqual(t.preTokenizer, .gpt2)
        XCTAssertEqual([t.vocabSize, t.bos, t.eos], [49152, 1, 2])
        XCTAssertEqual([t.id(of: "<|im_start|>"), t.id(of: "Ġthe"), t.id(of: "the\u{0}")], [1, 260, nil])
        XCTAssertEqual(t.token(of: 260), "Ġthe")
        XCTAssertTrue(t.isSpecial(0) && !t.isSpecial(260))
        assertEncodes(t, "transformers_gguf")
    }

    /// The same vocabulary under each family's tokenizer.json pre-tokenizer (and llama3's
    /// ignore_merges), written into a copy of the saved tokenizer.json.
    func testTokenizerJSONPreTokenizerFamilies() throws {
        let dir = TempDir()
        var spec = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: Self.tokenizerJSON))) as! [String: Any]
        let raw = try JSONSerialization.jsonObject(with: Data(contentsOf: Self.fixtures.appendingPathComponent("tokenizer-smollm2.json"))) as! [String: Any]
        let variants = raw["variants"] as! [String: [String: Any]]
        for (name, kind) in [("smollm", PreTokenizer.digitsThenGPT2), ("llama3", .llama3), ("qwen2", .qwen2), ("transformers_gguf", .gpt2)] {
            spec["pre_tokenizer"] = variants[name]!["pre_tokenizer"]
            var model = spec["model"] as! [String: Any]
            model["ignore_merges"] = variants[name]!["ignore_merges"]
            spec["model"] = model
            let path = dir.write("\(name).json", Array(try JSONSerialization.data(withJSONObject: spec)))
            let t = try Tokenizer(tokenizerJSON: path)
            XCTAssertEqual(t.preTokenizer, kind)
            XCTAssertEqual(t.ignoresMerges, Self.reference.variants[name]!.ignore_merges)
            assertEncodes(t, name)
        }
    }

    func testPreTokenizersCutWordsAsTokenizers() throws {
        let words = try JSONSerialization.jsonObject(with: Data(contentsOf: Self.fixtures.appendingPathComponent("tokenizer-pretokenizers.json"))) as! [String: Any]
        for (name, kind) in [("gpt2", PreTokenizer.gpt2), ("llama3", .llama3), ("qwen2", .qwen2), ("smollm", .digitsThenGPT2)] {
            let expected = words[name] as! [[String]]
            for (c, w) in zip(Self.reference.cases, expected) {
                XCTAssertEqual(kind.split(c.text), w, "\(name): \(c.text.debugDescription)")
            }
        }
        XCTAssertEqual(PreTokenizer.llama3.split("1234567 DON'T"), ["123", "456", "7", " DON", "'T"])
        XCTAssertEqual(PreTokenizer.gpt2.split("DON'T don't"), ["DON", "'", "T", " don", "'t"])
    }

    /// decode(encode(s)) == s byte for byte: the fixture strings and seeded random scalars; less
    /// the bytes SmolLM2 has no token for, which tokenizers drops too.
    func testRoundTripIsLossless() {
        let t = Self.saved
        XCTAssertEqual(t.missingBytes, Self.reference.missing_bytes)
        let missing = Set(t.missingBytes)
        var texts = Self.reference.cases.map(\.text)
        var rng = SplitMix64(seed: 7)
        let ranges: [ClosedRange<UInt32>] = [0...0x7F, 0x80...0x7FF, 0x800...0xD7FF, 0xE000...0xFFFF, 0x10000...0x10FFFF]
        for _ in 0..<200 {
            var s = String.UnicodeScalarView()
            for _ in 0..<Int(rng.next() % 40) {
                let r = ranges[Int(rng.next() % UInt64(ranges.count))]
                s.append(Unicode.Scalar(r.lowerBound + UInt32(rng.next() % UInt64(r.upperBound - r.lowerBound + 1)))!)
            }
            texts.append(String(s) + (rng.next() % 3 == 0 ? "<|im_end|>" : " "))
        }
        var lossless = 0
        for s in texts {
            let kept = s.utf8.filter { !missing.contains($0) }
            XCTAssertEqual(Array(t.decode(t.encode(s)).utf8), Array(String(decoding: kept, as: UTF8.self).utf8), s.debugDescription)
            if kept.count == s.utf8.count { lossless += 1 }
        }
        XCTAssertGreaterThan(lossless, 100, "most texts avoid the missing bytes")
    }

    func testPartialCharactersDecodeToReplacement() {
        XCTAssertFalse(Self.reference.decode_partial.isEmpty)
        for p in Self.reference.decode_partial {
            XCTAssertEqual(Self.saved.decode(p.ids), p.decoded, "\(p.ids)")
        }
        XCTAssertEqual(Self.saved.decode([-1, 1_000_000]), "", "ids outside the vocabulary are skipped")
    }

    func testEncodingFromManyThreadsAgrees() {
        let t = Self.saved, texts = Self.reference.cases.map(\.text), expected = Self.reference.variants["transformers_gguf"]!.ids
        let failures = Self.Counter()
        DispatchQueue.concurrentPerform(iterations: 64) { k in
            let i = (k * 7) % texts.count
            if t.encode(texts[i]) != expected[i] { failures.add() }
        }
        XCTAssertEqual(failures.value, 0)
    }

    func testUnsupportedKindsThrow() throws {
        let dir = TempDir()
        var w = GGUFWriter()
        w.metadata = [("general.architecture", .string("bert")), ("tokenizer.ggml.model", .string("bert")),
                      ("tokenizer.ggml.tokens", .array([.string("[UNK]"), .string("a")]))]
        let wordPiece = dir.write("wpm.gguf", w.serialize { _ in [] })
        XCTAssertThrowsError(try Tokenizer(gguf: GGUFFile(path: wordPiece))) { e in
            XCTAssertEqual(e as? TokenizerError, .unsupportedTokenizer(source: wordPiece, kind: "bert"))
            XCTAssertTrue("\(e)".hasPrefix("unsupported tokenizer 'bert' in \(wordPiece): only byte-level BPE"), "\(e)")
        }
        w.metadata = [("tokenizer.ggml.model", .string("gpt2")), ("tokenizer.ggml.pre", .string("tekken")),
                      ("tokenizer.ggml.tokens", .array(Self.byteTokens.map { .string($0) }))]
        let tekken = dir.write("tekken.gguf", w.serialize { _ in [] })
        XCTAssertThrowsError(try Tokenizer(gguf: GGUFFile(path: tekken))) { e in
            XCTAssertEqual(e as? TokenizerError, .unsupportedPreTokenizer(source: tekken, description: "'tekken' (tokenizer.ggml.pre)"))
        }
        let unigram = dir.write("tokenizer.json", #"{"model": {"type": "Unigram", "vocab": []}, "decoder": {"type": "Metaspace"}}"#)
        XCTAssertThrowsError(try Tokenizer(tokenizerJSON: unigram)) { e in
            XCTAssertEqual(e as? TokenizerError, .unsupportedTokenizer(source: unigram, kind: "Unigram"))
        }
        XCTAssertThrowsError(try Self.tiny(merges: [("a", "q")])) { e in
            XCTAssertEqual(e as? TokenizerError, .badMerge(source: "(in memory)", index: 0, merge: "a q", detail: "'aq' is not in the vocabulary"))
        }
    }

    // MARK: a tiny vocabulary by hand

    /// The 256 byte tokens, id = byte.
    static let byteTokens: [String] = (0..<256).map { String(Unicode.Scalar(byteSpelling($0))!) }

    static func tiny(_ extra: [String] = ["ab", "bc", "cd", "abc", "bcd", "abcd", "aa", "abd"], merges: [(String, String)],
                     added: [AddedToken] = [], ignoreMerges: Bool = false) throws -> Tokenizer {
        try Tokenizer(tokens: byteTokens + extra, merges: merges, addedTokens: added, preTokenizer: .gpt2, ignoreMerges: ignoreMerges)
    }

    func testMergesApplyInRankOrderNotLeftToRight() throws {
        func names(_ t: Tokenizer, _ s: String) -> [String] { t.encode(s).map { t.token(of: $0)! } }
        let bcFirst = try Self.tiny(merges: [("b", "c"), ("a", "b"), ("c", "d"), ("bc", "d"), ("a", "bcd")])
        XCTAssertEqual(names(bcFirst, "abcd"), ["abcd"])      // a b c d → a bc d → a bcd → abcd
        XCTAssertEqual(names(bcFirst, "abc"), ["a", "bc"])    // no "a bc" merge
        let abFirst = try Self.tiny(merges: [("a", "b"), ("ab", "c"), ("c", "d")])
        XCTAssertEqual(names(abFirst, "abcd"), ["abc", "d"])  // a b c d → ab c d → abc d: "ab c" ranks before "c d"
        let cdFirst = try Self.tiny(merges: [("c", "d"), ("a", "b"), ("ab", "c")])
        XCTAssertEqual(names(cdFirst, "abcd"), ["ab", "cd"])  // a b c d → a b cd → ab cd
        // Equal ranks: leftmost first.
        let aa = try Self.tiny(merges: [("a", "a")])
        XCTAssertEqual(names(aa, "aaa"), ["aa", "a"])
        XCTAssertEqual(names(aa, "aaaa"), ["aa", "aa"])
        // ignore_merges: a word that is a token is taken whole, merges or not.
        XCTAssertEqual(names(try Self.tiny(merges: [("a", "b")]), "abd"), ["ab", "d"])
        XCTAssertEqual(names(try Self.tiny(merges: [("a", "b")], ignoreMerges: true), "abd"), ["abd"])
        // Words are BPE'd apart: no merge crosses " a" | "b".
        XCTAssertEqual(names(abFirst, "a b"), ["a", "Ġ", "b"])
    }

    func testAddedTokensLongestFirstAndSpecialOnly() throws {
        let t = try Self.tiny(["<s>", "<s>x", "<t>"], merges: [], added: [
            AddedToken(id: 256, content: "<s>", special: true), AddedToken(id: 257, content: "<s>x", special: true),
            AddedToken(id: 258, content: "<t>", special: false)])
        XCTAssertEqual(t.encode("a<s>xb<s><t>"), [97, 257, 98, 256, 258])
        XCTAssertEqual(t.encode("<s"), [60, 115])
        XCTAssertEqual(t.decode([97, 257, 98, 256, 258], skipSpecialTokens: true), "ab<t>")
    }

    /// tokenizer.json merges as "a b" strings read as [a, b] pairs; TemplateProcessing's BOS.
    func testTokenizerJSONMergeFormsAndTemplate() throws {
        let dir = TempDir()
        var vocab: [String: Int] = [:]
        for (i, t) in (Self.byteTokens + ["ab", "abc", "bca"]).enumerated() { vocab[t] = i }
        func write(_ merges: Any) throws -> Tokenizer {
            let spec: [String: Any] = [
                "model": ["type": "BPE", "vocab": vocab, "merges": merges],
                "added_tokens": [["id": 259, "content": "<|begin_of_text|>", "special": true]],
                "pre_tokenizer": ["type": "Sequence", "pretokenizers": [
                    ["type": "Split", "pattern": ["Regex": #"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"#],
                     "behavior": "Isolated", "invert": false],
                    ["type": "ByteLevel", "add_prefix_space": false, "use_regex": false]]],
                "post_processor": ["type": "Sequence", "processors": [
                    ["type": "ByteLevel"],
                    ["type": "TemplateProcessing", "single": [["SpecialToken": ["id": "<|begin_of_text|>", "type_id": 0]], ["Sequence": ["id": "A", "type_id": 0]]],
                     "special_tokens": ["<|begin_of_text|>": ["id": "<|begin_of_text|>", "ids": [259], "tokens": ["<|begin_of_text|>"]]]]]],
                "decoder": ["type": "ByteLevel"], "normalizer": NSNull(),
            ]
            return try Tokenizer(tokenizerJSON: dir.write("tokenizer.json", Array(try JSONSerialization.data(withJSONObject: spec))))
        }
        for t in [try write(["a b", "ab c"]), try write([["a", "b"], ["ab", "c"]])] {
            XCTAssertEqual(t.preTokenizer, .llama3)
            XCTAssertEqual(t.encode("abcab"), [257, 256])
            XCTAssertEqual(t.encode("abc", addSpecialTokens: true), [259, 257])
            XCTAssertEqual(t.vocabSize, 260)
        }
    }

    /// GPT-2's byte → character table, written out independently of the library's.
    static func byteSpelling(_ b: Int) -> UInt32 {
        let printable = Array(33...126) + Array(161...172) + Array(174...255)
        if printable.contains(b) { return UInt32(b) }
        return 256 + UInt32((0..<b).filter { !printable.contains($0) }.count)
    }


    final class Counter: @unchecked Sendable {
        private let lock = NSLock()
        private var n = 0
        func add() { lock.lock(); n += 1; lock.unlock() }
        var value: Int { lock.lock(); defer { lock.unlock() }; return n }
    }
}
