/// How text is cut into words before byte-level BPE, exactly as Hugging Face `tokenizers` cuts
/// it: BPE never merges across a word boundary. Each family is a regex in `tokenizers`
/// (Oniguruma, leftmost match, alternatives tried in order, backtracking); here each is a
/// hand-written scanner that takes, at every position, the match that regex takes.
///
/// ```
/// gpt2             's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
/// llama3           (?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}
///                  | ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+
/// qwen2            llama3 with \p{N} (one digit) for \p{N}{1,3}
/// digitsThenGPT2   every digit a word of its own (Digits(individual_digits=true)), then gpt2
///                  on the text between digits (SmolLM, StarCoder)
/// ```
/// "x  1": gpt2 gives "x", " ", " 1"; digitsThenGPT2 gives "x", "  ", "1".
///
/// Character classes are Oniguruma's as built into tokenizers 0.23: \p{L}, \p{N} of Unicode 16
/// (letters and digits first assigned in Unicode 17 are neither), \s = White_Space. The digits
/// isolated by digitsThenGPT2 are Rust's `char::is_numeric`, Unicode 17 (\p{N} with the new ones).
public enum PreTokenizer: String, Sendable, CaseIterable {
    case gpt2, llama3, qwen2, digitsThenGPT2

    /// The words of `text`, in order; their concatenation is `text`.
    public func split(_ text: String) -> [String] {
        var text = text
        return text.withUTF8 { bytes in
            var scanner = WordScanner()
            var words: [String] = []
            scanner.words(bytes, self) { words.append(String(decoding: UnsafeBufferPointer(rebasing: bytes[$0]), as: UTF8.self)) }
            return words
        }
    }
}

/// Per-scalar class bits.
enum CharClass {
    static let letter: UInt8 = 1          // \p{L}, Unicode 16
    static let number: UInt8 = 2          // \p{N}, Unicode 16
    static let space: UInt8 = 4           // \s: White_Space
    static let newline: UInt8 = 8         // \r or \n
    static let digit: UInt8 = 16          // Rust char::is_numeric: \p{N} as Swift knows it (17)
    /// The newest Unicode version whose letters and digits the regex engine knows.
    static let regexUnicodeMajor = 16

    /// The classes of U+0000...U+FFFF; others come from `compute`.
    static let bmp: [UInt8] = (0..<0x10000).map { compute(UInt32($0)) }

    static func compute(_ v: UInt32) -> UInt8 {
        guard let u = Unicode.Scalar(v) else { return 0 }
        let p = u.properties
        var c: UInt8 = p.isWhitespace ? space : 0
        if v == 0x0A || v == 0x0D { c |= newline }
        let known = (p.age?.major ?? Int.max) <= regexUnicodeMajor
        switch p.generalCategory {
        case .uppercaseLetter, .lowercaseLetter, .titlecaseLetter, .modifierLetter, .otherLetter:
            if known { c |= letter }
        case .decimalNumber, .letterNumber, .otherNumber:
            c |= digit
            if known { c |= number }
        default: break
        }
        return c
    }
}

/// Decodes UTF-8 into scalars and classes, then cuts words; its buffers are reused from one
/// call to the next.
struct WordScanner {
    /// Scalars, their classes and their byte offsets (one more than scalars: the end).
    private var scalars: [UInt32] = []
    private var classes: [UInt8] = []
    private var offsets: [Int] = []
    private var ends: [Int] = []
    private let bmp = CharClass.bmp

    /// Calls `word` with the byte range of each word of `bytes` (valid UTF-8), in order.
    mutating func words(_ bytes: UnsafeBufferPointer<UInt8>, _ kind: PreTokenizer, _ word: (Range<Int>) -> Void) {
        decode(bytes)
        ends.removeAll(keepingCapacity: true)
        scalars.withUnsafeBufferPointer { s in
            classes.withUnsafeBufferPointer { f in
                let n = s.count
                switch kind {
                case .gpt2: Self.gpt2(s, f, 0, n, &ends)
                case .llama3: Self.llama(s, f, 0, n, maxDigits: 3, &ends)
                case .qwen2: Self.llama(s, f, 0, n, maxDigits: 1, &ends)
                case .digitsThenGPT2:
                    var lo = 0
                    for i in 0..<n where f[i] & CharClass.digit != 0 {
                        Self.gpt2(s, f, lo, i, &ends)
                        ends.append(i + 1)
                        lo = i + 1
                    }
                    Self.gpt2(s, f, lo, n, &ends)
                }
            }
        }
        var start = 0
        for e in ends {
            word(offsets[start]..<offsets[e])
            start = e
        }
    }

    private mutating func decode(_ b: UnsafeBufferPointer<UInt8>) {
        scalars.removeAll(keepingCapacity: true)
        classes.removeAll(keepingCapacity: true)
        offsets.removeAll(keepingCapacity: true)
        var i = 0
        while i < b.count {
            let b0 = UInt32(b[i])
            var v = b0, len = 1
            if b0 >= 0xF0 {
                v = (b0 & 0x07) << 18 | (UInt32(b[i + 1]) & 0x3F) << 12 | (UInt32(b[i + 2]) & 0x3F) << 6 | (UInt32(b[i + 3]) & 0x3F)
                len = 4
            } else if b0 >= 0xE0 {
                v = (b0 & 0x0F) << 12 | (UInt32(b[i + 1]) & 0x3F) << 6 | (UInt32(b[i + 2]) & 0x3F)
                len = 3
            } else if b0 >= 0xC0 {
                v = (b0 & 0x1F) << 6 | (UInt32(b[i + 1]) & 0x3F)
                len = 2
            }
            scalars.append(v)
            classes.append(v < 0x10000 ? bmp[Int(v)] : CharClass.compute(v))
            offsets.append(i)
            i += len
        }
        offsets.append(b.count)
    }

    private static let apostrophe: UInt32 = 0x27, blank: UInt32 = 0x20
    private static let lns = CharClass.letter | CharClass.number | CharClass.space

    /// GPT-2's regex over scalars lo..<hi (hi is the end of the text for (?!\S)).
    private static func gpt2(_ s: UnsafeBufferPointer<UInt32>, _ f: UnsafeBufferPointer<UInt8>, _ lo: Int, _ hi: Int, _ ends: inout [Int]) {
        var i = lo
        while i < hi {
            i = gpt2Word(s, f, i, hi)
            ends.append(i)
        }
    }

    private static func gpt2Word(_ s: UnsafeBufferPointer<UInt32>, _ f: UnsafeBufferPointer<UInt8>, _ i: Int, _ end: Int) -> Int {
        let c = s[i]
        if c == apostrophe, i + 1 < end, let n = contraction(s, i + 1, end, fold: false) { return i + 1 + n }
        // ` ?\p{L}+`, ` ?\p{N}+`, ` ?[^\s\p{L}\p{N}]+`: a run of one class, after one optional blank.
        let j = c == blank && i + 1 < end && f[i + 1] & CharClass.space == 0 ? i + 1 : i
        if f[j] & CharClass.space == 0 {
            let kind = f[j] & lns
            var k = j + 1
            while k < end, f[k] & lns == kind { k += 1 }
            return k
        }
        return whitespace(f, i, end).end
    }

    /// Llama 3's regex (maxDigits 3) or Qwen2's (maxDigits 1) over scalars lo..<hi.
    private static func llama(_ s: UnsafeBufferPointer<UInt32>, _ f: UnsafeBufferPointer<UInt8>, _ lo: Int, _ hi: Int, maxDigits: Int, _ ends: inout [Int]) {
        var i = lo
        while i < hi {
            i = llamaWord(s, f, i, hi, maxDigits)
            ends.append(i)
        }
    }

    private static func llamaWord(_ s: UnsafeBufferPointer<UInt32>, _ f: UnsafeBufferPointer<UInt8>, _ i: Int, _ end: Int, _ maxDigits: Int) -> Int {
        let c = s[i], fc = f[i]
        if c == apostrophe, i + 1 < end, let n = contraction(s, i + 1, end, fold: true) { return i + 1 + n }
        // [^\r\n\p{L}\p{N}]?\p{L}+
        var letters = -1
        if fc & (CharClass.newline | CharClass.letter | CharClass.number) == 0, i + 1 < end, f[i + 1] & CharClass.letter != 0 {
            letters = i + 2
        } else if fc & CharClass.letter != 0 {
            letters = i + 1
        }
        if letters >= 0 {
            while letters < end, f[letters] & CharClass.letter != 0 { letters += 1 }
            return letters
        }
        // \p{N}{1,maxDigits}
        if fc & CharClass.number != 0 {
            var k = i + 1
            while k < end, k - i < maxDigits, f[k] & CharClass.number != 0 { k += 1 }
            return k
        }
        // ` ?[^\s\p{L}\p{N}]+[\r\n]*`
        let j = c == blank && i + 1 < end && f[i + 1] & lns == 0 ? i + 1 : i
        if f[j] & lns == 0 {
            var k = j + 1
            while k < end, f[k] & lns == 0 { k += 1 }
            while k < end, f[k] & CharClass.newline != 0 { k += 1 }
            return k
        }
        // \s*[\r\n]+: up to the last newline of the whitespace run; else \s+(?!\S)|\s+
        let run = whitespace(f, i, end)
        return run.lastNewline >= 0 ? run.lastNewline + 1 : run.end
    }

    /// `\s+(?!\S)|\s+` at i (f[i] is whitespace): the run, less its last scalar when a
    /// non-space follows and the run is longer than one; and the run's last \r or \n (-1: none).
    private static func whitespace(_ f: UnsafeBufferPointer<UInt8>, _ i: Int, _ end: Int) -> (end: Int, lastNewline: Int) {
        var k = i, lastNewline = -1
        while k < end, f[k] & CharClass.space != 0 {
            if f[k] & CharClass.newline != 0 { lastNewline = k }
            k += 1
        }
        return (k == end || k - 1 == i ? k : k - 1, lastNewline)
    }

    /// The length after the apostrophe of s|t|re|ve|m|ll|d at i, or nil. With `fold`, as
    /// Oniguruma's (?i:...): ASCII case and ſ (U+017F) for s.
    private static func contraction(_ s: UnsafeBufferPointer<UInt32>, _ i: Int, _ end: Int, fold: Bool) -> Int? {
        func letter(_ k: Int) -> UInt32 {
            let c = s[k]
            guard fold else { return c }
            if c == 0x17F { return 0x73 }
            return (0x41...0x5A).contains(c) ? c | 0x20 : c
        }
        switch letter(i) {
        case 0x73, 0x74, 0x6D, 0x64: return 1  // s t m d
        case 0x72, 0x76: return i + 1 < end && letter(i + 1) == 0x65 ? 2 : nil  // re ve
        case 0x6C: return i + 1 < end && letter(i + 1) == 0x6C ? 2 : nil  // ll
        default: return nil
        }
    }
}
