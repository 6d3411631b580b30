import Foundation
import Quant

/// A PEFT-layout adapter directory (see AdapterFiles) read whole into memory for merging, each
/// tensor checked against the base it merges into and keyed by the base's Hugging Face name:
///
///   model.layers.N.<path>.weight   A [r, in], B [out, r] from `….lora_A.weight`, `….lora_B.weight`
///   model.layers.N.*_layernorm.weight, model.norm.weight   trained norms [C] (qlora --train-norms)
///
/// Independent of LlamaLoRA: nothing here builds a model or touches gradients.
struct AdapterTensors {
    /// One adapted linear: ΔW[out, in] = s·B·A.
    struct Factors {
        let a: [Float]   // [r, in]
        let b: [Float]   // [out, r]
        let rank: Int
        let scale: Float

        /// w[rows, in] += s·B[rows, r]·A[r, in], `w` holding `rows` from its start.
        func addProduct(rows: Range<Int>, into w: inout [Float], cols: Int) throws {
            let r = rank
            try b.withUnsafeBufferPointer { b in
                try a.withUnsafeBufferPointer { a in
                    try w.withUnsafeMutableBufferPointer { w in
                        try ComputeRuntime.parallelSgemm(transposeB: false, m: rows.count, n: cols, k: r, alpha: scale,
                                                         a: b.baseAddress! + rows.lowerBound * r, lda: r, b: a.baseAddress!, ldb: cols,
                                                         beta: 1, c: w.baseAddress!, ldc: cols)
                    }
                }
            }
        }
    }

    let factors: [String: Factors]
    let norms: [String: [Float]]

    /// Base tensors the adapter changes.
    var mergedCount: Int { factors.count + norms.count }

    func touches(_ name: String) -> Bool { factors[name] != nil || norms[name] != nil }

    init(directory: String, model: QuantizedModel) throws {
        let (config, _) = try AdapterFiles.config(in: directory)
        let configPath = directory + "/" + AdapterFiles.configFile
        if let data = FileManager.default.contents(atPath: configPath),
           let j = (try? JSONSerialization.jsonObject(with: data)) as? [String: Any] {
            for key in ["rank_pattern", "alpha_pattern"] {
                if let p = j[key] as? [String: Any], !p.isEmpty { throw AdapterError.bad(configPath, "\(key) (a rank or alpha per module) is not supported") }
            }
            if j["use_dora"] as? Bool == true { throw AdapterError.bad(configPath, "use_dora: DoRA adapters cannot be merged by qlora") }
        }
        let path = directory + "/" + AdapterFiles.weightsFile
        guard FileManager.default.fileExists(atPath: path) else { throw AdapterError.missing(path) }
        let file = try SafetensorsFile(path: path)
        var halves: [String: (a: SafetensorsTensor?, b: SafetensorsTensor?)] = [:]
        var norms: [String: [Float]] = [:]
        var unexpected: [String] = []
        for t in file.tensors {
            let name = t.name.hasPrefix(AdapterFiles.prefix) ? String(t.name.dropFirst(AdapterFiles.prefix.count)) : t.name
            if name.hasSuffix(".lora_A.weight") || name.hasSuffix(".lora_B.weight") {
                let weight = String(name.dropLast(".lora_A.weight".count)) + ".weight"
                guard model.linears[weight] != nil else { unexpected.append(t.name); continue }
                if name.hasSuffix(".lora_A.weight") { halves[weight, default: (nil, nil)].a = t } else { halves[weight, default: (nil, nil)].b = t }
            } else if TensorNames.role(of: name) == .norm, let base = model.dense[name] {
                guard t.shape == [base.count] else { throw AdapterError.wrongShape(path, t.name, expected: [base.count], found: t.shape) }
                norms[name] = try file.floats(t)
            } else {
                unexpected.append(t.name)
            }
        }
        if let first = unexpected.sorted().first {
            throw AdapterError.unexpectedTensor(path, first, unexpected.count, why: "not a LoRA factor of a linear of this model, nor a norm")
        }
        var factors: [String: Factors] = [:]
        for (weight, pair) in halves {
            let w = model.linears[weight]!
            let module = AdapterFiles.prefix + String(weight.dropLast(".weight".count))
            guard let a = pair.a else { throw AdapterError.missingTensor(path, module + ".lora_A.weight") }
            guard let b = pair.b else { throw AdapterError.missingTensor(path, module + ".lora_B.weight") }
            let r = config.rank
            guard a.shape == [r, w.cols] else { throw AdapterError.wrongShape(path, a.name, expected: [r, w.cols], found: a.shape) }
            guard b.shape == [w.rows, r] else { throw AdapterError.wrongShape(path, b.name, expected: [w.rows, r], found: b.shape) }
            factors[weight] = Factors(a: try file.floats(a), b: try file.floats(b), rank: r, scale: config.scale)
        }
        self.factors = factors
        self.norms = norms
    }
}
