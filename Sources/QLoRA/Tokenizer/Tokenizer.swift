import Foundation

/// The tokenizers of the GGUF and Hugging Face vocabularies qlora reads, token for token what
/// the reference gives. Built from a GGUF file or a tokenizer.json (TokenizerLoading.swift).
///
/// Byte-level BPE (GPT-2's scheme, used by SmolLM2, Llama 3 and Qwen2), as Hugging Face
/// `tokenizers` for the same vocabulary, merges, added tokens and pre-tokenizer:
/// 1. cut added tokens out of the UTF-8 text, leftmost-longest (`AddedTokenMatcher`);
/// 2. cut the text between them into words (`PreTokenizer`);
/// 3. BPE each word's bytes into ids (`BytePairEncoder`), through a cache of words seen.
/// decode(ids): each token's bytes (its characters through GPT-2's byte alphabet), concatenated;
/// bytes that are not UTF-8 become U+FFFD, as `tokenizers`' ByteLevel decoder does.
/// decode(encode(text)) == text byte for byte whenever the vocabulary has a token for every
/// byte of the text; `tokenizers` drops a byte that has none, and so does encode (SmolLM2
/// lacks 21: the controls 0x04 0x06 0x13 0x14 0x16 0x1D, and the UTF-8 lead bytes 0xF1 0xF2,
/// U+40000–U+BFFFF, besides those that never occur in UTF-8). `missingBytes` lists them.
///
/// SentencePiece (GGUF "llama": Llama 2, Phi-3, Gemma 3), as llama.cpp's llama_tokenize with
/// parse_special true:
/// 1. cut added tokens (control, unknown and user-defined) out of the text, as above;
/// 2. each piece of text between them: a space before it when `addsSpacePrefix` and it is the
///    first piece or follows an added token (llama.cpp's is_prev_special), each space as "▁";
/// 3. merge by score (`SentencePieceEncoder`), bytes outside the vocabulary as `<0xXX>` tokens.
/// decode(ids): "▁" back to a space, byte tokens to their byte, added tokens as written, unused
/// tokens to nothing (llama.cpp's token_to_piece, concatenated: the space `addsSpacePrefix`
/// added stays, so decode(encode(text)) == " " + text then, and a streamed decode keeps the
/// space before each word).
/// llama.cpp cuts added tokens longest token first over the whole text, not leftmost-longest;
/// the two differ only where one added token's text overlaps another's in the text.
///
/// Thread-safe: the word cache is behind a lock.
public final class Tokenizer: @unchecked Sendable {
    public enum Model: String, Sendable {
        case bytePair, sentencePiece
    }

    /// Where the tokenizer came from, for messages.
    public let source: String
    public let model: Model
    /// How byte-level BPE cuts text into words; SentencePiece cuts none (`.gpt2` there, unused).
    public let preTokenizer: PreTokenizer
    /// tokenizer.json's `ignore_merges`: a word that is a token is taken whole.
    public let ignoresMerges: Bool
    /// SentencePiece: a space is put before the text and after each added token
    /// (GGUF `tokenizer.ggml.add_space_prefix`, true unless set; Gemma sets false).
    public let addsSpacePrefix: Bool
    public let addedTokens: [AddedToken]
    public let bos: Int?
    public let eos: Int?
    /// Ids that `encode(_:addSpecialTokens: true)` puts before and after the text.
    public let prefix: [Int]
    public let suffix: [Int]

    /// Token strings as the vocabulary spells them ("Ġthe", "▁the", "<0x0A>"), [V].
    private let tokens: [String]
    private let ids: [ExactString: Int]
    private let special: [Bool]
    private enum Encoder {
        case bytePair(BytePairEncoder)
        case sentencePiece(SentencePieceEncoder)
    }
    private let encoder: Encoder
    /// Matchers for added tokens with `normalized` false (first) and true (second).
    private let rawMatcher: AddedTokenMatcher
    private let normalizedMatcher: AddedTokenMatcher
    /// The bytes of token i are decodeBytes[decodeOffsets[i]..<decodeOffsets[i + 1]].
    private let decodeBytes: [UInt8]
    private let decodeOffsets: [Int]

    private let cacheLock = NSLock()
    private var cache = WordCache(capacity: 1 << 16)
    /// Longer words are not cached.
    static let cacheWordLimit = 256

    /// Byte-level BPE.
    /// - Parameters:
    ///   - tokens: the vocabulary, id → token, byte-level spelling; added tokens included.
    ///   - merges: pairs of tokens, highest priority first.
    ///   - preTokenizer: how text is cut into words.
    public convenience init(tokens: [String], merges: [(String, String)], addedTokens: [AddedToken] = [], preTokenizer: PreTokenizer,
                            ignoreMerges: Bool = false, bos: Int? = nil, eos: Int? = nil, prefix: [Int] = [], suffix: [Int] = [],
                            source: String = "(in memory)") throws {
        guard !tokens.isEmpty else { throw TokenizerError.missing(source: source, key: "vocabulary") }
        let ids = Self.index(tokens)
        func id(_ t: String) -> Int32? { ids[ExactString(t)].map(Int32.init) }

        let byteToken = (0..<256).map { id(String(Unicode.Scalar(ByteLevelAlphabet.scalarOfByte[$0])!)) ?? -1 }
        var mergeTable: [UInt64: BytePairEncoder.Merge] = [:]
        mergeTable.reserveCapacity(merges.count)
        for (rank, (a, b)) in merges.enumerated() {
            guard let l = id(a), let r = id(b), let m = id(a + b) else {
                let absent = id(a) == nil ? a : id(b) == nil ? b : a + b
                throw TokenizerError.badMerge(source: source, index: rank, merge: "\(a) \(b)", detail: "'\(absent)' is not in the vocabulary")
            }
            mergeTable[BytePairEncoder.key(l, r)] = .init(rank: Int32(rank), merged: m)  // a repeated pair: the last rank, as in tokenizers
        }
        var wholeWords: [String: Int32]?
        if ignoreMerges {
            wholeWords = [:]
            for (i, t) in tokens.enumerated() where t.unicodeScalars.allSatisfy({ $0.value < 0x144 && ByteLevelAlphabet.byteOfScalar[Int($0.value)] >= 0 }) {
                wholeWords![t] = Int32(i)
            }
        }
        try self.init(tokens: tokens, ids: ids, model: .bytePair,
                      encoder: .bytePair(BytePairEncoder(byteToken: byteToken, merges: mergeTable, wholeWords: wholeWords)),
                      decoded: tokens.map(ByteLevelAlphabet.bytes(of:)), addedTokens: addedTokens, preTokenizer: preTokenizer,
                      ignoreMerges: ignoreMerges, addsSpacePrefix: false, bos: bos, eos: eos, prefix: prefix, suffix: suffix, source: source)
    }

    /// SentencePiece.
    /// - Parameters:
    ///   - tokens: the vocabulary, id → token, "▁" for space, `<0xXX>` byte tokens.
    ///   - scores: each token's merge priority, [V].
    ///   - types: each token's type, [V].
    ///   - addedTokens: the tokens matched whole in the text; by default the control, unknown
    ///     and user-defined ones (`addedTokens(_:types:)`).
    public convenience init(sentencePieceTokens tokens: [String], scores: [Float], types: [GGUFTokenType], addedTokens: [AddedToken]? = nil,
                            addsSpacePrefix: Bool = true, bos: Int? = nil, eos: Int? = nil, prefix: [Int] = [], suffix: [Int] = [],
                            source: String = "(in memory)") throws {
        guard !tokens.isEmpty else { throw TokenizerError.missing(source: source, key: "vocabulary") }
        for (key, count) in [("scores", scores.count), ("token types", types.count)] where count != tokens.count {
            throw TokenizerError.badValue(source: source, key: key, detail: "\(count) entries for \(tokens.count) tokens")
        }
        let added = addedTokens ?? Self.addedTokens(tokens, types: types)
        let decoded = zip(tokens, types).map { token, type -> [UInt8] in
            switch type {
            case .normal: Array(token.replacingOccurrences(of: "\u{2581}", with: " ").utf8)
            case .byte: Self.hexByte(token).map { [$0] } ?? Array(token.utf8)
            case .control, .unknown, .userDefined: Array(token.utf8)
            case .unused, .undefined: []
            }
        }
        try self.init(tokens: tokens, ids: Self.index(tokens), model: .sentencePiece,
                      encoder: .sentencePiece(SentencePieceEncoder(tokens: tokens, scores: scores)), decoded: decoded,
                      addedTokens: added, preTokenizer: .gpt2, ignoreMerges: false, addsSpacePrefix: addsSpacePrefix,
                      bos: bos, eos: eos, prefix: prefix, suffix: suffix, source: source)
    }

    private init(tokens: [String], ids: [ExactString: Int], model: Model, encoder: Encoder, decoded: [[UInt8]], addedTokens: [AddedToken],
                 preTokenizer: PreTokenizer, ignoreMerges: Bool, addsSpacePrefix: Bool, bos: Int?, eos: Int?, prefix: [Int], suffix: [Int],
                 source: String) throws {
        var special = [Bool](repeating: false, count: tokens.count)
        for t in addedTokens {
            guard tokens.indices.contains(t.id) else {
                throw TokenizerError.badValue(source: source, key: "added token '\(t.content)'", detail: "id \(t.id) is outside the vocabulary of \(tokens.count)")
            }
            special[t.id] = special[t.id] || t.special
        }
        for (name, list) in [("bos", bos.map { [$0] } ?? []), ("eos", eos.map { [$0] } ?? []), ("prefix", prefix), ("suffix", suffix)] {
            for i in list where !tokens.indices.contains(i) {
                throw TokenizerError.badValue(source: source, key: name, detail: "token id \(i) is outside the vocabulary of \(tokens.count)")
            }
        }
        var decodeBytes: [UInt8] = [], decodeOffsets = [0]
        for d in decoded {
            decodeBytes += d
            decodeOffsets.append(decodeBytes.count)
        }
        self.tokens = tokens
        self.ids = ids
        self.model = model
        self.encoder = encoder
        self.special = special
        self.addedTokens = addedTokens
        rawMatcher = AddedTokenMatcher(addedTokens.filter { !$0.normalized })
        normalizedMatcher = AddedTokenMatcher(addedTokens.filter(\.normalized))
        self.decodeBytes = decodeBytes
        self.decodeOffsets = decodeOffsets
        self.preTokenizer = preTokenizer
        ignoresMerges = ignoreMerges
        self.addsSpacePrefix = addsSpacePrefix
        self.bos = bos
        self.eos = eos
        self.prefix = prefix
        self.suffix = suffix
        self.source = source
    }

    /// The tokens llama.cpp cuts out of the text before SentencePiece (its special tokens cache):
    /// control and unknown ones special, user-defined ones not.
    public static func addedTokens(_ tokens: [String], types: [GGUFTokenType], rstrip: (Int) -> Bool = { _ in false }) -> [AddedToken] {
        zip(tokens.indices, types).filter { [.control, .unknown, .userDefined].contains($0.1) }
            .map { i, type in AddedToken(id: i, content: tokens[i], special: type != .userDefined, rstrip: rstrip(i)) }
    }

    /// Token → id; a repeated token keeps its last id.
    private static func index(_ tokens: [String]) -> [ExactString: Int] {
        var ids: [ExactString: Int] = [:]
        ids.reserveCapacity(tokens.count)
        for (i, t) in tokens.enumerated() { ids[ExactString(t)] = i }
        return ids
    }

    /// The byte of a `<0xXX>` token.
    static func hexByte(_ token: String) -> UInt8? {
        let u = Array(token.utf8)
        guard u.count == 6, u[0..<3] == [0x3C, 0x30, 0x78][...], u[5] == 0x3E else { return nil }
        return UInt8(String(decoding: u[3..<5], as: UTF8.self), radix: 16)
    }

    /// V: the number of ids, added tokens included.
    public var vocabSize: Int { tokens.count }

    public func id(of token: String) -> Int? { ids[ExactString(token)] }

    public func token(of id: Int) -> String? { tokens.indices.contains(id) ? tokens[id] : nil }

    /// Bytes with no token of their own: encode drops them.
    public var missingBytes: [UInt8] {
        let byteToken = switch encoder {
        case let .bytePair(e): e.byteToken
        case let .sentencePiece(e): e.byteToken
        }
        return (0..<256).filter { byteToken[$0] < 0 }.map(UInt8.init)
    }

    public func isSpecial(_ id: Int) -> Bool { special.indices.contains(id) && special[id] }

    /// The bytes token `id` decodes to (empty outside the vocabulary).
    public func bytes(of id: Int) -> ArraySlice<UInt8> {
        tokens.indices.contains(id) ? decodeBytes[decodeOffsets[id]..<decodeOffsets[id + 1]] : []
    }

    public func encode(_ text: String, addSpecialTokens: Bool = false) -> [Int] {
        var text = text
        var out: [Int32] = []
        text.withUTF8 { bytes in
            var pieces: [(range: Range<Int>, id: Int?)] = []
            rawMatcher.split(bytes, 0..<bytes.count, into: &pieces)
            if !normalizedMatcher.isEmpty {
                var second: [(range: Range<Int>, id: Int?)] = []
                for p in pieces {
                    if p.id == nil { normalizedMatcher.split(bytes, p.range, into: &second) } else { second.append(p) }
                }
                pieces = second
            }
            switch encoder {
            case let .bytePair(e): encodeBytePair(bytes, pieces, e, into: &out)
            case let .sentencePiece(e): encodeSentencePiece(bytes, pieces, e, into: &out)
            }
        }
        let ids = out.map(Int.init)
        return addSpecialTokens ? prefix + ids + suffix : ids
    }

    /// Ids outside the vocabulary are skipped, as in `tokenizers`.
    public func decode(_ ids: [Int], skipSpecialTokens: Bool = false) -> String {
        var bytes: [UInt8] = []
        for id in ids where tokens.indices.contains(id) && !(skipSpecialTokens && special[id]) {
            bytes += decodeBytes[decodeOffsets[id]..<decodeOffsets[id + 1]]
        }
        return String(decoding: bytes, as: UTF8.self)
    }

    private func encodeBytePair(_ bytes: UnsafeBufferPointer<UInt8>, _ pieces: [(range: Range<Int>, id: Int?)], _ encoder: BytePairEncoder,
                                into out: inout [Int32]) {
        var scanner = WordScanner()
        var scratch = BytePairEncoder.Scratch()
        for p in pieces {
            if let id = p.id {
                out.append(Int32(id))
                continue
            }
            let segment = UnsafeBufferPointer(rebasing: bytes[p.range])
            scanner.words(segment, preTokenizer) { word in
                encodeWord(UnsafeBufferPointer(rebasing: segment[word]), encoder, &scratch, into: &out)
            }
        }
    }

    private func encodeWord(_ word: UnsafeBufferPointer<UInt8>, _ encoder: BytePairEncoder, _ scratch: inout BytePairEncoder.Scratch,
                            into out: inout [Int32]) {
        guard word.count <= Self.cacheWordLimit else {
            encoder.encode(word, &scratch, into: &out)
            return
        }
        cacheLock.lock()
        let hit = cache.lookup(word, into: &out)
        cacheLock.unlock()
        if hit { return }
        let start = out.count
        encoder.encode(word, &scratch, into: &out)
        cacheLock.lock()
        cache.insert(word, out[start...])
        cacheLock.unlock()
    }

    private func encodeSentencePiece(_ bytes: UnsafeBufferPointer<UInt8>, _ pieces: [(range: Range<Int>, id: Int?)],
                                     _ encoder: SentencePieceEncoder, into out: inout [Int32]) {
        let escapedSpace: [UInt8] = [0xE2, 0x96, 0x81]  // ▁ U+2581
        var scratch = SentencePieceEncoder.Scratch()
        var escaped: [UInt8] = []
        var afterAddedToken = true
        for p in pieces {
            if let id = p.id {
                out.append(Int32(id))
                afterAddedToken = true
                continue
            }
            escaped.removeAll(keepingCapacity: true)
            if addsSpacePrefix && afterAddedToken { escaped += escapedSpace }
            for b in bytes[p.range] {
                if b == 0x20 { escaped += escapedSpace } else { escaped.append(b) }
            }
            encoder.encode(escaped, &scratch, into: &out)
            afterAddedToken = false
        }
    }
}

/// A string compared and hashed by its UTF-8 bytes. Swift's String == treats canonically
/// equivalent strings ("é" and "e\u{301}") as equal; token lookups must not.
struct ExactString: Hashable, Sendable {
    let value: String
    init(_ value: String) { self.value = value }
    static func == (a: Self, b: Self) -> Bool { a.value.utf8.elementsEqual(b.value.utf8) }
    func hash(into h: inout Hasher) {
        var v = value
        v.withUTF8 { h.combine(bytes: UnsafeRawBufferPointer($0)) }
    }
}

public enum TokenizerError: Error, Equatable, CustomStringConvertible {
    /// Neither byte-level BPE nor GGUF SentencePiece: WordPiece ("bert"), Unigram ("t5"), Gemma 4's BPE ("gemma4")...
    case unsupportedTokenizer(source: String, kind: String)
    case unsupportedPreTokenizer(source: String, description: String)
    /// A part of tokenizer.json this tokenizer does not implement (a normalizer, byte fallback...).
    case unsupportedFeature(source: String, feature: String)
    case missing(source: String, key: String)
    case badValue(source: String, key: String, detail: String)
    case badMerge(source: String, index: Int, merge: String, detail: String)

    public var description: String {
        switch self {
        case let .unsupportedTokenizer(source, kind):
            "unsupported tokenizer '\(kind)' in \(source): only byte-level BPE (GGUF 'gpt2', tokenizer.json 'BPE') and SentencePiece (GGUF 'llama') are implemented"
        case let .unsupportedPreTokenizer(source, description):
            "unsupported pre-tokenizer \(description) in \(source) (known: GPT-2, Llama 3, Qwen2, digits then GPT-2)"
        case let .unsupportedFeature(source, feature): "\(source): \(feature) is not supported"
        case let .missing(source, key): "\(source): \(key) is missing"
        case let .badValue(source, key, detail): "\(source): \(key): \(detail)"
        case let .badMerge(source, index, merge, detail): "\(source): merge \(index) '\(merge)': \(detail)"
        }
    }
}
