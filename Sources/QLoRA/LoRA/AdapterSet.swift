import Foundation

/// Named LoRA adapters loaded over one frozen base, PEFT's `load_adapter` / `set_adapter` with
/// several active adapters:
///
///   load(dir, name:)      reads and checks a PEFT-layout directory against the base (AdapterFiles)
///   model(active: [a, b]) the base with a's and b's deltas summed: y = W·x + Σ_i s_i·B_i·A_i·x
///   model(active: [])     the base itself
///
/// Loading never reads or copies the base again, and every model handed out shares its 4-bit
/// weights: switching the active set costs a few pointers.
public final class AdapterSet {
    public let base: DecoderModel
    /// The loaded adapters' names, in load order.
    public private(set) var names: [String] = []
    private var loaded: [String: (directory: String, adapters: ModelAdapters)] = [:]

    public init(base: DecoderModel) {
        precondition(base.adapters == nil, "an AdapterSet's base is the frozen model, without adapters")
        self.base = base
    }

    /// The name `--adapter DIR` gives an adapter: the directory's last component.
    public static func defaultName(of directory: String) -> String {
        (((directory as NSString).standardizingPath) as NSString).lastPathComponent
    }

    /// Loads the adapter of `directory` as `name` (default: `defaultName(of:)`). A name already
    /// loaded is refused; so is an adapter that does not fit the base (the error names the file
    /// and the tensor). Returns the name.
    @discardableResult
    public func load(_ directory: String, name: String? = nil) throws -> String {
        let name = name ?? Self.defaultName(of: directory)
        if let other = loaded[name] { throw AdapterStackError.duplicateName(name, first: other.directory, second: directory) }
        let (config, norms) = try AdapterFiles.config(in: directory)
        let lora: ModelAdapters
        let scoreHead = try AdapterFiles.hasScoreHead(in: directory)
        do {
            lora = try ModelAdapters(model: base, config: config, trainNorms: norms, scoreHead: scoreHead, seed: 0)
        } catch {
            throw AdapterError.bad(directory + "/" + AdapterFiles.configFile, error.description)
        }
        try AdapterFiles.load(into: lora, from: directory)
        loaded[name] = (directory, lora)
        names.append(name)
        return name
    }

    /// The adapters loaded as `name`.
    public func adapters(_ name: String) throws(AdapterStackError) -> ModelAdapters {
        guard let a = loaded[name] else { throw .unknownName(name, loaded: names) }
        return a.adapters
    }

    /// The directory `name` was loaded from.
    public func directory(_ name: String) -> String? { loaded[name]?.directory }

    /// The base with the adapters `active` applied together, in that order (the first may
    /// carry trained norms); [] is the base. Shares the base's weights and the adapters' values.
    public func model(active: [String]) throws(AdapterStackError) -> DecoderModel {
        guard let first = active.first else { return base }
        var seen = Set<String>()
        for n in active where !seen.insert(n).inserted { throw .listedTwice(n) }
        let rest = try active.dropFirst().map { n throws(AdapterStackError) in (name: n, adapters: try adapters(n)) }
        let lora = try adapters(first)
        return DecoderModel(base, adapters: rest.isEmpty ? lora : try lora.stacking(rest))
    }
}
