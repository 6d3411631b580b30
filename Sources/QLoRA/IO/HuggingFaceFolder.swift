import Foundation

/// A Hugging Face model folder: config.json, model.safetensors or sharded
/// model-0000k-of-0000n.safetensors with model.safetensors.index.json, and the tokenizer
/// files (tokenizer.json, tokenizer_config.json). Shards are memory-mapped and validated.
public final class HuggingFaceFolder: @unchecked Sendable {
    public let path: String
    public let config: ModelConfig
    /// config.json as parsed JSON, for keys qlora does not model (quantization_config, ...).
    public let rawConfig: [String: Any]
    public let shards: [SafetensorsFile]
    public let tokenizerJSON: String?
    public let tokenizerConfigJSON: String?
    private let location: [String: (shard: Int, tensor: SafetensorsTensor)]

    public init(path: String) throws {
        self.path = path
        let fm = FileManager.default
        func file(_ name: String) -> String { (path as NSString).appendingPathComponent(name) }
        let configPath = file("config.json")
        guard let configData = fm.contents(atPath: configPath) else { throw HuggingFaceFolderError.missingFile(path: configPath) }
        config = try ModelConfig(huggingFaceConfig: configData, source: configPath)
        rawConfig = (try JSONSerialization.jsonObject(with: configData) as? [String: Any]) ?? [:]

        var shardNames: [String]
        var weightMap: [String: String]?
        let indexPath = file("model.safetensors.index.json")
        if let indexData = fm.contents(atPath: indexPath) {
            guard let index = try? JSONSerialization.jsonObject(with: indexData) as? [String: Any],
                  let map = index["weight_map"] as? [String: String] else {
                throw HuggingFaceFolderError.badIndex(path: indexPath, detail: "no weight_map of tensor name → file name")
            }
            for name in Set(map.values) where name.contains("/") || name.hasPrefix(".") {
                throw HuggingFaceFolderError.badIndex(path: indexPath, detail: "shard name '\(name)' is not a plain file name")
            }
            weightMap = map
            shardNames = Array(Set(map.values)).sorted()
        } else if fm.fileExists(atPath: file("model.safetensors")) {
            shardNames = ["model.safetensors"]
        } else {
            throw HuggingFaceFolderError.missingFile(path: file("model.safetensors"))
        }
        var shards: [SafetensorsFile] = []
        for name in shardNames {
            guard fm.fileExists(atPath: file(name)) else {
                throw HuggingFaceFolderError.missingShard(index: indexPath, shard: file(name))
            }
            shards.append(try SafetensorsFile(path: file(name)))
        }
        var location: [String: (Int, SafetensorsTensor)] = [:]
        for (i, shard) in shards.enumerated() {
            for t in shard.tensors {
                if location.updateValue((i, t), forKey: t.name) != nil {
                    throw HuggingFaceFolderError.duplicateTensor(name: t.name, shard: shard.file.path)
                }
            }
        }
        if let weightMap {
            for (name, shard) in weightMap {
                guard let (i, _) = location[name], shardNames[i] == shard else {
                    throw HuggingFaceFolderError.badIndex(path: indexPath, detail: "tensor '\(name)' is not in \(shard)")
                }
            }
        }
        self.shards = shards
        self.location = location
        tokenizerJSON = fm.fileExists(atPath: file("tokenizer.json")) ? file("tokenizer.json") : nil
        tokenizerConfigJSON = fm.fileExists(atPath: file("tokenizer_config.json")) ? file("tokenizer_config.json") : nil
    }

    /// Every tensor with the file holding it, in name order.
    public var tensors: [(file: SafetensorsFile, tensor: SafetensorsTensor)] {
        location.sorted { $0.key < $1.key }.map { (shards[$0.value.shard], $0.value.tensor) }
    }

    public func tensor(_ name: String) -> (file: SafetensorsFile, tensor: SafetensorsTensor)? {
        location[name].map { (shards[$0.shard], $0.tensor) }
    }

    /// True when config.json carries bitsandbytes' 4-bit quantization_config.
    public var isBitsandbytes4Bit: Bool {
        guard let q = rawConfig["quantization_config"] as? [String: Any] else { return false }
        return (q["quant_method"] as? String) == "bitsandbytes" && (q["load_in_4bit"] as? Bool) == true
    }
}

public enum HuggingFaceFolderError: Error, Equatable, CustomStringConvertible {
    case missingFile(path: String)
    case missingShard(index: String, shard: String)
    case badIndex(path: String, detail: String)
    case duplicateTensor(name: String, shard: String)

    public var description: String {
        switch self {
        case let .missingFile(path): "\(path) is missing"
        case let .missingShard(index, shard): "\(index) names \(shard), which is missing"
        case let .badIndex(path, detail): "\(path): \(detail)"
        case let .duplicateTensor(name, shard): "tensor '\(name)' appears in more than one shard (again in \(shard))"
        }
    }
}
