import Foundation

/// One training sequence as Hugging Face causal LMs take it: `inputIds` [T] and `labels` [T],
/// aligned (the model shifts: logits at t are scored against labels[t + 1]); a label of −100
/// (`ignoreIndex`) is not trained. labels[0] is never a target, whatever it holds.
public struct SFTExample: Sendable, Equatable {
    public static let ignoreIndex = -100

    public var inputIds: [Int]
    public var labels: [Int]
    /// The line of the data file the example starts on; 0 for text chunks and packed rows.
    public var line: Int

    public init(inputIds: [Int], labels: [Int], line: Int = 0) {
        precondition(inputIds.count == labels.count, "\(inputIds.count) ids, \(labels.count) labels")
        self.inputIds = inputIds
        self.labels = labels
        self.line = line
    }

    public var count: Int { inputIds.count }

    /// Targets the loss sees: labels[1...] that are not −100.
    public var trainedTokens: Int { labels.dropFirst().count { $0 != Self.ignoreIndex } }
}

/// One row of a data file, before tokenization (`SFTRow(json:)` reads the JSON layouts).
public enum SFTRow: Sendable, Equatable {
    /// Language modelling: every token trained.
    case text(String)
    /// TRL's completion-only loss: the prompt masked.
    case promptCompletion(prompt: String, completion: String)
    /// TRL's assistant_only_loss: only assistant turns trained.
    case messages([ChatMessage])
    /// TRL's conversational prompt–completion: the prompt's messages masked (assistant turns
    /// among them too), the assistant turns of the completion trained.
    case conversation(prompt: [ChatMessage], completion: [ChatMessage])
    /// Alpaca: an instruction, an input that may be empty, the output to train. With a chat
    /// template it is the conversation axolotl and Unsloth make of it for a chat model,
    ///   user: instruction + "\n\n" + input (instruction alone when input is empty)
    ///   assistant: output
    /// trained as `messages`; without one (a base model) it is `promptCompletion` with the
    /// Stanford Alpaca prompt (`alpacaPrompt`), as axolotl's `alpaca` type writes it.
    case instruction(instruction: String, input: String, output: String)

    /// Stanford Alpaca's prompt, ending in "### Response:\n" as axolotl's and Unsloth's do (the
    /// original ends at the colon and starts the output on the next line).
    public static func alpacaPrompt(instruction: String, input: String) -> String {
        input.isEmpty
            ? "Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n"
                + "### Instruction:\n\(instruction)\n\n### Response:\n"
            : "Below is an instruction that describes a task, paired with an input that provides further context. "
                + "Write a response that appropriately completes the request.\n\n"
                + "### Instruction:\n\(instruction)\n\n### Input:\n\(input)\n\n### Response:\n"
    }

    /// Tokenizes the row as TRL's SFTTrainer does, then keeps the first `maxLength` tokens.
    ///
    ///   text                prefix + text + EOS;  labels: prefix −100, the rest trained
    ///   prompt/completion   prefix + (prompt + completion) + EOS, tokenized as one text;
    ///                       labels: the first |prefix + prompt| tokens −100, the rest trained
    ///                       (TRL counts the prompt's tokens alone the same way, and warns
    ///                       where a token spans the boundary, as a prompt ending in a space does)
    ///   messages            chatTemplate.render(messages) tokenized as one text, no tokenizer
    ///                       prefix (the template writes BOS where the model wants it);
    ///                       labels: each assistant message's content and its end-of-turn
    ///                       token trained (or what `{% generation %}` marks); system, user and
    ///                       tool turns, the assistant header and what follows end-of-turn
    ///                       (ChatML's "\n") −100. A token is trained when its first byte lies
    ///                       in a trained piece of `segments`, as TRL's assistant mask maps
    ///                       characters to tokens through offsets.
    ///   conversation        as messages of prompt + completion, the prompt's assistant turns
    ///                       −100 too. TRL's completion mask trains every token after
    ///                       render(prompt, generation prompt); the same tokens but for what
    ///                       follows the completion's last end-of-turn (ChatML's "\n").
    ///   instruction         as messages or prompt/completion (see the case)
    /// EOS is not added where the text already ends with it.
    ///
    /// A row with nothing to train at all (a conversation without an assistant turn) throws
    /// `.allLabelsMasked`; one whose trained tokens all lie past `maxLength` throws
    /// `.trainedPastMaxLength`, which a data set counts and drops rather than fails on.
    public func tokenize(tokenizer: Tokenizer, chatTemplate: ChatTemplate?, maxLength: Int) throws(SFTRowProblem) -> SFTExample {
        precondition(maxLength > 1, "maxLength \(maxLength)")
        var ids: [Int] = [], labels: [Int] = []
        func append(_ part: [Int], trained: Bool) {
            ids += part
            labels += trained ? part : [Int](repeating: SFTExample.ignoreIndex, count: part.count)
        }
        func appendEOS() {
            if let eos = tokenizer.eos, ids.last != eos { append([eos], trained: true) }
        }
        func conversation(_ messages: [ChatMessage], trainedFrom: Int) throws(SFTRowProblem) {
            guard let chatTemplate else { throw .noChatTemplate }
            let pieces = try Self.segments(messages, chatTemplate, trainedFrom: trainedFrom)
            let text = pieces.map(\.text).joined()
            ids = tokenizer.encode(text)
            guard let starts = Self.tokenStarts(ids, of: text, tokenizer) else { throw .untraceableTokens }
            var trained: [Range<Int>] = [], offset = 0
            for p in pieces {
                let end = offset + p.text.utf8.count
                if p.trained { trained.append(offset..<end) }
                offset = end
            }
            labels = zip(ids, starts).map { id, start in trained.contains { $0.contains(start) } ? id : SFTExample.ignoreIndex }
        }
        switch self {
        case let .text(text):
            append(tokenizer.prefix, trained: false)
            append(tokenizer.encode(text), trained: true)
            appendEOS()
        case let .promptCompletion(prompt, completion):
            let promptCount = tokenizer.prefix.count + tokenizer.encode(prompt).count
            append(tokenizer.prefix, trained: false)
            append(tokenizer.encode(prompt + completion), trained: true)
            appendEOS()
            for i in 0..<min(promptCount, labels.count) { labels[i] = SFTExample.ignoreIndex }
        case let .messages(messages):
            try conversation(messages, trainedFrom: 0)
        case let .conversation(prompt, completion):
            try conversation(prompt + completion, trainedFrom: prompt.count)
        case let .instruction(instruction, input, output):
            let row: SFTRow = chatTemplate == nil
                ? .promptCompletion(prompt: Self.alpacaPrompt(instruction: instruction, input: input), completion: output)
                : .messages([ChatMessage(.user, input.isEmpty ? instruction : instruction + "\n\n" + input), ChatMessage(.assistant, output)])
            return try row.tokenize(tokenizer: tokenizer, chatTemplate: chatTemplate, maxLength: maxLength)
        }
        guard let firstTrained = labels.indices.dropFirst().first(where: { labels[$0] != SFTExample.ignoreIndex }) else {
            throw .allLabelsMasked(tokens: ids.count)
        }
        guard firstTrained < maxLength else { throw .trainedPastMaxLength(tokens: ids.count, firstTrained: firstTrained, maxLength: maxLength) }
        return SFTExample(inputIds: Array(ids.prefix(maxLength)), labels: Array(labels.prefix(maxLength)))
    }

    /// The rendered conversation cut into consecutive pieces, each trained or not; the pieces
    /// concatenate to render(messages, addGenerationPrompt: false). Three ways, the first that applies:
    ///
    /// 1. The template marks assistant text with `{% generation %}` (TRL's training templates):
    ///    exactly the marked ranges are trained, as TRL's assistant_only_loss trains them.
    /// 2. The template renders incrementally: for each assistant message i,
    ///      render(messages[..<i], addGenerationPrompt: true)   ends with the assistant header: masked
    ///      render(messages[...i], addGenerationPrompt: false)  adds the turn: trained up to and
    ///                                                          including its last end-of-turn, masked after
    ///    and render(messages) after the last assistant message, masked. A turn's render is taken
    ///    less the template's `closing` (Phi-3.5 ends a conversation with EOS, not each turn).
    /// 3. Otherwise (a conversation ending in an assistant turn renders it differently: Qwen3
    ///    writes an empty `<think>` block into the last assistant turn only), as long as each
    ///    render(messages[..<i], addGenerationPrompt: true) is a prefix of the whole rendering:
    ///    trained from there through the first end-of-turn after it (to the end, for the last
    ///    assistant message of a template that writes none); everything else is masked.
    /// Assistant turns before `trainedFrom` (a prompt's) are masked whole: in way 1, the marked
    /// ranges that start inside render(messages[..<trainedFrom], addGenerationPrompt: true).
    ///
    /// The pieces are not tokenized one by one: a cut that is not at a special token can fall
    /// inside a token of the whole text. Llama 3's header ends in "\n\n", which the GPT-2
    /// pre-tokenizer writes as one "ĊĊ" at the end of a piece but as "Ċ" "Ċ" before content.
    static func segments(_ messages: [ChatMessage], _ template: ChatTemplate, trainedFrom: Int = 0) throws(SFTRowProblem) -> [(text: String, trained: Bool)] {
        func render(_ m: ArraySlice<ChatMessage>, _ generationPrompt: Bool) throws(SFTRowProblem) -> JinjaTemplate.Rendering {
            do { return try template.rendering(Array(m), addGenerationPrompt: generationPrompt) } catch { throw .template(error) }
        }
        let whole = try render(messages[...], false)
        let bytes = Array(whole.text.utf8)
        func piece(_ r: Range<Int>, _ trained: Bool) -> (text: String, trained: Bool) { (String(decoding: bytes[r], as: UTF8.self), trained) }

        if template.hasGenerationMarkers {
            let prompt = trainedFrom > 0 ? try render(messages[..<trainedFrom], true).text.utf8.count : 0
            var pieces: [(text: String, trained: Bool)] = [], at = 0
            for r in whole.generationRanges where r.lowerBound >= max(at, prompt) {
                pieces += [piece(at..<r.lowerBound, false), piece(r, true)]
                at = r.upperBound
            }
            pieces.append(piece(at..<bytes.count, false))
            return pieces.filter { !$0.text.isEmpty }
        }
        if let pieces = try incrementalSegments(messages, template, trainedFrom: trainedFrom, render: { m, g throws(SFTRowProblem) in try render(m, g).text }) {
            return pieces
        }
        var pieces: [(text: String, trained: Bool)] = [], at = 0
        let last = messages.lastIndex { $0.role == .assistant }
        for i in messages.indices where messages[i].role == .assistant {
            let head = Array(try render(messages[..<i], true).text.utf8)
            guard head.count >= at, bytes.starts(with: head) else { throw .templateNotIncremental(message: i) }
            var end: Int
            if !template.endOfTurn.isEmpty, let e = Self.find(Array(template.endOfTurn.utf8), in: bytes, from: head.count) {
                end = e + template.endOfTurn.utf8.count
            } else {
                guard i == last else { throw .templateNotIncremental(message: i) }
                end = bytes.count
            }
            end = max(end, head.count)
            pieces += [piece(at..<head.count, false), piece(head.count..<end, i >= trainedFrom)]
            at = end
        }
        pieces.append(piece(at..<bytes.count, false))
        return pieces.filter { !$0.text.isEmpty }
    }

    /// Way 2 of `segments`; nil when a prefix's rendering is not a prefix of the next.
    static func incrementalSegments(_ messages: [ChatMessage], _ template: ChatTemplate, trainedFrom: Int,
                                    render: (ArraySlice<ChatMessage>, Bool) throws(SFTRowProblem) -> String) throws(SFTRowProblem) -> [(text: String, trained: Bool)]? {
        var pieces: [(text: String, trained: Bool)] = []
        var done = ""
        for i in messages.indices where messages[i].role == .assistant {
            let head = try render(messages[..<i], true)
            var full = try render(messages[...i], false)
            // What the template writes once after the last message (phi3's EOS) is not part of a turn.
            if !template.closing.isEmpty, full.utf8.reversed().starts(with: template.closing.utf8.reversed()) {
                full = String(decoding: full.utf8.dropLast(template.closing.utf8.count), as: UTF8.self)
            }
            guard let masked = Self.remainder(of: head, after: done), let turn = Self.remainder(of: full, after: head) else { return nil }
            var trainedEnd = turn.endIndex
            if !template.endOfTurn.isEmpty, let r = turn.range(of: template.endOfTurn, options: [.backwards, .literal]) { trainedEnd = r.upperBound }
            pieces += [(masked, false), (String(turn[..<trainedEnd]), i >= trainedFrom), (String(turn[trainedEnd...]), false)]
            done = full
        }
        guard let rest = Self.remainder(of: try render(messages[...], false), after: done) else { return nil }
        pieces.append((rest, false))
        return pieces.filter { !$0.text.isEmpty }
    }

    /// The first offset ≥ `from` where `needle` occurs in `haystack`.
    static func find(_ needle: [UInt8], in haystack: [UInt8], from: Int) -> Int? {
        guard needle.count <= haystack.count else { return nil }
        var i = from
        while i + needle.count <= haystack.count {
            if haystack[i] == needle[0], haystack[i..<i + needle.count].elementsEqual(needle) { return i }
            i += 1
        }
        return nil
    }

    /// The byte offset in `text` where each token of `ids` (= tokenizer.encode(text)) starts:
    /// each token's bytes are matched in turn, past bytes the vocabulary lacks (which encode
    /// drops, and whitespace after an rstrip added token) and the space a SentencePiece tokenizer
    /// puts before text. nil when the tokens do not spell the text.
    static func tokenStarts(_ ids: [Int], of text: String, _ tokenizer: Tokenizer) -> [Int]? {
        let bytes = Array(text.utf8)
        var missing = [Bool](repeating: false, count: 256)
        for b in tokenizer.missingBytes { missing[Int(b)] = true }
        // The whitespace an rstrip added token drops (Phi-3's GGUFs) is in no token either.
        if tokenizer.addedTokens.contains(where: \.rstrip) { for b in [0x20, 0x09, 0x0A, 0x0B, 0x0C, 0x0D] { missing[b] = true } }
        var starts: [Int] = [], at = 0
        starts.reserveCapacity(ids.count)
        for id in ids {
            guard tokenizer.token(of: id) != nil else { return nil }
            var spelled = tokenizer.bytes(of: id)
            // SentencePiece's add_space_prefix: a space the text lacks, before a piece of text.
            if tokenizer.addsSpacePrefix, spelled.first == 0x20, !bytes[at...].starts(with: spelled) { spelled = spelled.dropFirst() }
            while spelled.isEmpty, at < bytes.count, missing[Int(bytes[at])] { at += 1 }  // a lone prefix starts where its text does
            while at < bytes.count, missing[Int(bytes[at])], !bytes[at...].starts(with: spelled) { at += 1 }
            guard bytes[at...].starts(with: spelled) else { return nil }
            starts.append(at)
            at += spelled.count
        }
        return starts
    }

    /// `s` without its prefix `p`, compared byte for byte; nil when `p` is not a prefix.
    static func remainder(of s: String, after p: String) -> String? {
        s.utf8.starts(with: p.utf8) ? String(decoding: s.utf8.dropFirst(p.utf8.count), as: UTF8.self) : nil
    }
}
