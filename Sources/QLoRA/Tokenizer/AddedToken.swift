/// A token matched whole in the text before pre-tokenization and BPE: `<|im_start|>`,
/// `<|endoftext|>`, `<think>`. GGUF control tokens (token_type 3) are special added tokens,
/// user-defined ones (4) plain added tokens; tokenizer.json lists them under `added_tokens`.
/// `special` ones are dropped by `decode(_:skipSpecialTokens: true)`.
public struct AddedToken: Sendable, Equatable {
    public let id: Int
    public let content: String
    public let special: Bool
    /// Matched after the normalizer in `tokenizers`; with no normalizer, only the order of
    /// matching differs: tokens with `normalized` false are cut out of the text first.
    public let normalized: Bool
    /// The ASCII whitespace right after the token in the text is dropped (tokenizer.json's
    /// `rstrip`; llama.cpp's LLAMA_TOKEN_ATTR_RSTRIP, which it sets on Phi-3's special tokens).
    public let rstrip: Bool

    public init(id: Int, content: String, special: Bool, normalized: Bool = false, rstrip: Bool = false) {
        self.id = id
        self.content = content
        self.special = special
        self.normalized = normalized
        self.rstrip = rstrip
    }
}

/// Cuts added tokens out of UTF-8 text as `tokenizers`' AddedVocabulary does: an Aho-Corasick
/// search, leftmost-longest (the match that starts first, the longest of those), non-overlapping,
/// left to right. Here a byte trie walked from each position whose byte starts some token.
struct AddedTokenMatcher: Sendable {
    /// (node << 8 | byte) → child node; node 0 is the root.
    private var children: [Int: Int] = [:]
    /// The token id ending at each node, or -1.
    private var terminal: [Int] = [-1]
    /// Whether the token ending at each node drops the whitespace after it.
    private var rstrip: [Bool] = [false]
    private var starts = [Bool](repeating: false, count: 256)

    init(_ tokens: [AddedToken]) {
        for t in tokens where !t.content.isEmpty {
            var node = 0
            for b in t.content.utf8 {
                if let child = children[node << 8 | Int(b)] {
                    node = child
                } else {
                    terminal.append(-1)
                    rstrip.append(false)
                    children[node << 8 | Int(b)] = terminal.count - 1
                    node = terminal.count - 1
                }
            }
            terminal[node] = t.id
            rstrip[node] = t.rstrip
            starts[Int(t.content.utf8.first!)] = true
        }
    }

    var isEmpty: Bool { terminal.count == 1 }

    /// Splits bytes[range] into pieces of text (id nil) and added tokens (their id); the
    /// whitespace an rstrip token drops is in neither.
    func split(_ bytes: UnsafeBufferPointer<UInt8>, _ range: Range<Int>, into out: inout [(range: Range<Int>, id: Int?)]) {
        var textStart = range.lowerBound, i = range.lowerBound
        while i < range.upperBound {
            guard starts[Int(bytes[i])], let (end, node) = longestMatch(bytes, at: i, limit: range.upperBound) else {
                i += 1
                continue
            }
            if i > textStart { out.append((textStart..<i, nil)) }
            out.append((i..<end, terminal[node]))
            textStart = end
            if rstrip[node] {
                while textStart < range.upperBound, Self.isASCIISpace(bytes[textStart]) { textStart += 1 }
            }
            i = textStart
        }
        if textStart < range.upperBound { out.append((textStart..<range.upperBound, nil)) }
    }

    /// C's isspace: space, \t, \n, \v, \f, \r.
    static func isASCIISpace(_ b: UInt8) -> Bool { b == 0x20 || (0x09...0x0D).contains(b) }

    /// The end of the longest token at `start`, and its node.
    private func longestMatch(_ bytes: UnsafeBufferPointer<UInt8>, at start: Int, limit: Int) -> (end: Int, node: Int)? {
        var node = 0, best: (Int, Int)?
        var i = start
        while i < limit, let child = children[node << 8 | Int(bytes[i])] {
            node = child
            i += 1
            if terminal[node] >= 0 { best = (i, node) }
        }
        return best
    }
}

/// GGUF `tokenizer.ggml.token_type`, llama.cpp's llama_token_type. Control, unknown and
/// user-defined tokens are matched whole in the text (the first two special); byte tokens
/// `<0xXX>` decode to their byte, unused ones to nothing.
public enum GGUFTokenType: Int, Sendable {
    case undefined = 0, normal, unknown, control, userDefined, unused, byte
}
