import Foundation

/// Byte-level BPE tokenization (GPT-2's scheme, used by SmolLM2, Llama 3 and Qwen2), token for
/// token what Hugging Face `tokenizers` gives for the same vocabulary, merges, added tokens and
/// pre-tokenizer. Built from a GGUF file or a tokenizer.json (TokenizerLoading.swift).
///
/// encode(text):
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
/// Thread-safe: the word cache is behind a lock.
public final class Tokenizer: @unchecked Sendable {
    /// Where the tokenizer came from, for messages.
    public let source: String
    public let preTokenizer: PreTokenizer
    /// tokenizer.json's `ignore_merges`: a word that is a token is taken whole.
    public let ignoresMerges: Bool
    public let addedTokens: [AddedToken]
    public let bos: Int?
    public let eos: Int?
    /// Ids that `encode(_:addSpecialTokens: true)` puts before and after the text.
    public let prefix: [Int]
    public let suffix: [Int]

    /// Token strings as the vocabulary spells them ("Ġthe"), [V].
    private let tokens: [String]
    private let ids: [ExactString: Int]
    private let special: [Bool]
    private let encoder: BytePairEncoder
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

    /// - Parameters:
    ///   - tokens: the vocabulary, id → token, byte-level spelling; added tokens included.
    ///   - merges: pairs of tokens, highest priority first.
    ///   - preTokenizer: how text is cut into words.
    public init(tokens: [String], merges: [(String, String)], addedTokens: [AddedToken] = [], preTokenizer: PreTokenizer,
                ignoreMerges: Bool = false, bos: Int? = nil, eos: Int? = nil, prefix: [Int] = [], suffix: [Int] = [],
                source: String = "(in memory)") throws {
        guard !tokens.isEmpty else { throw TokenizerError.missing(source: source, key: "vocabulary") }
        var ids: [ExactString: Int] = [:]
        ids.reserveCapacity(tokens.count)
        for (i, t) in tokens.enumerated() { ids[ExactString(t)] = i }
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
        encoder = BytePairEncoder(byteToken: byteToken, merges: mergeTable, wholeWords: wholeWords)

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
        for t in tokens {
            decodeBytes += ByteLevelAlphabet.bytes(of: t)
            decodeOffsets.append(decodeBytes.count)
        }
        self.tokens = tokens
        self.ids = ids
        self.special = special
        self.addedTokens = addedTokens
        rawMatcher = AddedTokenMatcher(addedTokens.filter { !$0.normalized })
        normalizedMatcher = AddedTokenMatcher(addedTokens.filter(\.normalized))
        self.decodeBytes = decodeBytes
        self.decodeOffsets = decodeOffsets
        self.preTokenizer = preTokenizer
        ignoresMerges = ignoreMerges
        self.bos = bos
        self.eos = eos
        self.prefix = prefix
        self.suffix = suffix
        self.source = source
    }

    /// V: the number of ids, added tokens included.
    public var vocabSize: Int { tokens.count }

    public func id(of token: String) -> Int? { ids[ExactString(token)] }

    public func token(of id: Int) -> String? { tokens.indices.contains(id) ? tokens[id] : nil }

    /// Bytes with no token of their own: encode drops them.
    public var missingBytes: [UInt8] { (0..<256).filter { encoder.byteToken[$0] < 0 }.map(UInt8.init) }

    public func isSpecial(_ id: Int) -> Bool { special.indices.contains(id) && special[id] }

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
            var scanner = WordScanner()
            var scratch = BytePairEncoder.Scratch()
            for p in pieces {
                if let id = p.id {
                    out.append(Int32(id))
                    continue
                }
                let segment = UnsafeBufferPointer(rebasing: bytes[p.range])
                scanner.words(segment, preTokenizer) { word in
                    encodeWord(UnsafeBufferPointer(rebasing: segment[word]), &scratch, into: &out)
                }
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

    private func encodeWord(_ word: UnsafeBufferPointer<UInt8>, _ scratch: inout BytePairEncoder.Scratch, into out: inout [Int32]) {
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
    /// Not byte-level BPE: a SentencePiece ("llama"), WordPiece or Unigram vocabulary.
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
            "unsupported tokenizer '\(kind)' in \(source): only byte-level BPE (GGUF 'gpt2', tokenizer.json 'BPE') is implemented"
        case let .unsupportedPreTokenizer(source, description):
            "unsupported pre-tokenizer \(description) in \(source) (known: GPT-2, Llama 3, Qwen2, digits then GPT-2)"
        case let .unsupportedFeature(source, feature): "\(source): \(feature) is not supported"
        case let .missing(source, key): "\(source): \(key) is missing"
        case let .badValue(source, key, detail): "\(source): \(key): \(detail)"
        case let .badMerge(source, index, merge, detail): "\(source): merge \(index) '\(merge)': \(detail)"
        }
    }
}
