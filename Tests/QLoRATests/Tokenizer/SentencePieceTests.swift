import Foundation
import QLoRA
import XCTest

/// SentencePiece by hand on a tiny vocabulary: merges by score, byte fallback, the space
/// prefix before the text and after added tokens, decoding by token type, the GGUF keys.
final class SentencePieceTests: XCTestCase {
    /// 0 <unk>, 1 <s>, 2 </s>, 3... the 256 byte tokens, then the pieces below.
    static let pieces: [(String, Float, GGUFTokenType)] = [
        ("▁", -1, .normal), ("a", -2, .normal), ("b", -2, .normal), ("ab", -1, .normal), ("▁a", -3, .normal),
        ("aa", -4, .normal), ("<t>", 0, .userDefined), ("<unused0>", 0, .unused), ("▁▁", -6, .normal),
    ]
    static let tokens = ["<unk>", "<s>", "</s>"] + (0..<256).map { String(format: "<0x%02X>", $0) } + pieces.map(\.0)
    static let scores: [Float] = [0, 0, 0] + [Float](repeating: 0, count: 256) + pieces.map(\.1)
    static let types: [GGUFTokenType] = [.unknown, .control, .control] + [GGUFTokenType](repeating: .byte, count: 256) + pieces.map(\.2)

    func tiny(spacePrefix: Bool = true) throws -> Tokenizer {
        try Tokenizer(sentencePieceTokens: Self.tokens, scores: Self.scores, types: Self.types, addsSpacePrefix: spacePrefix,
                      bos: 1, eos: 2, prefix: [1])
    }

    func names(_ t: Tokenizer, _ s: String) -> [String] { t.encode(s).map { t.token(of: $0)! } }

    func testMergesByScoreThenLeftmost() throws {
        let t = try tiny()
        XCTAssertEqual(t.model, .sentencePiece)
        XCTAssertEqual(names(t, "ab"), ["▁", "ab"])         // ▁ a b: "ab" (-1) beats "▁a" (-3)
        XCTAssertEqual(names(t, "a"), ["▁a"])
        XCTAssertEqual(names(t, "aaa"), ["▁a", "aa"])      // ▁a (-3) beats aa (-4); then a a
        XCTAssertEqual(names(try tiny(spacePrefix: false), "aaa"), ["aa", "a"])  // equal scores: leftmost
        XCTAssertEqual(names(t, "a  b"), ["▁a", "▁▁", "b"])
        XCTAssertEqual(t.encode("ab", addSpecialTokens: true), [1, 259, 262])
    }

    func testBytesOutsideTheVocabularyFallBackToByteTokens() throws {
        let t = try tiny(spacePrefix: false)
        XCTAssertEqual(names(t, "é\n"), ["<0xC3>", "<0xA9>", "<0x0A>"])
        XCTAssertEqual(t.decode(t.encode("é\n")), "é\n")
        XCTAssertEqual(t.missingBytes, [])
    }

    /// llama.cpp's is_prev_special: the text after any added token gets the space prefix too.
    func testAddedTokensAndTheSpacePrefix() throws {
        let t = try tiny()
        XCTAssertEqual(names(t, "<s>a</s>b<t>a"), ["<s>", "▁a", "</s>", "▁", "b", "<t>", "▁a"])
        XCTAssertEqual(names(try tiny(spacePrefix: false), "<s>a<t>a"), ["<s>", "a", "<t>", "a"])
        XCTAssertEqual(names(t, "<unk>"), ["<unk>"])
        XCTAssertTrue(t.isSpecial(0) && t.isSpecial(1) && !t.isSpecial(t.id(of: "<t>")!))
        XCTAssertEqual(t.addedTokens.map(\.content), ["<unk>", "<s>", "</s>", "<t>"])
    }

    func testDecodeByTokenType() throws {
        let t = try tiny()
        let ids = [1, t.id(of: "▁a")!, t.id(of: "▁▁")!, t.id(of: "<t>")!, t.id(of: "<unused0>")!, 3 + 0x41, 2]
        XCTAssertEqual(t.decode(ids), "<s> a  <t>A</s>")
        XCTAssertEqual(t.decode(ids, skipSpecialTokens: true), " a  <t>A")
        XCTAssertEqual(Array(t.bytes(of: t.id(of: "▁a")!)), [0x20, 0x61])
    }

    func testGGUFKeys() throws {
        let dir = TempDir()
        var w = GGUFWriter()
        let metadata: [(key: String, value: GGUFValue)] = [
            ("general.architecture", .string("gemma3")), ("tokenizer.ggml.model", .string("llama")),
            ("tokenizer.ggml.tokens", .array(Self.tokens.map { .string($0) })),
            ("tokenizer.ggml.scores", .array(Self.scores.map { .float32($0) })),
            ("tokenizer.ggml.token_type", .array(Self.types.map { .int32(Int32($0.rawValue)) })),
        ]
        w.metadata = metadata
        let defaults = try Tokenizer(gguf: GGUFFile(path: dir.write("defaults.gguf", w.serialize { _ in [] })))
        XCTAssertEqual(defaults.model, .sentencePiece)
        XCTAssertTrue(defaults.addsSpacePrefix, "add_space_prefix defaults to true")
        XCTAssertEqual([defaults.bos, defaults.eos], [1, 2], "SentencePiece's own BOS and EOS")
        XCTAssertEqual([defaults.prefix, defaults.suffix], [[1], []], "add_bos_token defaults to true")
        XCTAssertEqual(names(defaults, "ab"), ["▁", "ab"])

        w.metadata = metadata + [("tokenizer.ggml.add_space_prefix", .bool(false)), ("tokenizer.ggml.add_bos_token", .bool(false)),
                                 ("tokenizer.ggml.add_eos_token", .bool(true)), ("tokenizer.ggml.eos_token_id", .uint32(0))]
        let gemma = try Tokenizer(gguf: GGUFFile(path: dir.write("gemma.gguf", w.serialize { _ in [] })))
        XCTAssertFalse(gemma.addsSpacePrefix)
        XCTAssertEqual(gemma.encode("ab", addSpecialTokens: true), [262, 0])

        w.metadata = metadata.filter { $0.key != "tokenizer.ggml.scores" } + [("tokenizer.ggml.scores", .array([.float32(0)]))]
        let bad = dir.write("bad.gguf", w.serialize { _ in [] })
        XCTAssertThrowsError(try Tokenizer(gguf: GGUFFile(path: bad))) { e in
            XCTAssertEqual(e as? TokenizerError, .badValue(source: bad, key: "tokenizer.ggml.scores", detail: "1 entries for \(Self.tokens.count) tokens"))
        }
    }
}
