import ArgumentParser
import Foundation
import QLoRA

/// `--adapter [NAME=]DIR` (repeatable), `--each`, `--include-base`: which adapters generate and
/// perplexity run over one loaded base, stacked or one at a time.
struct AdapterOptions: ParsableArguments {
    @Option(name: .customLong("adapter"), parsing: .singleValue,
            help: ArgumentHelp("A LoRA adapter directory (PEFT layout), as DIR or NAME=DIR; repeatable: all are applied together unless --each.",
                               valueName: "[NAME=]DIR"))
    var adapters: [String] = []
    @Flag(help: "Run once per --adapter (swapped over the same loaded base) instead of once with all of them stacked.")
    var each = false
    @Flag(help: "With --each, also run the base model without adapters, first.") var includeBase = false

    func validate() throws {
        if each && adapters.isEmpty { throw ValidationError("--each needs at least one --adapter") }
        if includeBase && !each { throw ValidationError("--include-base goes with --each") }
        for spec in specs where !FileManager.default.fileExists(atPath: spec.directory) {
            throw ValidationError("--adapter \(spec.directory): no such directory")
        }
    }

    /// NAME=DIR when the text before the first "=" is a plain name (no "/") and the whole text
    /// is not itself a directory; else DIR, named by its last component.
    var specs: [(name: String?, directory: String)] {
        adapters.map { text in
            if let eq = text.firstIndex(of: "="), !text[..<eq].isEmpty, !text[..<eq].contains("/"),
               !FileManager.default.fileExists(atPath: text) {
                return (String(text[..<eq]), String(text[text.index(after: eq)...]))
            }
            return (nil, text)
        }
    }

    /// The runs asked for over `lm` (whose model must be the bare base): one with every adapter
    /// stacked, or with --each one per adapter (the base first with --include-base). Every
    /// adapter is read once; the runs share the base's weights.
    func runs(_ lm: LanguageModel) throws -> [(label: String, model: LanguageModel)] {
        try models(lm.model).map { ($0.label, $0.model === lm.model ? lm : lm.with(model: $0.model)) }
    }

    /// The same runs over a bare base without a tokenizer.
    func models(_ base: DecoderModel) throws -> [(label: String, model: DecoderModel)] {
        guard !adapters.isEmpty else { return [("base", base)] }
        let set = AdapterSet(base: base)
        let names = try specs.map { try set.load($0.directory, name: $0.name) }
        if !each { return [(names.joined(separator: " + "), try set.model(active: names))] }
        return (includeBase ? [("base", base)] : []) + (try names.map { ($0, try set.model(active: [$0])) })
    }
}
