import Foundation

/// LoRA adapter directories in PEFT's layout, which `PeftModel.from_pretrained` reads:
///
///   adapter_config.json          LoraConfig: peft_type LORA, task_type CAUSAL_LM, r, lora_alpha,
///                                lora_dropout, target_modules, use_rslora, layers_to_transform, bias none
///   adapter_model.safetensors    F32 `base_model.model.model.layers.N.<path>.lora_A.weight` [r, in]
///                                and `….lora_B.weight` [out, r]; with trainable norms also
///                                `base_model.model.model.layers.N.input_layernorm.weight` etc.
///
/// Written atomically file by file; a directory being replaced is swapped in by rename.
public enum AdapterFiles {
    public static let configFile = "adapter_config.json"
    public static let weightsFile = "adapter_model.safetensors"
    static let prefix = "base_model.model."

    /// Writes the current values of `lora`'s parameters into `directory` (replaced whole).
    public static func save(_ lora: LlamaLoRA, to directory: String, baseModel: String) throws {
        let fm = FileManager.default
        let parent = (directory as NSString).deletingLastPathComponent
        if !parent.isEmpty { try fm.createDirectory(atPath: parent, withIntermediateDirectories: true) }
        let tmp = directory + ".tmp-\(getpid())"
        try? fm.removeItem(atPath: tmp)
        try fm.createDirectory(atPath: tmp, withIntermediateDirectories: true)
        var writer = SafetensorsWriter()
        let params = lora.parameters
        writer.tensors = params.map { .init(name: prefix + $0.name, dtype: .F32, shape: $0.shape) }
        try writer.write(to: tmp + "/" + weightsFile) { i in
            [UInt8](UnsafeRawBufferPointer(start: params[i].value.base, count: params[i].count * MemoryLayout<Float>.size))
        }
        let c = lora.config
        var targets: Any = c.targets.peftValue
        if case let .names(list) = c.targets { targets = list.map(\.rawValue) }
        if case .allLinear = c.targets { targets = "all-linear" }
        let adapted = lora.layers.indices.filter { !lora.layers[$0].adapters.isEmpty }
        let config: [String: Any] = [
            "peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": baseModel,
            "r": c.rank, "lora_alpha": Double("\(c.alpha)")!, "lora_dropout": Double("\(c.dropout)")!, "target_modules": targets,
            "use_rslora": c.useRSLoRA, "bias": "none", "fan_in_fan_out": false, "inference_mode": true,
            "init_lora_weights": true, "modules_to_save": NSNull(), "rank_pattern": [String: Any](), "alpha_pattern": [String: Any](),
            "layers_to_transform": c.lastLayers == nil ? NSNull() : adapted as Any,
            "qlora_trains_norms": lora.trainsNorms,
        ]
        let json = try JSONSerialization.data(withJSONObject: config, options: [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes])
        try AtomicFile.write(to: tmp + "/" + configFile, bytes: [UInt8](json))
        let old = directory + ".old-\(getpid())"
        if fm.fileExists(atPath: directory) { try fm.moveItem(atPath: directory, toPath: old) }
        try fm.moveItem(atPath: tmp, toPath: directory)
        try? fm.removeItem(atPath: old)
    }

    /// The LoRA configuration an adapter directory declares.
    public static func config(in directory: String) throws -> (config: LoRAConfig, trainsNorms: Bool) {
        let path = directory + "/" + configFile
        guard let data = FileManager.default.contents(atPath: path) else { throw AdapterError.missing(path) }
        guard let j = (try? JSONSerialization.jsonObject(with: data)) as? [String: Any] else { throw AdapterError.bad(path, "not a JSON object") }
        guard (j["peft_type"] as? String ?? "LORA") == "LORA" else { throw AdapterError.bad(path, "peft_type \(j["peft_type"]!) is not LORA") }
        guard let r = j["r"] as? Int, let alpha = (j["lora_alpha"] as? NSNumber)?.floatValue else {
            throw AdapterError.bad(path, "r and lora_alpha are required")
        }
        let targets: LoRATargets
        if let list = j["target_modules"] as? [String] {
            targets = try LoRATargets(parsing: list.joined(separator: ","))
        } else if let s = j["target_modules"] as? String {
            targets = s == "all-linear" ? .allLinear : .regex(s)
        } else {
            throw AdapterError.bad(path, "target_modules is missing")
        }
        var lastLayers: Int? = nil
        if let layers = j["layers_to_transform"] as? [Int], !layers.isEmpty { lastLayers = layers.count }
        let cfg = LoRAConfig(rank: r, alpha: alpha, dropout: (j["lora_dropout"] as? NSNumber)?.floatValue ?? 0, targets: targets,
                             lastLayers: lastLayers, useRSLoRA: j["use_rslora"] as? Bool ?? false)
        return (cfg, j["qlora_trains_norms"] as? Bool ?? false)
    }

    /// Overwrites `lora`'s parameters with the tensors of `directory`. Every parameter must be
    /// there with its shape; a tensor of the file that matches no parameter is an error too.
    public static func load(into lora: LlamaLoRA, from directory: String) throws {
        let path = directory + "/" + weightsFile
        guard FileManager.default.fileExists(atPath: path) else { throw AdapterError.missing(path) }
        let file = try SafetensorsFile(path: path)
        var unused = Set(file.tensors.map(\.name))
        for p in lora.parameters {
            guard let t = file.tensor(prefix + p.name) ?? file.tensor(p.name) else { throw AdapterError.missingTensor(path, prefix + p.name) }
            guard t.shape == p.shape else { throw AdapterError.wrongShape(path, t.name, expected: p.shape, found: t.shape) }
            p.setValues(try file.floats(t))
            unused.remove(t.name)
        }
        if let extra = unused.sorted().first { throw AdapterError.unexpectedTensor(path, extra, unused.count) }
    }
}

public enum AdapterError: Error, Equatable, CustomStringConvertible {
    case missing(String)
    case bad(String, String)
    case missingTensor(String, String)
    case wrongShape(String, String, expected: [Int], found: [Int])
    case unexpectedTensor(String, String, Int)

    public var description: String {
        switch self {
        case let .missing(p): "\(p): no such file (an adapter directory holds adapter_config.json and adapter_model.safetensors)"
        case let .bad(p, why): "\(p): \(why)"
        case let .missingTensor(p, n): "\(p): tensor '\(n)' is missing"
        case let .wrongShape(p, n, e, f): "\(p): tensor '\(n)' has shape \(f), the model needs \(e)"
        case let .unexpectedTensor(p, n, count): "\(p): tensor '\(n)' matches no adapter of this model" + (count > 1 ? " (and \(count - 1) more)" : "")
        }
    }
}
