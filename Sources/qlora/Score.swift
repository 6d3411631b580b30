import ArgumentParser
import Foundation
import QLoRA

struct Score: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Score preference pairs or responses with a reward model (or a DPO adapter's implicit reward).",
        discussion: """
            With a reward adapter (qlora train --objective reward; PEFT task_type SEQ_CLS, a \
            `score` head): each sequence's reward is the score head on its last token, after \
            the final norm, as transformers' *ForSequenceClassification reads it.
              pairs   rows {"prompt","chosen","rejected"} (as qlora train takes them): prints \
                      the share of pairs with r_chosen > r_rejected (accuracy), the mean margin \
                      and the mean rewards
              rows    {"prompt","completion"} (strings or message lists), {"messages":[…]} or \
                      {"text"}: prints one JSON line per row, {"line": N, "score": r}

            With an adapter that has no score head (a DPO, ORPO or SimPO run's), pairs are \
            ranked by DPO's implicit reward, the log-ratio of adapter to base: \
            (log p_θ(chosen) − log p_base(chosen)) − (same for rejected) > 0.

            Examples:
              qlora score --adapter runs/rm --data data/demo-preferences/val.jsonl
              qlora score --adapter runs/rm/lora_best --data replies.jsonl > scores.jsonl
              qlora score --adapter runs/dpo --data data/demo-preferences/val.jsonl --json
            """
    )

    @Option(help: "A GGUF file or a quantized model folder.") var model = "models/SmolLM2-135M-Instruct.Q4_1.gguf"
    @Option(help: "The adapter: a directory in PEFT layout, or a run directory (its lora_final).") var adapter: String
    @Flag(help: "The EMA weights (lora_final_ema, lora_best_ema).") var ema = false
    @Option(help: "JSON Lines: preference pairs, or rows to score one by one.") var data: String
    @Option(help: "Longest sequence in tokens; longer pairs and rows are skipped and counted.") var maxLen = 1024
    @Option(help: "Pairs (or rows) per forward pass.") var batchSize = 8
    @Option(help: QuantizedModel.KQuantTarget.help) var kQuants: QuantizedModel.KQuantTarget = .asIs
    @Option(help: ComputeDTypeChoice.help(default: .fp32)) var computeDtype = ComputeDTypeChoice.fp32
    @Option(help: chatTemplateHelp)
    var chatTemplate: ChatTemplate.Family?
    @Flag(help: "Pairs: print the summary as one JSON object.") var json = false

    func validate() throws {
        guard maxLen > 1, batchSize > 0 else { throw ValidationError("--max-len must be at least 2 and --batch-size positive") }
        guard FileManager.default.fileExists(atPath: model) else { throw ValidationError("\(model): no such file or folder") }
        guard FileManager.default.fileExists(atPath: data) else { throw ValidationError("--data \(data): no such file") }
    }

    func run() throws {
        let lm = try LanguageModel(path: model, kQuants: kQuants)
        lm.model.computeDType = try computeDtype.resolved()
        let directory = try AdapterFiles.resolve(adapter, ema: ema)
        let set = AdapterSet(base: lm.model)
        let adapters = try set.adapters(try set.load(directory))
        let trainer = Trainer(model: lm.model, lora: adapters)
        let template = lm.dataChatTemplate(chatTemplate)
        if try Self.holdsPairs(data) {
            try scorePairs(lm: lm, trainer: trainer, template: template, directory: directory)
        } else {
            guard adapters.scoreHead != nil else {
                throw ValidationError("\(directory) has no score head (not a reward model): it can rank pairs {prompt, chosen, rejected}, not score rows")
            }
            try scoreRows(lm: lm, trainer: trainer, template: template)
        }
    }

    /// Whether the first non-blank row has "chosen".
    static func holdsPairs(_ path: String) throws -> Bool {
        guard let text = FileManager.default.contents(atPath: path).flatMap({ String(data: $0, encoding: .utf8) }) else {
            throw ValidationError("\(path): unreadable")
        }
        guard let first = text.split(separator: "\n").first(where: { !$0.allSatisfy(\.isWhitespace) }) else {
            throw ValidationError("\(path): no rows")
        }
        let object = try? JSONSerialization.jsonObject(with: Data(first.utf8)) as? [String: Any]
        return object?["chosen"] != nil
    }

    func scorePairs(lm: LanguageModel, trainer: Trainer, template: ChatTemplate?, directory: String) throws {
        let pairs = try PreferenceDataSet.load(path: data, tokenizer: lm.tokenizer, chatTemplate: template, maxLength: maxLen)
        let reward = trainer.lora.scoreHead != nil
        let base = reward ? nil : Trainer(model: lm.model, lora: .disabled(for: lm.model))
        var right = 0, margin = 0.0, chosen = 0.0, rejected = 0.0
        let started = Date()
        for b in pairs.batches(pairsPerBatch: batchSize) {
            let batch = TokenBatch(b)
            let s: [Double]
            if reward {
                s = try RewardObjective.scores(batch, trainer: trainer)
            } else {
                let policy = try PreferenceObjective.completionLogProbs(batch, trainer: trainer)
                let ref = try PreferenceObjective.completionLogProbs(batch, trainer: base!)
                s = zip(policy, ref).map { $0 - $1 }
            }
            let P = b.pairCount
            for p in 0..<P {
                right += s[p] > s[P + p] ? 1 : 0
                margin += s[p] - s[P + p]
                chosen += s[p]
                rejected += s[P + p]
            }
        }
        let n = Double(pairs.pairs.count)
        let summary: [String: Any] = [
            "pairs": pairs.pairs.count, "accuracy": Double(right) / n, "margin": margin / n, "chosen": chosen / n, "rejected": rejected / n,
            "dropped_too_long": pairs.tooLong, "scored_by": reward ? "score head" : "implicit reward log(p_adapter / p_base)",
            "adapter": directory, "seconds": Date().timeIntervalSince(started),
        ]
        if json {
            let out = try JSONSerialization.data(withJSONObject: summary, options: [.sortedKeys, .withoutEscapingSlashes])
            print(String(decoding: out, as: UTF8.self))
        } else {
            print(String(format: "%d pairs (%d longer than --max-len dropped), scored by the %@ of %@", pairs.pairs.count, pairs.tooLong,
                         reward ? "score head" : "implicit reward (log-ratio to the base)", directory))
            print(String(format: "accuracy %.4f (%d of %d chosen above rejected); mean margin %.4f; mean chosen %.4f, rejected %.4f",
                         Double(right) / n, right, pairs.pairs.count, margin / n, chosen / n, rejected / n))
        }
    }

    /// One row of a file to score: the sequence's ids, or why it is bad.
    static func sequence(_ object: [String: Any], lm: LanguageModel, template: ChatTemplate?) throws -> [Int] {
        func tokenize(_ prompt: Any, _ completion: Any) throws -> [Int] {
            // A pair whose both sides are the completion: tokenized as training tokenizes a side.
            let (row, _) = try PreferenceDataSet.jsonRow(ArraySlice(try JSONSerialization.data(withJSONObject: [
                "prompt": prompt, "chosen": completion, "rejected": completion,
            ])), allowEqualSides: true)
            let pair = try row.tokenize(tokenizer: lm.tokenizer, chatTemplate: template)
            return pair.inputIds(.chosen)
        }
        if let p = object["prompt"], let c = object["completion"] ?? object["response"] { return try tokenize(p, c) }
        if let m = object["messages"] as? [[String: Any]], m.count > 1 { return try tokenize(Array(m.dropLast()), [m.last!]) }
        if let t = object["text"] as? String, !t.isEmpty {
            var ids = lm.tokenizer.prefix + lm.tokenizer.encode(t)
            if let eos = lm.tokenizer.eos, ids.last != eos { ids.append(eos) }
            return ids
        }
        throw ValidationError("expected {\"prompt\", \"completion\"}, {\"messages\": [… at least 2]} or {\"text\"}")
    }

    func scoreRows(lm: LanguageModel, trainer: Trainer, template: ChatTemplate?) throws {
        let text = String(decoding: FileManager.default.contents(atPath: data) ?? Data(), as: UTF8.self)
        var rows: [(line: Int, ids: [Int])] = []
        var skipped = 0
        for (i, line) in text.split(separator: "\n", omittingEmptySubsequences: false).enumerated() where !line.allSatisfy(\.isWhitespace) {
            guard let object = try? JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any] else {
                throw ValidationError("\(data):\(i + 1): not a JSON object")
            }
            let ids: [Int]
            do { ids = try Self.sequence(object, lm: lm, template: template) } catch { throw ValidationError("\(data):\(i + 1): \(error)") }
            if ids.count > maxLen { skipped += 1; continue }
            rows.append((i + 1, ids))
        }
        for start in stride(from: 0, to: rows.count, by: batchSize) {
            let chunk = Array(rows[start..<min(rows.count, start + batchSize)])
            let T = chunk.map(\.ids.count).max()!, pad = lm.tokenizer.eos ?? 0
            var ids = [Int32](repeating: Int32(pad), count: chunk.count * T)
            for (b, r) in chunk.enumerated() { for (t, id) in r.ids.enumerated() { ids[b * T + t] = Int32(id) } }
            let batch = TokenBatch(inputIds: ids, labels: [Int32](repeating: -100, count: ids.count), sequences: chunk.count, length: T,
                                   lengths: chunk.map(\.ids.count))
            for (r, s) in zip(chunk, try RewardObjective.scores(batch, trainer: trainer)) {
                print(String(format: "{\"line\": %d, \"score\": %.6f}", r.line, s))
            }
        }
        if skipped > 0 { FileHandle.standardError.write(Data("\(skipped) rows longer than --max-len \(maxLen) skipped\n".utf8)) }
    }
}
