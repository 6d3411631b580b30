import Foundation

/// Hugging Face tokenizer files (tokenizer.json, tokenizer_config.json) from a GGUF file's
/// tokenizer metadata, so a folder quantized from GGUF carries its tokenizer and chat
/// template. Byte-level BPE (`tokenizer.ggml.model = gpt2`) only, the kind Llama-3, Qwen2 and
/// SmolLM use; other kinds throw.
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

public enum TokenizerExportError: Error, Equatable, CustomStringConvertible {
    case unsupported(source: String, model: String)
    case missing(source: String, key: String)

    public var description: String {
        switch self {
        case let .unsupported(source, model):
            "\(source): tokenizer kind '\(model)' cannot be written as tokenizer.json yet (byte-level BPE, 'gpt2', can)"
        case let .missing(source, key): "\(source): \(key) is missing"
        }
    }
}
