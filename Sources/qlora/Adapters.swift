import ArgumentParser
import Foundation
import QLoRA

struct Adapters: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Look into LoRA adapter directories and combine them.",
        subcommands: [AdaptersInfo.self, AdaptersCombine.self]
    )
}

struct AdaptersInfo: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "info",
        abstract: "An adapter's configuration, and ‖ΔW‖ = ‖s·B·A‖ (Frobenius) of every adapted linear.",
        discussion: """
            The adapter is read and checked against --model as generate reads it (names, targets, \
            ranks, finite values). ‖ΔW‖ comes from the small QR core of B and Aᵀ, without \
            forming ΔW; one line per block. Trained RMSNorms (modules_to_save) are counted.

            Example:
              qlora adapters info runs/smol/lora_final
            """
    )

    @Option(help: "The base the adapter belongs to: a GGUF file or a quantized model folder.")
    var model = "models/SmolLM2-135M-Instruct.Q4_1.gguf"
    @Argument(help: "An adapter directory (PEFT layout).") var directory: String

    func run() throws {
        let set = AdapterSet(base: try DecoderModel(path: model))
        let name = try set.load(directory)
        let lora = try set.adapters(name)
        let c = lora.config
        print("\(directory): \(c.useDoRA ? "DoRA (a magnitude per output row; ΔW below is s·B·A alone)" : "LoRA") r \(c.rank), alpha \(c.alpha), scale \(c.scale)\(c.useRSLoRA ? " (rsLoRA: alpha/√r)" : " (alpha/r)"), "
              + "dropout \(c.dropout)")
        let saved = try AdapterFiles.savedNorms(of: lora, in: directory)
        let count = lora.parameters.filter { $0.name.contains(".lora_") }.reduce(0) { $0 + $1.count } + saved.reduce(0) { $0 + $1.count }
        print("targets \(c.targets)\(c.layerIndices.map { " in blocks \($0)" } ?? ""); \(lora.adapters.count) linears adapted; "
              + "\(ModelAdapters.grouped(count)) parameters\(saved.isEmpty ? "" : " (with trained norms)")")
        if !saved.isEmpty {
            print("trained RMSNorms (modules_to_save), replacing the base's: \(saved.count) of \(2 * lora.layers.count + 1)")
        }
        let modules = AdapterCombination.deltaNorms(of: lora)
        AdaptersCombine.printPerBlock(modules) { $0.norm }
        let total = modules.reduce(0) { $0 + $1.norm * $1.norm }.squareRoot()
        print(String(format: "‖ΔW‖ over all linears: %.6g", total))
    }
}

struct AdaptersCombine: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "combine",
        abstract: "A weighted combination of LoRA adapters as one adapter: Σ w_i·ΔW_i, re-factored to rank r by truncated SVD, or concatenated.",
        discussion: """
            For every linear that any input adapts, ΔW = Σ w_i·s_i·B_i·A_i (an input without \
            that linear adds nothing). By default it is re-factored to rank --rank (default: the \
            largest input rank) by a truncated SVD computed without forming ΔW: thin QR of the \
            stacked B's and A's, then a Float64 Jacobi SVD of the small core; the error of that, \
            ‖ΔW − B'·A'‖ / ‖ΔW‖ (Frobenius, exact: the dropped singular values), is printed per \
            linear and over all of them. --concat keeps every input's factors side by side: \
            exact, rank Σ r_i.

            The output is a PEFT-layout adapter with lora_alpha = r and no rsLoRA, so its scale \
            is 1 (B' = U_r·√Σ_r, A' = √Σ_r·V_rᵀ); dropout from the first input; target_modules \
            the union of the inputs'. PEFT loads it (PeftModel.from_pretrained), and its ΔW \
            agrees with PEFT's add_weighted_adapter(..., combination_type="svd"). Inputs must \
            belong to --model; adapters that train norms cannot be combined.

            Examples:
              qlora adapters combine runs/a/lora_final runs/b/lora_final --weights 0.7 0.3 -o runs/ab
              qlora adapters combine runs/a/lora_final runs/b/lora_final --weights 1 1 --concat -o runs/ab-exact
              qlora adapters combine runs/a/lora_final runs/b/lora_final --weights 1 --weights=-1 --rank 8 -o runs/a-minus-b
            """
    )

    @Option(help: "The base the adapters belong to: a GGUF file or a quantized model folder.")
    var model = "models/SmolLM2-135M-Instruct.Q4_1.gguf"
    @Argument(help: "Adapter directories (PEFT layout).") var inputs: [String]
    @Option(parsing: .upToNextOption, help: "One weight per adapter (default: 1 each); a negative one as --weights=-0.5.")
    var weights: [Double] = []
    @Option(help: "Rank of the output (default: the largest input rank).") var rank: Int?
    @Flag(help: "Concatenate the factors instead: exact, rank Σ r_i.") var concat = false
    @Option(name: [.short, .customLong("output")], help: "Output adapter directory.") var output: String
    @Flag(help: "Replace the output directory if it exists.") var overwrite = false

    func validate() throws {
        guard !inputs.isEmpty else { throw ValidationError("name at least one adapter directory") }
        guard weights.isEmpty || weights.count == inputs.count else {
            throw ValidationError("--weights has \(weights.count) values for \(inputs.count) adapters")
        }
        guard weights.allSatisfy(\.isFinite) else { throw ValidationError("--weights must be finite numbers") }
        if concat && rank != nil { throw ValidationError("--rank and --concat exclude each other") }
        if let rank, rank <= 0 { throw ValidationError("--rank must be positive, got \(rank)") }
        if FileManager.default.fileExists(atPath: output) && !overwrite {
            throw ValidationError("\(output) exists; pass --overwrite to replace it")
        }
    }

    func run() throws {
        let set = AdapterSet(base: try DecoderModel(path: model))
        let names = try inputs.map { try set.load($0, name: $0) }
        let weights = self.weights.isEmpty ? [Double](repeating: 1, count: inputs.count) : self.weights
        let list = try zip(names, weights).map { (name: $0, adapters: try set.adapters($0), weight: $1) }
        let method: AdapterCombination.Method = concat ? .concat : .svd(rank: rank ?? list.map(\.adapters.config.rank).max()!)
        let result = try AdapterCombination.combine(list, base: set.base, method: method)
        for (n, a, w) in list { print("\(n): r \(a.config.rank), scale \(a.config.scale), weight \(w), \(a.adapters.count) linears") }
        print("output: r \(result.adapters.config.rank), alpha \(result.adapters.config.alpha) (scale 1), \(result.adapters.adapters.count) linears"
              + (concat ? " (concatenated: exact)" : ""))
        if !concat {
            print("relative error ‖ΔW − B'A'‖ / ‖ΔW‖ per linear:")
            Self.printPerBlock(result.modules) { $0.relativeError }
            let worst = result.modules.max { $0.relativeError < $1.relativeError }!
            print(String(format: "relative error over all linears: %.6f (worst %.6f at block %d %@)", result.relativeError,
                         worst.relativeError, worst.layer, worst.linear.name))
        }
        try AdapterFiles.save(result.adapters, to: output, baseModel: model)
        print("wrote \(output)")
    }

    /// One line per block: each adapted linear with `value` of it.
    static func printPerBlock(_ modules: [AdapterCombination.Module], _ value: (AdapterCombination.Module) -> Double) {
        let known = ModelFamily.all.flatMap(\.linears)
        func order(_ m: AdapterCombination.Module) -> Int { known.firstIndex(of: m.linear) ?? known.count }
        for layer in Array(Set(modules.map(\.layer))).sorted() {
            let entries = modules.filter { $0.layer == layer }
                .sorted { order($0) < order($1) }
                .map { "\($0.linear.name) " + String(format: "%.4g", value($0)) }
            print("  block \(layer): " + entries.joined(separator: "  "))
        }
    }
}
