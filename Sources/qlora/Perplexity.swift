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

            Example:
              qlora perplexity --model models/SmolLM2-135M-Instruct.Q4_1.gguf --text /usr/share/common-licenses/GPL-3 --ctx 256
              qlora perplexity --model smol-nf4 --adapter runs/smol/lora_final --text /usr/share/common-licenses/GPL-3 --ctx 256
            """
    )

    @Option(help: "A GGUF file or a quantized model folder.") var model: String
    @Option(help: "A LoRA adapter directory (PEFT layout) applied to the model: the figure its merge should give.") var adapter: String?
    @Option(help: "A UTF-8 text file.") var text: String
    @Option(help: "Tokens per window.") var ctx = 512

    func validate() throws {
        guard ctx >= 4 else { throw ValidationError("--ctx must be at least 4, got \(ctx)") }
        guard FileManager.default.fileExists(atPath: model) else { throw ValidationError("\(model): no such file or folder") }
        guard FileManager.default.fileExists(atPath: text) else { throw ValidationError("\(text): no such file") }
    }

    func run() throws {
        let lm = try adapter.map { try LanguageModel(path: model).withAdapter($0) } ?? LanguageModel(path: model)
        guard ctx <= lm.model.config.maxPositionEmbeddings else {
            throw ValidationError("--ctx \(ctx) is longer than the model's context, \(lm.model.config.maxPositionEmbeddings)")
        }
        guard let data = FileManager.default.contents(atPath: text) else { throw ValidationError("\(text): cannot read") }
        let tokens = lm.tokenizer.encode(String(decoding: data, as: UTF8.self), addSpecialTokens: lm.addsBOS)
        let evaluator = PerplexityEvaluator(model: lm.model, context: ctx, bos: lm.addsBOS ? lm.tokenizer.bos : nil)
        print("\(tokens.count) tokens, \(evaluator.windows(of: tokens)) windows of \(ctx), BOS \(lm.addsBOS ? "first" : "not added")")
        let last = try evaluator.run(tokens: tokens) { p in
            print(String(format: "[%d/%d] PPL = %.4f ± %.5f", p.window, p.windows, p.estimate.perplexity, p.estimate.error))
        }
        print(String(format: "PPL = %.4f ± %.5f over %d scored tokens", last.estimate.perplexity, last.estimate.error, last.estimate.count))
        FileHandle.standardError.write(Data(String(format: "%d tokens in %.1f s, %.1f tokens/s\n", last.tokensRun, last.seconds,
                                                   Double(last.tokensRun) / last.seconds).utf8))
    }
}
