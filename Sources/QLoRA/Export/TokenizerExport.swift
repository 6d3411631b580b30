import Foundation

/// Tokenizers carried between the two containers, byte-level BPE (`tokenizer.ggml.model =
/// gpt2`, the kind Llama-3, Qwen2 and SmolLM use) only; other kinds throw.
///
///   GGUF → folder   tokenizer.json and tokenizer_config.json from the `tokenizer.ggml.*` keys,
///                   so a folder quantized from GGUF carries its tokenizer and chat template.
///   folder → GGUF   the `tokenizer.ggml.*` keys and `tokenizer.chat_template` from
///                   tokenizer.json, tokenizer_config.json and config.json, as llama.cpp's
///                   convert_hf_to_gguf writes them (ids padded to the model's vocab with
///                   unused "[PADi]" tokens).
public enum TokenizerExport {
    public static func huggingFaceFiles(from g: GGUFFile) throws -> [(name: String, bytes: [UInt8])] {
        let source = g.file.path
        let model = g.metadata["tokenizer.ggml.model"]?.string
        guard model == "gpt2" else { throw TokenizerExportError.unsupported(source: source, model: model ?? "none") }
        guard let tokens = g.metadata["tokenizer.ggml.tokens"]?.array?.compactMap(\.string), !tokens.isEmpty else {
            throw TokenizerExportError.missing(source: source, key: "tokenizer.ggml.tokens")
        }
        let merges = g.metadata["tokenizer.ggml.merges"]?.array?.compactMap(\.string) ?? []
        let types = g.metadata["tokenizer.ggml.token_type"]?.array?.compactMap(\.int) ?? []
        var vocab: [String: Int] = [:]
        for (i, t) in tokens.enumerated() { vocab[t] = i }
        // Control (3) and user-defined (4) tokens are added tokens; control ones are special.
        let added: [[String: Any]] = types.enumerated().compactMap { i, type in
            guard type == 3 || type == 4, i < tokens.count else { return nil }
            return ["id": i, "content": tokens[i], "single_word": false, "lstrip": false, "rstrip": false,
                    "normalized": type == 4, "special": type == 3]
        }
        let byteLevel: [String: Any] = ["type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true]
        // SmolLM's tokenizer.json splits digits one by one before the byte-level split.
        let pre: [String: Any] = g.metadata["tokenizer.ggml.pre"]?.string == "smollm"
            ? ["type": "Sequence", "pretokenizers": [["type": "Digits", "individual_digits": true], byteLevel]]
            : byteLevel
        let tokenizer: [String: Any] = [
            "version": "1.0", "truncation": NSNull(), "padding": NSNull(), "added_tokens": added, "normalizer": NSNull(),
            "pre_tokenizer": pre, "post_processor": byteLevel, "decoder": byteLevel,
            "model": ["type": "BPE", "dropout": NSNull(), "unk_token": NSNull(), "continuing_subword_prefix": NSNull(),
                      "end_of_word_suffix": NSNull(), "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
                      "vocab": vocab, "merges": merges] as [String: Any],
        ]
        func token(_ key: String) -> Any {
            guard let id = g.metadata[key]?.int, id >= 0, id < tokens.count else { return NSNull() }
            return tokens[id]
        }
        var config: [String: Any] = [
            // The fast class loads tokenizer.json as written; GPT2Tokenizer would rebuild it from
            // vocab and merges and drop the pre-tokenizer's digit split.
            "tokenizer_class": "PreTrainedTokenizerFast", "clean_up_tokenization_spaces": false,
            "bos_token": token("tokenizer.ggml.bos_token_id"), "eos_token": token("tokenizer.ggml.eos_token_id"),
            "pad_token": token("tokenizer.ggml.padding_token_id"), "unk_token": token("tokenizer.ggml.unknown_token_id"),
            "add_bos_token": g.metadata["tokenizer.ggml.add_bos_token"]?.bool ?? false,
            "model_max_length": g.metadata["\(g.metadata["general.architecture"]?.string ?? "llama").context_length"]?.int ?? 2048,
        ]
        if let template = g.metadata["tokenizer.chat_template"]?.string { config["chat_template"] = template }
        let options: JSONSerialization.WritingOptions = [.sortedKeys, .withoutEscapingSlashes]
        return [("tokenizer.json", Array(try JSONSerialization.data(withJSONObject: tokenizer, options: options))),
                ("tokenizer_config.json", Array(try JSONSerialization.data(withJSONObject: config, options: options.union(.prettyPrinted))))]
    }
}

extension TokenizerExport {
    /// The GGUF pre-tokenizer name llama.cpp gives each family qlora recognizes in tokenizer.json.
    static func ggufPreName(_ pre: PreTokenizer, ignoresMerges: Bool) -> String {
        switch pre {
        case .gpt2: "gpt-2"
        case .llama3: ignoresMerges ? "llama-bpe" : "dbrx"
        case .qwen2: "qwen2"
        case .digitsThenGPT2: "smollm"
        }
    }

    /// GGUF tokenizer metadata from a Hugging Face folder's tokenizer files; `vocabSize` is the
    /// model's (embedding rows), which the token list is padded to.
    public static func ggufMetadata(from folder: HuggingFaceFolder, vocabSize: Int) throws -> [(key: String, value: GGUFValue)] {
        guard let path = folder.tokenizerJSON else { throw TokenizerExportError.missing(source: folder.path, key: "tokenizer.json") }
        // Loading it checks everything qlora's tokenizer (and so llama.cpp's gpt2 one) can express.
        let tokenizer = try Tokenizer(tokenizerJSON: path)
        guard let data = FileManager.default.contents(atPath: path),
              let root = try JSONSerialization.jsonObject(with: data) as? [String: Any],
              let model = root["model"] as? [String: Any], let vocab = model["vocab"] as? [String: Int] else {
            throw TokenizerExportError.missing(source: path, key: "model.vocab")
        }
        var tokens: [String?] = []
        var types: [Int32] = []
        func set(_ id: Int, _ token: String, _ type: Int32) {
            if id >= tokens.count {
                tokens += [String?](repeating: nil, count: id + 1 - tokens.count)
                types += [Int32](repeating: 5, count: id + 1 - types.count)
            }
            tokens[id] = token
            types[id] = type
        }
        for (token, id) in vocab { set(id, token, 1) }
        // Added tokens: special ones are control tokens (3), the others user-defined (4).
        for entry in root["added_tokens"] as? [[String: Any]] ?? [] {
            if let id = entry["id"] as? Int, let content = entry["content"] as? String {
                set(id, content, entry["special"] as? Bool == true ? 3 : 4)
            }
        }
        guard tokens.count <= vocabSize else {
            throw TokenizerExportError.vocabularyTooLarge(source: path, tokens: tokens.count, modelVocab: vocabSize)
        }
        if tokens.count < vocabSize {
            tokens += [String?](repeating: nil, count: vocabSize - tokens.count)
            types += [Int32](repeating: 5, count: vocabSize - types.count)
        }
        let names = tokens.enumerated().map { $1 ?? "[PAD\($0)]" }
        let merges = try (model["merges"] as? [Any] ?? []).enumerated().map { i, m -> String in
            if let s = m as? String { return s }
            guard let pair = m as? [String], pair.count == 2, !pair.contains(where: { $0.contains(" ") }) else {
                throw TokenizerExportError.inexpressible(source: path, what: "merge \(i) \(m): GGUF merges are \"left right\" strings")
            }
            return pair[0] + " " + pair[1]
        }

        // Special tokens: tokenizer_config.json, then config.json's ids (as convert_hf_to_gguf).
        var config: [String: Any] = [:]
        if let p = folder.tokenizerConfigJSON, let d = FileManager.default.contents(atPath: p),
           let c = try JSONSerialization.jsonObject(with: d) as? [String: Any] { config = c }
        func id(_ key: String, configKey: String) -> Int? {
            let value = config[key]
            if let content = value as? String ?? (value as? [String: Any])?["content"] as? String,
               let i = names.firstIndex(where: { $0.utf8.elementsEqual(content.utf8) }) { return i }
            return folder.rawConfig[configKey] as? Int
        }
        let bos = tokenizer.bos ?? id("bos_token", configKey: "bos_token_id")
        let eos = tokenizer.eos ?? id("eos_token", configKey: "eos_token_id")
        // GGUF can put BOS before and EOS after a text, nothing else.
        guard tokenizer.prefix.isEmpty || tokenizer.prefix == bos.map({ [$0] }) else {
            throw TokenizerExportError.inexpressible(source: path, what: "post_processor puts \(tokenizer.prefix) before a text (GGUF can add only BOS)")
        }
        guard tokenizer.suffix.isEmpty || tokenizer.suffix == eos.map({ [$0] }) else {
            throw TokenizerExportError.inexpressible(source: path, what: "post_processor puts \(tokenizer.suffix) after a text (GGUF can add only EOS)")
        }
        var meta: [(key: String, value: GGUFValue)] = [
            ("tokenizer.ggml.model", .string("gpt2")),
            ("tokenizer.ggml.pre", .string(ggufPreName(tokenizer.preTokenizer, ignoresMerges: tokenizer.ignoresMerges))),
            ("tokenizer.ggml.tokens", .array(names.map { .string($0) })),
            ("tokenizer.ggml.token_type", .array(types.map { .int32($0) })),
            ("tokenizer.ggml.merges", .array(merges.map { .string($0) })),
        ]
        if let bos { meta.append(("tokenizer.ggml.bos_token_id", .uint32(UInt32(bos)))) }
        if let eos { meta.append(("tokenizer.ggml.eos_token_id", .uint32(UInt32(eos)))) }
        if let unk = id("unk_token", configKey: "unk_token_id") { meta.append(("tokenizer.ggml.unknown_token_id", .uint32(UInt32(unk)))) }
        if let pad = id("pad_token", configKey: "pad_token_id") { meta.append(("tokenizer.ggml.padding_token_id", .uint32(UInt32(pad)))) }
        meta.append(("tokenizer.ggml.add_bos_token", .bool(!tokenizer.prefix.isEmpty)))
        if !tokenizer.suffix.isEmpty { meta.append(("tokenizer.ggml.add_eos_token", .bool(true))) }
        if let template = LanguageModel.folderTemplate(folder) { meta.append(("tokenizer.chat_template", .string(template))) }
        return meta
    }
}

public enum TokenizerExportError: Error, Equatable, CustomStringConvertible {
    case unsupported(source: String, model: String)
    case missing(source: String, key: String)
    case inexpressible(source: String, what: String)
    case vocabularyTooLarge(source: String, tokens: Int, modelVocab: Int)

    public var description: String {
        switch self {
        case let .unsupported(source, model):
            "\(source): tokenizer kind '\(model)' cannot be written as tokenizer.json yet (byte-level BPE, 'gpt2', can)"
        case let .missing(source, key): "\(source): \(key) is missing"
        case let .inexpressible(source, what): "\(source): cannot be written as GGUF tokenizer metadata: \(what)"
        case let .vocabularyTooLarge(source, tokens, modelVocab):
            "\(source): the tokenizer has \(tokens) token ids, more than the model's vocab_size \(modelVocab)"
        }
    }
}
