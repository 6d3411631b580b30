import Foundation

/// A decoder with the tokenizer and chat template stored beside it: what generation and
/// perplexity need from a model path.
///
///   GGUF file      tokenizer from `tokenizer.ggml.*`, template from `tokenizer.chat_template`
///   model folder   tokenizer.json (+ tokenizer_config.json), template from tokenizer_config.json's
///                  `chat_template` (a string, or a list of {name, template}: "default") or chat_template.jinja
public final class LanguageModel: Sendable {
    public let model: DecoderModel
    public let tokenizer: Tokenizer
    /// The Jinja template text, when the model has one.
    public let chatTemplateText: String?

    public init(model: DecoderModel, tokenizer: Tokenizer, chatTemplateText: String?) {
        self.model = model
        self.tokenizer = tokenizer
        self.chatTemplateText = chatTemplateText
    }

    public convenience init(path: String, kQuants: QuantizedModel.KQuantTarget = .asIs) throws {
        try self.init(QuantizedModel(path: path, kQuants: kQuants))
    }

    /// A loaded base and the tokenizer stored beside it.
    public convenience init(_ quantized: QuantizedModel) throws {
        let path = quantized.path
        let model = try DecoderModel(quantized)
        if let folder = quantized.source.folder {
            guard let json = folder.tokenizerJSON else { throw TokenizerError.missing(source: path, key: "tokenizer.json") }
            try self.init(model: model, tokenizer: Tokenizer(tokenizerJSON: json), chatTemplateText: Self.folderTemplate(folder))
        } else {
            let g = quantized.source.gguf!  // a source is a folder or a GGUF file
            try self.init(model: model, tokenizer: Tokenizer(gguf: g), chatTemplateText: g.metadata["tokenizer.chat_template"]?.string)
        }
    }

    /// Whether `quantized` has a tokenizer to build one from: a folder's tokenizer.json, a
    /// GGUF's `tokenizer.ggml.*` (a `quantize --shape` folder or its GGUF export has none).
    public static func hasTokenizer(_ quantized: QuantizedModel) -> Bool {
        if let folder = quantized.source.folder { return folder.tokenizerJSON != nil }
        return quantized.source.gguf?.metadata["tokenizer.ggml.model"] != nil
    }

    /// The same tokenizer and template over another model: the base with adapters applied,
    /// from an AdapterSet (which reads PEFT-layout directories over this model).
    public func with(model: DecoderModel) -> LanguageModel {
        LanguageModel(model: model, tokenizer: tokenizer, chatTemplateText: chatTemplateText)
    }

    /// Whether the tokenizer puts BOS before a text (`tokenizer.ggml.add_bos_token`, or the
    /// post-processor of tokenizer.json).
    public var addsBOS: Bool { tokenizer.bos.map { tokenizer.prefix == [$0] } ?? false }

    /// The model's own template rendered as Jinja, or the named built-in family when `family` is given.
    public func chatTemplate(_ family: ChatTemplate.Family? = nil) throws(ChatTemplateError) -> ChatTemplate {
        let bos = tokenizer.bos.flatMap(tokenizer.token(of:)) ?? "", eos = tokenizer.eos.flatMap(tokenizer.token(of:)) ?? ""
        if let family {
            let defaultSystem = family == .chatml ? chatTemplateText.flatMap(ChatTemplate.chatMLDefaultSystem) : nil
            return ChatTemplate(family: family, defaultSystem: defaultSystem, bos: bos, eos: eos)
        }
        guard let chatTemplateText else { throw .missing(source: tokenizer.source) }
        return try ChatTemplate(template: chatTemplateText, bos: bos, eos: eos)
    }

    /// Ids that end generation: EOS and the template's end-of-turn token.
    public func stopTokens(template: ChatTemplate?) -> Set<Int> {
        var ids = Set<Int>()
        if let eos = tokenizer.eos { ids.insert(eos) }
        if let t = template, let id = tokenizer.id(of: t.endOfTurn) { ids.insert(id) }
        return ids
    }

    static func folderTemplate(_ folder: HuggingFaceFolder) -> String? {
        if let path = folder.tokenizerConfigJSON, let data = FileManager.default.contents(atPath: path),
           let config = try? JSONSerialization.jsonObject(with: data) as? [String: Any] {
            if let s = config["chat_template"] as? String { return s }
            if let list = config["chat_template"] as? [[String: Any]],
               let s = list.first(where: { $0["name"] as? String == "default" })?["template"] as? String { return s }
        }
        let jinja = (folder.path as NSString).appendingPathComponent("chat_template.jinja")
        return FileManager.default.contents(atPath: jinja).map { String(decoding: $0, as: UTF8.self) }
    }
}
