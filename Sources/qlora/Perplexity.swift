import ArgumentParser
import Foundation
import QLoRA

struct Perplexity: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Perplexity of a model on a text file, computed as llama.cpp's llama-perplexity does.",
        discussion: """
            The file is tokenized whole and cut into non-overlapping windows of --ctx tokens
            (BOS first in each when the tokenizer adds one); each window runs from an empty
            context and only its second half is scored, each token from all the tokens before it
            in the window. ± is the standard error of the mean NLL carried through exp, as
            llama.cpp prints it, so figures compare with llama.cpp's on the same file and --ctx.

            Adapters: --adapter DIR or NAME=DIR, repeatable, applied together (deltas summed); \
            with --each one perplexity per adapter, each swapped in over the same loaded base \
            (and the base first with --include-base), and a table of them at the end.

            Examples:
              qlora perplexity --model models/SmolLM2-135M-Instruct.Q4_1.gguf --text /usr/share/common-licenses/GPL-3 --ctx 256
              qlora perplexity --model models/gemma-3-270m.Q4_K_M.gguf --text /usr/share/common-licenses/GPL-3 --ctx 256 --chunks 8
              qlora perplexity --model models/SmolLM2-135M-Instruct.Q4_1.gguf --text data.txt --adapter runs/a/lora_final --adapter runs/b/lora_final
              qlora perplexity --model models/SmolLM2-135M-Instruct.Q4_1.gguf --text data.txt --adapter a=runs/a/lora_final --adapter b=runs/b/lora_final --each --include-base
            """
    )

    @Option(help: "A GGUF file or a quantized model folder.") var model: String
    @Option(help: "A UTF-8 text file.") var text: String
    @Option(help: "Tokens per window.") var ctx = 512
    @Option(help: "Score only the first N windows (llama-perplexity's --chunks).") var chunks: Int?
    @OptionGroup var adapterOptions: AdapterOptions
    @Option(help: QuantizedModel.KQuantTarget.help)
    var kQuants: QuantizedModel.KQuantTarget = .asIs
    @Option(help: ComputeDTypeChoice.help(default: .fp32)) var computeDtype = ComputeDTypeChoice.fp32
    @Option(help: .hidden) var logitsOut: String?  // --text holds token ids: see writeLogits

    func validate() throws {
        guard ctx >= 4 else { throw ValidationError("--ctx must be at least 4, got \(ctx)") }
        if let chunks, chunks < 1 { throw ValidationError("--chunks must be at least 1, got \(chunks)") }
        guard FileManager.default.fileExists(atPath: model) else { throw ValidationError("\(model): no such file or folder") }
        guard FileManager.default.fileExists(atPath: text) else { throw ValidationError("\(text): no such file") }
    }

    func run() throws {
        if let logitsOut { return try writeLogits(to: logitsOut) }
        let base = try LanguageModel(path: model, kQuants: kQuants)
        base.model.computeDType = try computeDtype.resolved()
        guard ctx <= base.model.config.maxPositionEmbeddings else {
            throw ValidationError("--ctx \(ctx) is longer than the model's context, \(base.model.config.maxPositionEmbeddings)")
        }
        guard let data = FileManager.default.contents(atPath: text) else { throw ValidationError("\(text): cannot read") }
        var tokens = base.tokenizer.encode(String(decoding: data, as: UTF8.self), addSpecialTokens: base.addsBOS)
        if let chunks { tokens = Array(tokens.prefix(chunks * ctx)) }
        let runs = try adapterOptions.runs(base)
        var table: [(label: String, estimate: PerplexityEvaluator.Estimate)] = []
        for (label, lm) in runs {
            let evaluator = PerplexityEvaluator(model: lm.model, context: ctx, bos: lm.addsBOS ? lm.tokenizer.bos : nil)
            if runs.count > 1 || adapterOptions.each { print("=== \(label) ===") }
            print("\(tokens.count) tokens, \(evaluator.windows(of: tokens)) windows of \(ctx), BOS \(lm.addsBOS ? "first" : "not added")")
            let last = try evaluator.run(tokens: tokens) { p in
                print(String(format: "[%d/%d] PPL = %.4f ± %.5f", p.window, p.windows, p.estimate.perplexity, p.estimate.error))
            }
            print(String(format: "PPL = %.4f ± %.5f over %d scored tokens", last.estimate.perplexity, last.estimate.error, last.estimate.count))
            FileHandle.standardError.write(Data(String(format: "%d tokens in %.1f s, %.1f tokens/s\n", last.tokensRun, last.seconds,
                                                       Double(last.tokensRun) / last.seconds).utf8))
            table.append((label, last.estimate))
        }
        if table.count > 1 {
            let width = max(7, table.map(\.label.count).max()!)
            print("\n" + "adapter".padding(toLength: width, withPad: " ", startingAt: 0) + "  PPL")
            for row in table {
                print(row.label.padding(toLength: width, withPad: " ", startingAt: 0)
                      + String(format: "  %.4f ± %.5f", row.estimate.perplexity, row.estimate.error))
            }
        }
    }

    /// Hidden, for checks against transformers/PEFT (tools/check_family_interop.py): --text
    /// holds token ids (decimal, separated by spaces, commas or newlines), so no tokenizer is
    /// needed; one forward over all of them (the base with --adapter's stacked, no --each)
    /// writes the logits of every position, [T, V] little-endian fp32, row-major, to FILE.
    func writeLogits(to file: String) throws {
        guard !adapterOptions.each else { throw ValidationError("--logits-out takes one run: no --each") }
        guard let data = FileManager.default.contents(atPath: text) else { throw ValidationError("\(text): cannot read") }
        let fields = String(decoding: data, as: UTF8.self).split(whereSeparator: { $0 == "," || $0.isWhitespace })
        let ids = try fields.map { f in
            guard let id = Int(f), id >= 0 else { throw ValidationError("\(text): \(f) is not a token id") }
            return id
        }
        let base = try DecoderModel(QuantizedModel(path: model, kQuants: kQuants))
        guard !ids.isEmpty, ids.count <= base.config.maxPositionEmbeddings, ids.allSatisfy({ $0 < base.config.vocabSize }) else {
            throw ValidationError("\(text): need 1 to \(base.config.maxPositionEmbeddings) ids below \(base.config.vocabSize)")
        }
        let (label, lm) = try adapterOptions.models(base)[0]
        let logits = try lm.forward(tokens: ids, logits: .all)
        try logits.withUnsafeBytes { Data($0) }.write(to: URL(fileURLWithPath: file))
        print("\(label): logits [\(ids.count), \(logits.count / ids.count)] written to \(file)")
    }
}
