/// GPT-2's byte-to-character table (`bytes_to_unicode` in its encoder.py): byte-level
/// vocabularies spell each byte as one visible character, so that no token holds a space or a
/// control character. The printable bytes ! to ~, ¡ to ¬ and ® to ÿ stand for themselves; the
/// other 68 bytes, in increasing order, become U+0100 onwards (space 0x20 is "Ġ" U+0120,
/// newline 0x0A is "Ċ" U+010A).
enum ByteLevelAlphabet {
    /// The character of each byte, [256].
    static let scalarOfByte: [UInt32] = {
        var table = [UInt32](repeating: 0, count: 256)
        var next: UInt32 = 256
        for b in 0..<256 {
            let printable = (0x21...0x7E).contains(b) || (0xA1...0xAC).contains(b) || (0xAE...0xFF).contains(b)
            if printable {
                table[b] = UInt32(b)
            } else {
                table[b] = next
                next += 1
            }
        }
        return table
    }()

    /// The byte of each character below U+0144, or -1 if it spells none.
    static let byteOfScalar: [Int16] = {
        var table = [Int16](repeating: -1, count: 0x144)
        for (b, s) in scalarOfByte.enumerated() { table[Int(s)] = Int16(b) }
        return table
    }()

    /// The bytes a token stands for: its characters through the table when all of them are in
    /// it, else its own UTF-8 (as `tokenizers`' ByteLevel decoder does, token by token).
    static func bytes(of token: String) -> [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity(token.utf8.count)
        for u in token.unicodeScalars {
            guard u.value < 0x144, byteOfScalar[Int(u.value)] >= 0 else { return Array(token.utf8) }
            out.append(UInt8(byteOfScalar[Int(u.value)]))
        }
        return out
    }

    /// The spelling of bytes in the alphabet.
    static func spelling(of bytes: UnsafeBufferPointer<UInt8>) -> String {
        var s = String.UnicodeScalarView()
        for b in bytes { s.append(Unicode.Scalar(scalarOfByte[Int(b)])!) }
        return String(s)
    }
}

/// The BPE merge loop of `tokenizers` (models/bpe/word.rs, `merge_all` without dropout) on the
/// bytes of one word: start from one token per byte, then repeatedly apply the merge of lowest
/// rank (rank = position in the merges list) among adjacent pairs, the leftmost on ties, until
/// no adjacent pair has a merge. A byte with no token is dropped, its neighbours become adjacent
/// (`merge_word` skips a character missing from the vocabulary when there is no unk token;
/// SmolLM2 has no token for 21 bytes, 0x04 and 0xF1 among them). With `wholeWords` (tokenizer.json's `ignore_merges`, Llama 3),
/// a word that is itself a token is that token.
struct BytePairEncoder: Sendable {
    struct Merge: Sendable {
        let rank: Int32
        let merged: Int32
    }

    /// The token of each single byte, or -1, [256].
    let byteToken: [Int32]
    /// (left << 32 | right) → merge.
    let merges: [UInt64: Merge]
    let wholeWords: [String: Int32]?

    static func key(_ left: Int32, _ right: Int32) -> UInt64 { UInt64(UInt32(left)) << 32 | UInt64(UInt32(right)) }

    /// Reused between words: the symbols (token, previous, next; token -1 once merged away)
    /// and the heap of candidate merges.
    struct Scratch {
        fileprivate var token: [Int32] = []
        fileprivate var prev: [Int32] = []
        fileprivate var next: [Int32] = []
        fileprivate var heap = MergeHeap<PairMerge>()
    }

    func encode(_ word: UnsafeBufferPointer<UInt8>, _ scratch: inout Scratch, into out: inout [Int32]) {
        if let wholeWords, let id = wholeWords[ByteLevelAlphabet.spelling(of: word)] {
            out.append(id)
            return
        }
        scratch.token.removeAll(keepingCapacity: true)
        scratch.prev.removeAll(keepingCapacity: true)
        scratch.next.removeAll(keepingCapacity: true)
        scratch.heap.removeAll(keepingCapacity: true)
        for b in word where byteToken[Int(b)] >= 0 {
            scratch.prev.append(Int32(scratch.token.count - 1))
            scratch.next.append(Int32(scratch.token.count + 1))
            scratch.token.append(byteToken[Int(b)])
        }
        let n = scratch.token.count
        if n > 0 { scratch.next[n - 1] = -1 }
        for i in 0..<max(n - 1, 0) {
            if let m = merges[Self.key(scratch.token[i], scratch.token[i + 1])] { scratch.heap.push(PairMerge(rank: m.rank, pos: Int32(i), merged: m.merged)) }
        }
        while let top = scratch.heap.pop() {
            let pos = Int(top.pos)
            guard scratch.token[pos] >= 0, scratch.next[pos] >= 0 else { continue }
            let right = Int(scratch.next[pos])
            // Skip entries made stale by an earlier merge.
            guard let m = merges[Self.key(scratch.token[pos], scratch.token[right])], m.merged == top.merged else { continue }
            scratch.token[pos] = top.merged
            scratch.token[right] = -1
            let after = scratch.next[right]
            scratch.next[pos] = after
            if after >= 0 { scratch.prev[Int(after)] = Int32(pos) }
            let before = scratch.prev[pos]
            if before >= 0, let m = merges[Self.key(scratch.token[Int(before)], top.merged)] { scratch.heap.push(PairMerge(rank: m.rank, pos: before, merged: m.merged)) }
            if after >= 0, let m = merges[Self.key(top.merged, scratch.token[Int(after)])] { scratch.heap.push(PairMerge(rank: m.rank, pos: Int32(pos), merged: m.merged)) }
        }
        var i: Int32 = n > 0 ? 0 : -1
        while i >= 0 {
            out.append(scratch.token[Int(i)])
            i = scratch.next[Int(i)]
        }
    }
}

/// A candidate merge: the pair at `pos` becomes `merged`; the lowest rank, then the leftmost, first.
struct PairMerge: HeapOrdered {
    let rank: Int32
    let pos: Int32
    let merged: Int32

    func before(_ o: PairMerge) -> Bool { rank != o.rank ? rank < o.rank : pos < o.pos }
}
