import ArgumentParser
import Foundation
import QLoRA

extension ChatTemplate.Family: ExpressibleByArgument {}

/// --chat-template's help, shared by the commands that render conversations.
let chatTemplateHelp = ArgumentHelp(
    "Built-in chat format for a model without a chat template: \(ChatTemplate.Family.allCases.map(\.rawValue).joined(separator: ", ")) (default: the model's own Jinja template).")

extension LanguageModel {
    /// The template for data rows: nil when the model has none; one that does not load (a
    /// Jinja construct the interpreter lacks) is reported on stderr and left out, so that text
    /// rows still train and messages rows say they need --chat-template.
    func dataChatTemplate(_ family: ChatTemplate.Family?) -> ChatTemplate? {
        do { return try chatTemplate(family) } catch {
            if case .missing = error { return nil }
            FileHandle.standardError.write(Data("warning: \(error)\n".utf8))
            return nil
        }
    }
}

struct Generate: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Generate text from a model, streamed to stdout as it comes.",
        discussion: """
            --prompt runs the text as it is (with BOS when the tokenizer adds one); --chat wraps a
            user message (and --system) in the model's own chat template, rendered as Jinja the way
            transformers renders it; --chat-template names a built-in format for a model without one.
            Generation stops at EOS, at the template's end-of-turn token, at a --stop string or
            after --max-tokens. Sampling: repetition penalty, then temperature (0 = greedy),
            top-k, top-p, min-p, in that order, as transformers applies them. Tokens/s for the
            prompt and for generation go to stderr at the end.

            Adapters (PEFT layout, e.g. a run's lora_best_ema): --adapter DIR or NAME=DIR, \
            repeatable. Several are applied together, their deltas summed \
            (y = W·x + Σ s_i·B_i·A_i·x, PEFT's several active adapters); with --each the prompt \
            runs once per adapter, each swapped in over the same loaded base, under a header \
            "=== NAME ===" (and first for the base with --include-base). Use --seed to compare \
            samples, or --temperature 0.

            Examples:
              qlora generate --model models/SmolLM2-135M-Instruct.Q4_1.gguf --chat "What is the capital of France?" --temperature 0
              qlora generate --model smol-nf4 --prompt "Once upon a time" --max-tokens 64 --seed 7 --stop "\\n\\n"
              qlora generate --adapter runs/chat/lora_final --adapter style=runs/style/lora_final --chat "Hi"
              qlora generate --adapter runs/a/lora_final --adapter runs/b/lora_final --each --include-base --chat "Hi" --temperature 0
            """
    )

    @Option(help: "A GGUF file or a quantized model folder.") var model = "models/SmolLM2-135M-Instruct.Q4_1.gguf"
    @OptionGroup var adapterOptions: AdapterOptions
    @Option(help: QuantizedModel.KQuantTarget.help)
    var kQuants: QuantizedModel.KQuantTarget = .asIs
    @Option(help: ComputeDTypeChoice.help(default: .auto)) var computeDtype = ComputeDTypeChoice.auto
    @Option(help: "Text to continue, as it is.") var prompt: String?
    @Option(help: "A user message, wrapped in the chat template.") var chat: String?
    @Option(help: "System prompt for --chat (default: the template's own, if it has one).") var system: String?
    @Option(help: chatTemplateHelp)
    var chatTemplate: ChatTemplate.Family?
    @Option(help: "Most tokens to generate.") var maxTokens = 256
    @Option(help: "Temperature; 0 is greedy.") var temperature: Float = 0.8
    @Option(help: "Keep the k most likely tokens; 0 disables.") var topK = 40
    @Option(help: "Keep the most likely tokens up to this probability mass; 1 disables.") var topP: Float = 0.95
    @Option(help: "Drop tokens less likely than this fraction of the most likely; 0 disables.") var minP: Float = 0.05
    @Option(help: "Repetition penalty on every token seen (transformers' rule); 1 disables.") var repeatPenalty: Float = 1
    @Option(help: "Seed of the sampler (default: from the clock).") var seed: UInt64?
    @Option(parsing: .singleValue, help: "Stop when the output holds this string (repeatable); it is not printed.") var stop: [String] = []

    func validate() throws {
        guard (prompt == nil) != (chat == nil) else { throw ValidationError("pass exactly one of --prompt and --chat") }
        if system != nil && chat == nil { throw ValidationError("--system goes with --chat") }
        guard maxTokens > 0 else { throw ValidationError("--max-tokens must be positive, got \(maxTokens)") }
        guard temperature >= 0, temperature.isFinite else { throw ValidationError("--temperature must be ≥ 0, got \(temperature)") }
        guard topK >= 0 else { throw ValidationError("--top-k must be ≥ 0, got \(topK)") }
        guard topP > 0, topP <= 1 else { throw ValidationError("--top-p must be in (0, 1], got \(topP)") }
        guard minP >= 0, minP < 1 else { throw ValidationError("--min-p must be in [0, 1), got \(minP)") }
        guard repeatPenalty > 0, repeatPenalty.isFinite else { throw ValidationError("--repeat-penalty must be > 0, got \(repeatPenalty)") }
        guard FileManager.default.fileExists(atPath: model) else { throw ValidationError("\(model): no such file or folder") }
    }

    func run() throws {
        let base = try LanguageModel(path: model, kQuants: kQuants)
        base.model.computeDType = try computeDtype.resolved()  // the prompt's pass in bf16, decoding in int8 (ComputeDType.effective)
        let runs = try adapterOptions.runs(base)
        let seed = seed ?? UInt64(Date().timeIntervalSince1970 * 1e6)
        for (label, lm) in runs {
            if runs.count > 1 || adapterOptions.each { FileHandle.standardOutput.write(Data("=== \(label) ===\n".utf8)) }
            try generate(lm, seed: seed)
        }
    }

    func generate(_ lm: LanguageModel, seed: UInt64) throws {
        var template: ChatTemplate?
        let ids: [Int]
        if let chat {
            let t = try lm.chatTemplate(chatTemplate)
            let messages = (system.map { [ChatMessage(.system, $0)] } ?? []) + [ChatMessage(.user, chat)]
            ids = lm.tokenizer.encode(try t.render(messages, addGenerationPrompt: true))
            template = t
        } else {
            ids = lm.tokenizer.encode(prompt!, addSpecialTokens: true)
        }
        let options = TextGenerator.Options(
            maxNewTokens: maxTokens,
            sampling: Sampler.Parameters(temperature: temperature, topK: topK, topP: topP, minP: minP, repetitionPenalty: repeatPenalty),
            seed: seed, stopTokens: lm.stopTokens(template: template), stopStrings: stop)
        let report = try TextGenerator(model: lm).generate(prompt: ids, options: options) { text in
            FileHandle.standardOutput.write(Data(text.utf8))
        }
        FileHandle.standardOutput.write(Data("\n".utf8))
        let genRate = report.generationSeconds > 0 ? Double(report.generationForwards) / report.generationSeconds : 0
        FileHandle.standardError.write(Data(String(
            format: "prompt: %d tokens, %.1f tokens/s | generation: %d tokens, %.1f tokens/s | stop: %@\n",
            report.promptTokens, Double(report.promptTokens) / report.promptSeconds, report.generated.count, genRate,
            report.stopReason.rawValue).utf8))
    }
}
