import Foundation

/// Tokenizers from the two places a model keeps one.
///
/// GGUF (llama.cpp's keys):
/// ```
/// tokenizer.ggml.model        "gpt2" (byte-level BPE), "llama" (SentencePiece); others throw
/// tokenizer.ggml.pre          pre-tokenizer name → `PreTokenizer` (table below); gpt2 only
/// tokenizer.ggml.tokens       [V] strings, byte-level spelling (gpt2), "▁" for space (llama)
/// tokenizer.ggml.merges       "left right", highest priority first; gpt2 only
/// tokenizer.ggml.scores       [V] float32, merge priority; llama only (0 when absent)
/// tokenizer.ggml.token_type   [V] `GGUFTokenType`: 1 normal, 2 unknown (special added token in
///                             llama), 3 control (special added token), 4 user-defined (added
///                             token), 5 unused, 6 byte (`<0xXX>`, llama); others: undefined
/// tokenizer.ggml.add_space_prefix   llama: a space before the text (default true)
/// general.name                "phi-3" or "phi3" in it: ASCII whitespace after an added token is
///                             dropped, but for <unk>, <s>, <|endoftext|> (llama.cpp's RSTRIP)
/// tokenizer.ggml.{bos,eos}_token_id, add_bos_token / add_eos_token (encode's prefix/suffix;
///                             for llama, as in llama.cpp, BOS 1, EOS 2 and add_bos_token true
///                             when absent)
/// ```
/// tokenizer.json (Hugging Face): model {type "BPE", vocab {token: id}, merges as "a b" or
/// ["a", "b"], ignore_merges}, added_tokens [{id, content, special, normalized}],
/// pre_tokenizer (recognized by shape, below), post_processor (TemplateProcessing's special
/// tokens around $A become prefix/suffix), decoder ByteLevel, normalizer null. bos/eos come
/// from tokenizer_config.json beside it, when there is one.
///
/// GGUF pre names follow llama.cpp (llama-vocab.cpp), which follows each model's own
/// tokenizer.json. transformers 5.23 agrees except for "smollm" (and the other digit-splitting
/// names), for which it keeps GPT-2's ByteLevel regex: it then glues a space to a digit after
/// a run of spaces ("x  1" → "x", " ", " 1") where SmolLM2's tokenizer.json and llama.cpp give
/// "x", "  ", "1"; and for llama3, where it does not set ignore_merges.
extension Tokenizer {
    static let ggufPreTokenizers: [String: (PreTokenizer, ignoreMerges: Bool)] = {
        var table: [String: (PreTokenizer, ignoreMerges: Bool)] = [:]
        for name in ["default", "gpt2", "gpt-2", "phi-2", "mpt", "olmo", "jais"] { table[name] = (.gpt2, false) }
        for name in ["llama3", "llama-v3", "llama-bpe", "falcon3", "falcon-h1", "pixtral", "midm-2.0", "lfm2", "jina-v5-nano"] {
            table[name] = (.llama3, true)
        }
        for name in ["dbrx", "smaug-bpe"] { table[name] = (.llama3, false) }
        for name in ["qwen2", "deepseek-r1-qwen", "megrez"] { table[name] = (.qwen2, false) }
        for name in ["smollm", "starcoder", "refact", "command-r", "codeshell", "exaone", "minerva"] { table[name] = (.digitsThenGPT2, false) }
        return table
    }()

    public convenience init(gguf g: GGUFFile) throws {
        let source = g.file.path
        let kind = g.metadata["tokenizer.ggml.model"]?.string ?? "none"
        guard kind == "gpt2" || kind == "llama" else { throw TokenizerError.unsupportedTokenizer(source: source, kind: kind) }
        guard let tokenValues = g.metadata["tokenizer.ggml.tokens"]?.array else {
            throw TokenizerError.missing(source: source, key: "tokenizer.ggml.tokens")
        }
        let tokens = try tokenValues.map {
            guard let s = $0.string else { throw TokenizerError.badValue(source: source, key: "tokenizer.ggml.tokens", detail: "holds a \($0), not a string") }
            return s
        }
        var types: [GGUFTokenType]?
        if let values = g.metadata["tokenizer.ggml.token_type"]?.array {
            guard values.count == tokens.count else {
                throw TokenizerError.badValue(source: source, key: "tokenizer.ggml.token_type", detail: "\(values.count) entries for \(tokens.count) tokens")
            }
            types = values.map { $0.int.flatMap(GGUFTokenType.init(rawValue:)) ?? .undefined }  // llama.cpp: any other value is undefined
        }
        func tokenID(_ key: String) throws -> Int? {
            guard let v = g.metadata[key] else { return nil }
            guard let id = v.int, tokens.indices.contains(id) else {
                throw TokenizerError.badValue(source: source, key: key, detail: "\(v) is not a token id below \(tokens.count)")
            }
            return id
        }
        // Without the keys llama.cpp takes SentencePiece's own ids: BOS 1, EOS 2; and adds BOS
        // to SentencePiece text unless told not to.
        let spmDefault = { (id: Int) in kind == "llama" && tokens.indices.contains(id) ? id : nil }
        let bos = try tokenID("tokenizer.ggml.bos_token_id") ?? spmDefault(1), eos = try tokenID("tokenizer.ggml.eos_token_id") ?? spmDefault(2)
        let addBOS = g.metadata["tokenizer.ggml.add_bos_token"]?.bool ?? (kind == "llama")
        let addEOS = g.metadata["tokenizer.ggml.add_eos_token"]?.bool ?? false
        let prefix = addBOS ? bos.map { [$0] } ?? [] : [], suffix = addEOS ? eos.map { [$0] } ?? [] : []
        // llama.cpp drops the whitespace after Phi-3's added tokens, but for <unk>, <s> and
        // <|endoftext|>, where general.name says Phi-3 (as Phi-3's tokenizer.json sets rstrip).
        let name = (g.metadata["general.name"]?.string ?? "").lowercased()
        let phi3 = name.contains("phi-3") || name.contains("phi3")
        let rstrip = { (id: Int) in phi3 && !["<unk>", "<s>", "<|endoftext|>"].contains(tokens[id]) }

        if kind == "llama" {
            var scores = [Float](repeating: 0, count: tokens.count)
            if let values = g.metadata["tokenizer.ggml.scores"]?.array {
                guard values.count == tokens.count else {
                    throw TokenizerError.badValue(source: source, key: "tokenizer.ggml.scores", detail: "\(values.count) entries for \(tokens.count) tokens")
                }
                scores = try values.map {
                    if case let .float32(f) = $0 { return f }
                    guard let d = $0.double else { throw TokenizerError.badValue(source: source, key: "tokenizer.ggml.scores", detail: "holds a \($0), not a number") }
                    return Float(d)
                }
            }
            let types = types ?? Array(repeating: .normal, count: tokens.count)
            let added = Self.addedTokens(tokens, types: types, rstrip: rstrip)
            try self.init(sentencePieceTokens: tokens, scores: scores, types: types, addedTokens: added,
                          addsSpacePrefix: g.metadata["tokenizer.ggml.add_space_prefix"]?.bool ?? true,
                          bos: bos, eos: eos, prefix: prefix, suffix: suffix, source: source)
            return
        }
        let merges = try (g.metadata["tokenizer.ggml.merges"]?.array ?? []).enumerated().map { i, v in
            guard let s = v.string else { throw TokenizerError.badMerge(source: source, index: i, merge: "\(v)", detail: "not a string") }
            return try Self.mergePair(s, index: i, source: source)
        }
        let preName = g.metadata["tokenizer.ggml.pre"]?.string ?? "default"
        guard let (pre, ignoreMerges) = Self.ggufPreTokenizers[preName] else {
            throw TokenizerError.unsupportedPreTokenizer(source: source, description: "'\(preName)' (tokenizer.ggml.pre)")
        }
        let added = types.map { types in
            types.enumerated().filter { $0.element == .control || $0.element == .userDefined }
                .map { AddedToken(id: $0.offset, content: tokens[$0.offset], special: $0.element == .control, rstrip: rstrip($0.offset)) }
        } ?? []
        try self.init(tokens: tokens, merges: merges, addedTokens: added, preTokenizer: pre, ignoreMerges: ignoreMerges,
                      bos: bos, eos: eos, prefix: prefix, suffix: suffix, source: source)
    }

    /// Reads tokenizer.json at `path`, and tokenizer_config.json beside it for bos and eos.
    public convenience init(tokenizerJSON path: String) throws {
        let source = path
        func bad(_ key: String, _ detail: String) -> TokenizerError { .badValue(source: source, key: key, detail: detail) }
        guard let data = FileManager.default.contents(atPath: path) else { throw TokenizerError.missing(source: source, key: "the file") }
        guard let root = try? JSONSerialization.jsonObject(with: data) as? [String: Any] else { throw bad("the file", "not a JSON object") }
        guard let model = root["model"] as? [String: Any] else { throw TokenizerError.missing(source: source, key: "model") }
        let kind = model["type"] as? String ?? "none"
        guard kind == "BPE" else { throw TokenizerError.unsupportedTokenizer(source: source, kind: kind) }
        if let n = root["normalizer"], !(n is NSNull) { throw TokenizerError.unsupportedFeature(source: source, feature: "normalizer \(Self.compact(n))") }
        if model["byte_fallback"] as? Bool == true { throw TokenizerError.unsupportedFeature(source: source, feature: "byte_fallback") }
        for key in ["continuing_subword_prefix", "end_of_word_suffix"] {
            if let s = model[key] as? String, !s.isEmpty { throw TokenizerError.unsupportedFeature(source: source, feature: "\(key) '\(s)'") }
        }
        if let d = model["dropout"] as? Double, d > 0 { throw TokenizerError.unsupportedFeature(source: source, feature: "BPE dropout") }
        guard (root["decoder"] as? [String: Any])?["type"] as? String == "ByteLevel" else {
            throw TokenizerError.unsupportedFeature(source: source, feature: "decoder \(Self.compact(root["decoder"] ?? NSNull())) (ByteLevel is)")
        }

        guard let vocab = model["vocab"] as? [String: Any] else { throw TokenizerError.missing(source: source, key: "model.vocab") }
        var byID: [Int: String] = [:]
        for (token, value) in vocab {
            guard let id = value as? Int, id >= 0 else { throw bad("model.vocab", "'\(token)' has id \(value)") }
            guard byID.updateValue(token, forKey: id) == nil else { throw bad("model.vocab", "id \(id) appears twice") }
        }
        var added: [AddedToken] = []
        for entry in root["added_tokens"] as? [[String: Any]] ?? [] {
            guard let id = entry["id"] as? Int, id >= 0, let content = entry["content"] as? String else {
                throw bad("added_tokens", "an entry without id and content: \(Self.compact(entry))")
            }
            for option in ["single_word", "lstrip", "rstrip"] where entry[option] as? Bool == true {
                throw TokenizerError.unsupportedFeature(source: source, feature: "added token '\(content)' with \(option)")
            }
            added.append(AddedToken(id: id, content: content, special: entry["special"] as? Bool ?? false,
                                    normalized: entry["normalized"] as? Bool ?? false))
            byID[id] = content
        }
        let count = (byID.keys.max() ?? -1) + 1
        // Ids must run 0..<count without gaps: so count is the number of ids, and an id of 10⁹
        // is refused here rather than allocated for (found by the tokenizer fuzzer).
        guard count == byID.count else {
            let gap = (0...byID.count).first { byID[$0] == nil } ?? byID.count
            throw bad("model.vocab", "no token has id \(gap) (ids must run 0..<\(count))")
        }
        let tokens = try (0..<count).map { id in
            guard let t = byID[id] else { throw bad("model.vocab", "no token has id \(id) (ids must run 0..<\(count))") }
            return t
        }
        let merges = try (model["merges"] as? [Any] ?? []).enumerated().map { i, m in
            if let s = m as? String { return try Self.mergePair(s, index: i, source: source) }
            guard let pair = m as? [String], pair.count == 2 else {
                throw TokenizerError.badMerge(source: source, index: i, merge: Self.compact(m), detail: "neither \"a b\" nor [a, b]")
            }
            return (pair[0], pair[1])
        }
        let pre = try Self.preTokenizer(root["pre_tokenizer"] ?? NSNull(), source: source)
        let (prefix, suffix) = try Self.specialTokens(root["post_processor"] ?? NSNull(), source: source)

        var bos: Int?, eos: Int?
        let configPath = ((path as NSString).deletingLastPathComponent as NSString).appendingPathComponent("tokenizer_config.json")
        if let configData = FileManager.default.contents(atPath: configPath),
           let config = try? JSONSerialization.jsonObject(with: configData) as? [String: Any] {
            func tokenID(_ key: String) -> Int? {
                let value = config[key]
                let content = value as? String ?? (value as? [String: Any])?["content"] as? String
                return content.flatMap { c in tokens.firstIndex { $0.utf8.elementsEqual(c.utf8) } }
            }
            bos = tokenID("bos_token")
            eos = tokenID("eos_token")
        }
        try self.init(tokens: tokens, merges: merges, addedTokens: added, preTokenizer: pre,
                      ignoreMerges: model["ignore_merges"] as? Bool ?? false, bos: bos, eos: eos, prefix: prefix, suffix: suffix, source: source)
    }

    static let gpt2Pattern = #"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"#
    static let llama3Pattern = #"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"#
    static let qwen2Pattern = #"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"#

    /// The families tokenizer.json describes:
    /// ```
    /// ByteLevel(use_regex: true)                                         gpt2
    /// Sequence[Digits(individual_digits: true), ByteLevel(use_regex: true)]  digitsThenGPT2
    /// Sequence[Split(Regex: one of the three patterns above, Isolated), ByteLevel(use_regex: false)]
    /// ```
    /// always with add_prefix_space false. Anything else throws.
    static func preTokenizer(_ description: Any, source: String) throws -> PreTokenizer {
        let unsupported = TokenizerError.unsupportedPreTokenizer(source: source, description: compact(description))
        func byteLevel(_ p: [String: Any], regex: Bool) -> Bool {
            p["type"] as? String == "ByteLevel" && (p["use_regex"] as? Bool ?? true) == regex && p["add_prefix_space"] as? Bool != true
        }
        guard let p = description as? [String: Any] else { throw unsupported }
        if byteLevel(p, regex: true) { return .gpt2 }
        guard p["type"] as? String == "Sequence", let seq = p["pretokenizers"] as? [[String: Any]], seq.count == 2 else { throw unsupported }
        if seq[0]["type"] as? String == "Digits", seq[0]["individual_digits"] as? Bool == true, byteLevel(seq[1], regex: true) {
            return .digitsThenGPT2
        }
        guard seq[0]["type"] as? String == "Split", (seq[0]["behavior"] as? String)?.lowercased() == "isolated",
              seq[0]["invert"] as? Bool != true, byteLevel(seq[1], regex: false),
              let pattern = (seq[0]["pattern"] as? [String: Any])?["Regex"] as? String else { throw unsupported }
        switch pattern {
        case gpt2Pattern: return .gpt2
        case llama3Pattern: return .llama3
        case qwen2Pattern: return .qwen2
        default: throw unsupported
        }
    }

    /// The ids a post_processor puts around a single sequence: TemplateProcessing's "single"
    /// (SpecialToken items before and after Sequence A), ByteLevel (none), or a Sequence of them.
    static func specialTokens(_ description: Any, source: String) throws -> (prefix: [Int], suffix: [Int]) {
        if description is NSNull { return ([], []) }
        let unsupported = TokenizerError.unsupportedFeature(source: source, feature: "post_processor \(compact(description))")
        guard let p = description as? [String: Any] else { throw unsupported }
        switch p["type"] as? String {
        case "ByteLevel": return ([], [])
        case "Sequence":
            var prefix: [Int] = [], suffix: [Int] = []
            for inner in p["processors"] as? [Any] ?? [] {
                let (pre, post) = try specialTokens(inner, source: source)
                prefix = pre + prefix
                suffix += post
            }
            return (prefix, suffix)
        case "TemplateProcessing":
            guard let single = p["single"] as? [[String: Any]] else { throw unsupported }
            let table = p["special_tokens"] as? [String: Any] ?? [:]
            var prefix: [Int] = [], suffix: [Int] = [], seenA = false
            for item in single {
                if item["Sequence"] != nil {
                    seenA = true
                } else if let name = (item["SpecialToken"] as? [String: Any])?["id"] as? String,
                          let ids = (table[name] as? [String: Any])?["ids"] as? [Int] {
                    if seenA { suffix += ids } else { prefix += ids }
                } else {
                    throw unsupported
                }
            }
            return (prefix, suffix)
        default: throw unsupported
        }
    }

    /// "left right" → (left, right); byte-level tokens never hold a space.
    static func mergePair(_ s: String, index: Int, source: String) throws -> (String, String) {
        let parts = s.utf8.split(separator: 0x20, omittingEmptySubsequences: false)
        guard parts.count == 2, let left = String(parts[0]), let right = String(parts[1]) else {
            throw TokenizerError.badMerge(source: source, index: index, merge: s, detail: "not two tokens separated by one space")
        }
        return (left, right)
    }

    static func compact(_ json: Any) -> String {
        guard JSONSerialization.isValidJSONObject(json),
              let data = try? JSONSerialization.data(withJSONObject: json, options: [.sortedKeys, .withoutEscapingSlashes]) else { return "\(json)" }
        let s = String(decoding: data, as: UTF8.self)
        return s.count > 200 ? String(s.prefix(197)) + "..." : s
    }
}
