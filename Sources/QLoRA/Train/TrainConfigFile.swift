import Foundation
import Yams

/// `qlora train --config run.yaml`: a YAML mapping with the keys of a run's config.json
/// (TrainingConfig's fields in snake case) and `out`, read as the flags they name:
///
///     model: models/SmolLM2-135M-Instruct.Q4_1.gguf       →  --model models/…
///     data: [data/a.jsonl, data/b.jsonl]                   →  --data data/a.jsonl --data data/b.jsonl
///     lora_r: 32                                           →  --lora-r 32
///     plan: false                                          →  --no-plan
///     packing: true                                        →  --packing
///
/// The file's flags go before the command line's, and a key whose flag the command line also
/// gives is left out: flags override the file. So a file's values are parsed and checked
/// exactly as typed flags are. A key that is no field of the config is an error naming the
/// file, its line and the key; so are `compute_dtype_in_use` and `ranks` (what a run records, not choices).
/// `frozen_adapters` (config.json's 2nd, 3rd, … `--load-lora-from`) adds `--load-lora-from`s.
public enum TrainConfigFile {
    public struct Problem: Error, CustomStringConvertible {
        public let description: String
    }

    /// Keys beside the config's fields: where the run goes.
    static let extraKeys: Set<String> = ["out"]
    /// Keys a file cannot set.
    static let recordedKeys: Set<String> = ["compute_dtype_in_use", "ranks"]

    /// TrainingConfig's fields in snake case (as config.json writes them), and whether each is a Bool.
    static var fields: [String: Bool] {
        let mirror = Mirror(reflecting: TrainingConfig(model: "", data: ""))
        var out: [String: Bool] = [:]
        for child in mirror.children {
            guard let label = child.label else { continue }
            let type = type(of: child.value)
            out[snakeCase(label)] = type == Bool.self || type == Bool?.self
        }
        return out
    }

    /// Flags whose `--no-` form exists: a false value in the file writes that form.
    static let invertible: Set<String> = ["plan", "ema_warmup", "speed_alerts"]

    /// "loraR" → "lora_r", "kQuants" → "k_quants", "beta1" → "beta1" (JSONEncoder's convertToSnakeCase).
    static func snakeCase(_ s: String) -> String {
        var out = ""
        for c in s {
            if c.isUppercase {
                if !out.isEmpty { out += "_" }
                out += c.lowercased()
            } else {
                out.append(c)
            }
        }
        return out
    }

    /// `arguments` (the program name dropped) with a `train` command's `--config FILE` expanded;
    /// other commands, and train without --config, are returned as they are.
    public static func expand(_ arguments: [String]) throws -> [String] {
        guard arguments.first == "train" else { return arguments }
        let rest = Array(arguments.dropFirst())
        var path: String?
        for (i, a) in rest.enumerated() {
            if a == "--config", i + 1 < rest.count { path = rest[i + 1] }
            if a.hasPrefix("--config=") { path = String(a.dropFirst("--config=".count)) }
        }
        guard let path else { return arguments }
        // The long options the command line gives (both forms of a --x/--no-x flag count as x).
        var given = Set<String>()
        for a in rest where a.hasPrefix("--") {
            var name = String(a.dropFirst(2).prefix { $0 != "=" })
            if name.hasPrefix("no-"), invertible.contains(String(name.dropFirst(3)).replacingOccurrences(of: "-", with: "_")) {
                name = String(name.dropFirst(3))
            }
            given.insert(name)
        }
        return ["train"] + (try flags(path: path, except: given)) + rest
    }

    /// The flags `path` stands for, leaving out those named in `except` (long names without "--").
    public static func flags(path: String, except given: Set<String> = []) throws -> [String] {
        guard let data = FileManager.default.contents(atPath: path) else {
            throw Problem(description: "cannot read \(path): " + (FileManager.default.fileExists(atPath: path) ? "permission denied or a folder" : "no such file"))
        }
        let text = String(decoding: data, as: UTF8.self)
        let root: Node?
        do { root = try Yams.compose(yaml: text) } catch { throw Problem(description: "\(path): not valid YAML: \(error)") }
        guard let root else { return [] }   // an empty file sets nothing
        guard let mapping = root.mapping else {
            throw Problem(description: "\(path):\(root.mark?.line ?? 1): the file must be a mapping of keys to values (e.g. lr: 1e-4)")
        }
        let fields = Self.fields
        var out: [String] = []
        var frozen: [String] = []
        for (keyNode, value) in mapping {
            let line = keyNode.mark?.line ?? value.mark?.line ?? 0
            let at = "\(path):\(line)"
            guard let key = keyNode.string else { throw Problem(description: "\(at): a key must be a string") }
            if recordedKeys.contains(key) {
                throw Problem(description: "\(at): '\(key)' is what a run records, not a setting (use compute_dtype)")
            }
            guard let isBool = fields[key] ?? (extraKeys.contains(key) ? false : nil) else {
                let known = (Array(fields.keys.filter { !recordedKeys.contains($0) }) + Array(extraKeys)).sorted()
                throw Problem(description: "\(at): unknown key '\(key)'\n---> HINT: the keys are config.json's: " + known.joined(separator: ", "))
            }
            if key == "frozen_adapters" {
                frozen += try strings(value, at: at, key: key)
                continue
            }
            let flag = key.replacingOccurrences(of: "_", with: "-")
            if given.contains(flag) { continue }
            if value.null != nil { continue }   // `key: null` or `key:` leaves the default
            if isBool {
                guard let b = value.bool else { throw Problem(description: "\(at): '\(key)' must be true or false") }
                if b { out.append("--" + flag) } else if invertible.contains(key) { out.append("--no-" + flag) }
                continue
            }
            for v in try strings(value, at: at, key: key) { out += ["--" + flag, v] }
        }
        if !given.contains("load-lora-from") { for f in frozen { out += ["--load-lora-from", f] } }
        return out
    }

    /// A scalar's text, or each scalar of a list.
    private static func strings(_ node: Node, at: String, key: String) throws -> [String] {
        if let s = node.scalar { return [s.string] }
        if let seq = node.sequence {
            return try seq.map { item in
                guard let s = item.scalar else { throw Problem(description: "\(at): '\(key)' must be a value or a list of values") }
                return s.string
            }
        }
        throw Problem(description: "\(at): '\(key)' must be a value or a list of values, not a mapping")
    }

    /// The resolved config as YAML a `--config` file can take back: each key of config.json in
    /// order, its value written as JSON (JSON's scalars and lists are YAML flow values).
    public static func yaml(_ config: TrainingConfig, out: String?) throws -> String {
        let encoder = JSONEncoder()
        encoder.keyEncodingStrategy = .convertToSnakeCase
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        let object = try JSONSerialization.jsonObject(with: try encoder.encode(config)) as? [String: Any] ?? [:]
        var lines: [String] = []
        for key in object.keys.sorted() where !recordedKeys.contains(key) {
            let value = try JSONSerialization.data(withJSONObject: object[key]!, options: [.fragmentsAllowed, .withoutEscapingSlashes])
            lines.append("\(key): \(String(decoding: value, as: UTF8.self))")
        }
        if let out { lines.append("out: \(String(decoding: try JSONSerialization.data(withJSONObject: out, options: [.fragmentsAllowed, .withoutEscapingSlashes]), as: UTF8.self))") }
        return lines.joined(separator: "\n") + "\n"
    }
}
