/// SentencePiece's BPE as llama.cpp runs it on GGUF vocabularies with `tokenizer.ggml.model`
/// "llama" (Llama 2, Phi-3, Gemma 3): `llm_tokenizer_spm` in src/llama-vocab.cpp, token for
/// token. No merge list: a pair of adjacent pieces merges when their concatenation is a token,
/// the token's score (`tokenizer.ggml.scores`, a log-probability) its priority.
///
/// encode(text), text already escaped (each space written as "▁" U+2581) and prefixed:
/// 1. one symbol per UTF-8 character;
/// 2. every adjacent pair whose bytes are a token goes into a max-heap on (score, then the
///    leftmost left symbol);
/// 3. pop the best pair; skip it when either side has merged since it was pushed (their byte
///    counts no longer add up to the pair's); else merge the right symbol into the left and push
///    the new pairs with the left and right neighbours;
/// 4. each remaining symbol is its token, or when its bytes are no token (a single character
///    outside the vocabulary), one byte token `<0xXX>` per byte (byte fallback).
///
/// llama.cpp also keeps a "reverse merge" map to split a final symbol that is not a token into
/// the two symbols it was merged from; a merged symbol is always a token, and a single
/// character never equals a two-character key, so on valid UTF-8 that path never runs and is
/// left out here. A byte without a `<0xXX>` token (nor a token of that one byte) is dropped,
/// as `BytePairEncoder` drops one (llama.cpp throws).
struct SentencePieceEncoder: Sendable {
    /// Token bytes → id, the last id where a spelling repeats (llama.cpp's token_to_id).
    let ids: [ArraySlice<UInt8>: Int32]
    /// The score of each id, [V].
    let scores: [Float]
    /// The token of each byte, or -1, [256]: `<0xXX>` (hex in capitals), else the byte itself.
    let byteToken: [Int32]

    init(tokens: [String], scores: [Float]) {
        var ids: [ArraySlice<UInt8>: Int32] = [:]
        ids.reserveCapacity(tokens.count)
        for (i, t) in tokens.enumerated() { ids[ArraySlice(t.utf8)] = Int32(i) }
        let hex = Array("0123456789ABCDEF".utf8)
        byteToken = (0..<256).map { b in
            let spelled: [UInt8] = [0x3C, 0x30, 0x78, hex[b >> 4], hex[b & 15], 0x3E]  // <0xXX>
            return ids[spelled[...]] ?? ids[[UInt8(b)][...]] ?? -1
        }
        self.ids = ids
        self.scores = scores
    }

    /// A candidate merge: symbols left and right, whose bytes add up to `size`.
    struct Bigram: HeapOrdered {
        let score: Float
        let left: Int32
        let right: Int32
        let size: Int32

        /// Pops first: the higher score, then the smaller left (llama.cpp's comparator).
        func before(_ o: Bigram) -> Bool { score != o.score ? score > o.score : left < o.left }
    }

    /// Reused between calls: the symbols (byte start, byte count (0 once merged away),
    /// previous, next) and the heap.
    struct Scratch {
        fileprivate var start: [Int32] = []
        fileprivate var count: [Int32] = []
        fileprivate var prev: [Int32] = []
        fileprivate var next: [Int32] = []
        fileprivate var heap = MergeHeap<Bigram>()
    }

    /// UTF-8 sequence length from the lead byte's high nibble (llama.cpp's unicode_len_utf8).
    private static let sequenceLength: [Int] = [1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 3, 4]

    func encode(_ text: [UInt8], _ s: inout Scratch, into out: inout [Int32]) {
        s.start.removeAll(keepingCapacity: true)
        s.count.removeAll(keepingCapacity: true)
        s.prev.removeAll(keepingCapacity: true)
        s.next.removeAll(keepingCapacity: true)
        s.heap.removeAll(keepingCapacity: true)
        var offset = 0
        while offset < text.count {
            let n = min(Self.sequenceLength[Int(text[offset] >> 4)], text.count - offset)
            s.prev.append(Int32(s.start.count - 1))
            s.start.append(Int32(offset))
            s.count.append(Int32(n))
            offset += n
            s.next.append(offset == text.count ? -1 : Int32(s.start.count))
        }
        for i in s.start.indices.dropFirst() { addBigram(text, &s, Int32(i - 1), Int32(i)) }
        while let b = s.heap.pop() {
            let l = Int(b.left), r = Int(b.right)
            guard s.count[l] != 0, s.count[r] != 0, s.count[l] + s.count[r] == b.size else { continue }
            s.count[l] += s.count[r]
            s.count[r] = 0
            s.next[l] = s.next[r]
            if s.next[r] >= 0 { s.prev[Int(s.next[r])] = b.left }
            addBigram(text, &s, s.prev[l], b.left)
            addBigram(text, &s, b.left, s.next[l])
        }
        var i: Int32 = s.start.isEmpty ? -1 : 0
        while i >= 0 {
            let lo = Int(s.start[Int(i)]), hi = lo + Int(s.count[Int(i)])
            if let id = ids[text[lo..<hi]] {
                out.append(id)
            } else {
                for b in text[lo..<hi] where byteToken[Int(b)] >= 0 { out.append(byteToken[Int(b)]) }
            }
            i = s.next[Int(i)]
        }
    }

    private func addBigram(_ text: [UInt8], _ s: inout Scratch, _ left: Int32, _ right: Int32) {
        guard left >= 0, right >= 0 else { return }
        let lo = Int(s.start[Int(left)]), size = s.count[Int(left)] + s.count[Int(right)]
        guard let id = ids[text[lo..<(lo + Int(size))]], Int(id) < scores.count else { return }
        s.heap.push(Bigram(score: scores[Int(id)], left: left, right: right, size: size))
    }
}
