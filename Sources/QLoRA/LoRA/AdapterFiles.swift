import Foundation

/// LoRA adapter directories in PEFT's layout, which `PeftModel.from_pretrained` reads and
/// `save_pretrained` writes:
///
///   adapter_config.json          LoraConfig: peft_type LORA, r, lora_alpha (int or float),
///                                lora_dropout, target_modules, use_rslora, layers_to_transform,
///                                modules_to_save, …
///   adapter_model.safetensors    `base_model.model.model.layers.N.<path>.lora_A.weight` [r, in]
///                                and `….lora_B.weight` [out, r] (F32, F16, BF16 or F64); with
///                                with use_dora `….lora_magnitude_vector` [out] (DoRA's m); with
///                                trained norms also the full RMSNorm weights [C] of the modules
///                                modules_to_save selects, under the base module's name:
///                                `base_model.model.model.layers.N.input_layernorm.weight`,
///                                `….post_attention_layernorm.weight`, `base_model.model.model.norm.weight`
///
/// Trained norms are PEFT's modules_to_save (ModulesToSaveWrapper): PEFT wraps every module
/// whose full name (`base_model.model.model.layers.0.input_layernorm`) ends with an entry, as
/// plain strings ("norm" selects input_layernorm too), and saves the wrapped copy's weight
/// under the module's own name. qlora writes `["input_layernorm", "post_attention_layernorm",
/// "model.norm"]` (every RMSNorm, each entry one kind); it reads any entries that select only
/// RMSNorms, and a norm no entry selects keeps the base's weight. An entry that selects any
/// other module (lm_head, embed_tokens, a block, a linear, …) or no RMSNorm is refused.
/// Adapters qlora wrote before it used modules_to_save (`"qlora_trains_norms": true`, the same
/// tensor names, every norm) are read as trained norms too.
///
/// Reading accepts what PEFT and tools around it write: tensor names with or without the
/// `base_model.model.` prefix, and with the adapter name kept (`.lora_A.default.weight`);
/// target_modules as a list of module names (suffix match: `q_proj`, `self_attn.q_proj`, or a
/// full `model.layers.0.self_attn.q_proj`), a regular expression string, or "all-linear";
/// layers_to_transform as null, an int or a list of block indices. A configuration that turns
/// on anything but plain LoRA or DoRA and trained norms (biases, per-module ranks, other trained
/// modules, …) is refused by key, and so is every tensor that does not fit the base model,
/// before any value is overwritten.
///
/// Written into a staged directory (StagedOutput.Directory: fsynced, then renamed over the
/// old one, leftovers of killed runs removed). What is
/// written always loads in PEFT: a layer subset with a pattern or "all-linear" target (which
/// PEFT's LoraConfig refuses) is written as the list of the adapted modules' full names. Read
/// back, such older qlora configs are still accepted: the layers then narrow the pattern.
public enum AdapterFiles {
    public static let configFile = "adapter_config.json"
    public static let weightsFile = "adapter_model.safetensors"
    static let prefix = "base_model.model."

    /// Writes the current values of `lora`'s parameters into `directory` (replaced whole).
    public static func save(_ lora: ModelAdapters, to directory: String, baseModel: String) throws {
        try StagedOutput.Directory(for: directory).write { tmp in try write(lora, into: tmp, baseModel: baseModel) }
    }

    /// The adapter's two files, into the staging folder `tmp`.
    private static func write(_ lora: ModelAdapters, into tmp: String, baseModel: String) throws {
        var writer = SafetensorsWriter()
        let params = lora.parameters, family = lora.family
        writer.tensors = params.map { .init(name: prefix + $0.name, dtype: .F32, shape: $0.shape) }
        try writer.write(to: tmp + "/" + weightsFile) { i in
            // Norms as the Hugging Face model holds them (Gemma's w of x̂·(1 + w)).
            if family.huggingFaceNormOffset != 0, !params[i].name.contains(".lora_"), params[i] !== lora.scoreHead {
                return family.huggingFaceNorm(fromEffective: params[i].values).withUnsafeBytes { Array($0) }
            }
            return [UInt8](UnsafeRawBufferPointer(start: params[i].value.base, count: params[i].count * MemoryLayout<Float>.size))
        }
        let c = lora.config
        let adapted = lora.layers.indices.filter { !lora.layers[$0].adapters.isEmpty }
        let subset = c.lastLayers != nil || c.layerIndices != nil
        let targets: Any, layers: Any
        switch c.targets {
        case let .names(list):
            (targets, layers) = (list, subset ? adapted : NSNull())
        case .allLinear where !subset:
            (targets, layers) = ("all-linear", NSNull())
        case let .regex(p) where !subset:
            (targets, layers) = (p, NSNull())
        case .allLinear, .regex:
            (targets, layers) = (lora.adapters.map { $0.linear.moduleName(layer: $0.layer) }, NSNull())
        }
        let config: [String: Any] = [
            "peft_type": "LORA", "task_type": lora.scoreHead == nil ? "CAUSAL_LM" : "SEQ_CLS", "base_model_name_or_path": baseModel,
            "r": c.rank, "lora_alpha": Double("\(c.alpha)")!, "lora_dropout": Double("\(c.dropout)")!, "target_modules": targets,
            "use_rslora": c.useRSLoRA, "use_dora": c.useDoRA, "bias": "none", "fan_in_fan_out": false, "inference_mode": true,
            "init_lora_weights": true,
            "modules_to_save": lora.trainsNorms || lora.scoreHead != nil
                ? (lora.trainsNorms ? normModules(lora.family) : []) + (lora.scoreHead != nil ? scoreModules : []) : NSNull(),
            "rank_pattern": [String: Any](), "alpha_pattern": [String: Any](), "layers_to_transform": layers,
        ]
        let json = try JSONSerialization.data(withJSONObject: config, options: [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes])
        try AtomicFile.write(to: tmp + "/" + configFile, bytes: [UInt8](json))
    }

    /// What qlora writes as modules_to_save when the norms train: every RMSNorm of the family,
    /// one entry a kind (`input_layernorm`, …, `q_norm`), and the final `model.norm`.
    static func normModules(_ family: ModelFamily) -> [String] { family.norms.map(\.name) + ["model.norm"] }

    /// The Llama entries, which the older `qlora_trains_norms` meant.
    static let normModules = normModules(.llama)

    /// Every kind of RMSNorm of any family, for error messages.
    static var anyNormModules: [String] { Array(Set(ModelFamily.all.flatMap { normModules($0) })).sorted() }

    /// The adapter directory `--adapter PATH [--ema]` means: an adapter directory as it is, or
    /// with `ema` its `_ema` sibling (a run's lora_final → lora_final_ema, lora_best →
    /// lora_best_ema); a training run's directory means its lora_final (lora_final_ema with
    /// `ema`). Anything else is refused with what was looked for.
    public static func resolve(_ path: String, ema: Bool) throws(AdapterError) -> String {
        let fm = FileManager.default
        func isAdapter(_ dir: String) -> Bool { fm.fileExists(atPath: dir + "/" + configFile) }
        let trimmed = path.count > 1 && path.hasSuffix("/") ? String(path.dropLast()) : path
        if isAdapter(trimmed) {
            guard ema, !trimmed.hasSuffix(RunLayout.emaSuffix) else { return trimmed }
            let sibling = trimmed + RunLayout.emaSuffix
            guard isAdapter(sibling) else {
                throw .bad(trimmed, "--ema: no EMA version beside it (\(sibling)); a run trained with --ema saves "
                           + "\(RunLayout.adapter(.best, ema: true)) and \(RunLayout.adapter(.final, ema: true))")
            }
            return sibling
        }
        let final = RunLayout.adapter(.final)
        if isAdapter(trimmed + "/" + final) {
            let chosen = trimmed + "/" + RunLayout.adapter(.final, ema: ema)
            guard isAdapter(chosen) else {
                throw .bad(trimmed, "--ema: the run has no \(RunLayout.adapter(.final, ema: true)) (written at the end of a run trained "
                           + "with --ema); its best EMA weights are \(RunLayout.adapter(.best, ema: true))")
            }
            return chosen
        }
        throw .bad(trimmed, "not an adapter directory (no \(configFile)) nor a training run's (no \(final)/\(configFile))")
    }

    /// What PEFT's sequence classification adds to modules_to_save: the head, under either name
    /// (transformers' Llama-style models call it `score`).
    static let scoreModules = ["classifier", "score"]

    /// Whether an adapter directory is a reward model's (PEFT task_type SEQ_CLS, or `score` in
    /// modules_to_save): its adapters come with a score head.
    public static func hasScoreHead(in directory: String) throws -> Bool {
        let (j, _) = try configJSON(in: directory)
        return j["task_type"] as? String == "SEQ_CLS" || (j["modules_to_save"] as? [String])?.contains("score") == true
    }

    /// The LoRA configuration an adapter directory declares, and whether it trains norms
    /// (modules_to_save selecting RMSNorms, or the older `qlora_trains_norms`).
    public static func config(in directory: String) throws -> (config: LoRAConfig, trainsNorms: Bool) {
        let (j, path) = try configJSON(in: directory)
        let peftType = j["peft_type"].map(jsonText) ?? "\"LORA\""
        guard peftType == "\"LORA\"" else { throw AdapterError.unsupported(path, key: "peft_type", value: peftType, feature: "an adapter other than LoRA") }
        for (key, feature) in plainLoRADefaults {
            if let v = j[key], !isEmptyJSON(v) { throw AdapterError.unsupported(path, key: key, value: jsonText(v), feature: feature) }
        }
        if let v = j["bias"], !isEmptyJSON(v), v as? String != "none" {
            throw AdapterError.unsupported(path, key: "bias", value: jsonText(v), feature: "trained biases")
        }
        if let v = j["layers_pattern"], !isEmptyJSON(v), v as? String != "layers", v as? [String] != ["layers"] {
            throw AdapterError.unsupported(path, key: "layers_pattern", value: jsonText(v), feature: "a layer container other than a Llama's `layers`")
        }
        // An initialization from W (pissa, olora, loftq, corda) left a residual base the adapter
        // goes with, as PEFT's from_pretrained takes it: the adapter loads on whatever base it is
        // given. MiCA trains A with B frozen, which a run here would not keep.
        if let s = j["init_lora_weights"] as? String, s.lowercased() == "mica" {
            throw AdapterError.unsupported(path, key: "init_lora_weights", value: jsonText(s), feature: "MiCA (lora_B frozen in training)")
        }
        guard let r = integer(j["r"]), r > 0 else { throw AdapterError.badValue(path, key: "r", value: j["r"].map(jsonText), expected: "a positive integer") }
        guard let alpha = number(j["lora_alpha"]).map(Float.init), alpha.isFinite, alpha > 0 else {
            throw AdapterError.badValue(path, key: "lora_alpha", value: j["lora_alpha"].map(jsonText), expected: "a positive number")
        }
        let dropout = isEmptyJSON(j["lora_dropout"] ?? NSNull()) ? 0 : number(j["lora_dropout"]).map(Float.init) ?? -1
        guard dropout >= 0, dropout < 1 else {
            throw AdapterError.badValue(path, key: "lora_dropout", value: j["lora_dropout"].map(jsonText), expected: "a number in [0, 1)")
        }
        let rsLoRA = j["use_rslora"].map { $0 is NSNull ? false : boolean($0) } ?? false
        guard let rsLoRA else { throw AdapterError.badValue(path, key: "use_rslora", value: j["use_rslora"].map(jsonText), expected: "true or false") }
        let dora = j["use_dora"].map { $0 is NSNull ? false : boolean($0) } ?? false
        guard let dora else { throw AdapterError.badValue(path, key: "use_dora", value: j["use_dora"].map(jsonText), expected: "true or false") }
        let cfg = LoRAConfig(rank: r, alpha: alpha, dropout: dropout, targets: try targets(j["target_modules"], path: path),
                             layerIndices: try layerIndices(j["layers_to_transform"], path: path), useRSLoRA: rsLoRA, useDoRA: dora)
        return (cfg, !(try savedNormEntries(j, path: path)).isEmpty)
    }

    static func configJSON(in directory: String) throws -> (json: [String: Any], path: String) {
        let path = directory + "/" + configFile
        guard let data = FileManager.default.contents(atPath: path) else { throw AdapterError.missing(path) }
        guard let j = (try? JSONSerialization.jsonObject(with: data)) as? [String: Any] else {
            throw AdapterError.bad(path, "not a JSON object")
        }
        return (j, path)
    }

    /// modules_to_save, each entry checked to select RMSNorms and nothing else (PEFT's suffix
    /// match on the full names of a Llama under PeftModel); `normModules` for the older
    /// `qlora_trains_norms`; [] when no norm trains.
    static func savedNormEntries(_ j: [String: Any], path: String) throws -> [String] {
        let value = j["modules_to_save"] ?? NSNull()
        if isEmptyJSON(value) { return boolean(j["qlora_trains_norms"]) == true ? normModules : [] }
        guard let entries = value as? [String] else {
            throw AdapterError.badValue(path, key: "modules_to_save", value: jsonText(value), expected: "null or a list of module names")
        }
        let norms = entries.filter { !scoreModules.contains($0) }
        for entry in norms {
            // Names of the blocks the entry could be about: 0 and every number in it.
            let layers = [0] + entry.matches(of: /\d+/).compactMap { Int($0.output) }
            let names = layers.map(peftModuleNames(layer:))
            if let other = names.lazy.flatMap(\.others).first(where: { $0.hasSuffix(entry) }) {
                throw AdapterError.unsupported(path, key: "modules_to_save", value: jsonText(entry),
                                               feature: "a fully trained copy of \(other.hasPrefix(prefix) ? String(other.dropFirst(prefix.count)) : other) (only the RMSNorms "
                                                   + anyNormModules.joined(separator: ", ") + " may train in full)")
            }
            guard names.contains(where: { $0.norms.contains { $0.hasSuffix(entry) } }) else {
                throw AdapterError.unsupported(path, key: "modules_to_save", value: jsonText(entry),
                                               feature: "an entry that selects no RMSNorm (only "
                                                   + anyNormModules.joined(separator: ", ") + " may train in full)")
            }
        }
        return norms
    }

    /// The full names PEFT matches modules_to_save against, for block `l` of a Llama inside a
    /// PeftModel: its RMSNorms and the final one, and every other module (lora submodules aside).
    static func peftModuleNames(layer l: Int) -> (norms: [String], others: [String]) {
        let model = prefix + "model", block = model + ".layers.\(l)"
        let norms = Array(Set(ModelFamily.all.flatMap(\.norms).map { block + "." + $0.path })).sorted() + [model + ".norm"]
        let others = ["base_model", String(prefix.dropLast()), model, model + ".embed_tokens", model + ".layers", block,
                      block + ".self_attn", block + ".mlp", block + ".mlp.act_fn", model + ".rotary_emb", prefix + "lm_head"]
            + Array(Set(ModelFamily.all.flatMap(\.linears))).map { prefix + $0.moduleName(layer: l) }
        return (norms, others)
    }

    /// The norm parameters of `lora` whose full weights `directory` holds: those its
    /// modules_to_save selects. The others keep their values (the base's, in a ModelAdapters just built).
    public static func savedNorms(of lora: ModelAdapters, in directory: String) throws -> [Parameter] {
        guard lora.trainsNorms else { return [] }
        let (j, path) = try configJSON(in: directory)
        let entries = try savedNormEntries(j, path: path)
        return lora.parameters.filter { p in
            guard !p.name.contains(".lora_") else { return false }
            let module = prefix + p.name.dropLast(".weight".count)
            return entries.contains { module.hasSuffix($0) }
        }
    }

    /// Keys of LoraConfig whose non-empty values turn on something other than plain LoRA.
    static let plainLoRADefaults: KeyValuePairs<String, String> = [
        "fan_in_fan_out": "fan_in_fan_out (weights stored [in, out], GPT-2's Conv1D)",
        "rank_pattern": "per-module ranks (rank_pattern)",
        "alpha_pattern": "per-module alphas (alpha_pattern)",
        "exclude_modules": "exclude_modules",
        "lora_bias": "a bias on lora_B (lora_bias)",
        "use_qalora": "QALoRA",
        "target_parameters": "LoRA on parameters (target_parameters)",
        "trainable_token_indices": "trainable token embeddings (trainable_token_indices)",
        "layer_replication": "layer replication",
        "alora_invocation_tokens": "activated LoRA (aLoRA)",
        "use_bdlora": "a LoRA variant (use_bdlora)",
        "velora_config": "a LoRA variant (velora_config)",
        "kasa_config": "a LoRA variant (kasa_config)",
        "monteclora_config": "a LoRA variant (monteclora_config)",
        "arrow_config": "a LoRA variant (arrow_config)",
    ]

    /// target_modules: a list of module names (PEFT's exact or `.suffix` match), a pattern that
    /// must match a whole module name, or "all-linear".
    static func targets(_ value: Any?, path: String) throws -> LoRATargets {
        if let s = value as? String {
            if s == "all-linear" { return .allLinear }
            guard (try? NSRegularExpression(pattern: s)) != nil else {
                throw AdapterError.badValue(path, key: "target_modules", value: jsonText(s), expected: "a valid regular expression")
            }
            return .regex(s)
        }
        guard let list = value as? [String], !list.isEmpty else {
            throw AdapterError.badValue(path, key: "target_modules", value: value.map(jsonText),
                                        expected: "a non-empty list of module names, a pattern, or \"all-linear\"")
        }
        if let names = try? LoRATargets(parsing: list.joined(separator: ",")) { return names }
        for entry in list {
            let layer = entry.firstMatch(of: /layers\.(\d+)\./).flatMap { Int($0.1) } ?? 0
            guard ModelFamily.all.flatMap(\.linears).contains(where: { m in
                let name = m.moduleName(layer: layer)
                return name == entry || name.hasSuffix("." + entry)
            }) else {
                throw AdapterError.unsupported(path, key: "target_modules", value: jsonText(entry),
                                               feature: "a target other than a block's linears (" + LoRAConfigError.linearNames + ")")
            }
        }
        let escaped = list.map(NSRegularExpression.escapedPattern(for:)).joined(separator: "|")
        return .regex("(?:.*\\.)?(?:\(escaped))")
    }

    /// layers_to_transform: null (every block), one index, or a list of them, as a sorted set.
    static func layerIndices(_ value: Any?, path: String) throws -> [Int]? {
        guard let value, !(value is NSNull) else { return nil }
        let list = integer(value).map { [$0] } ?? (value as? [Any])?.compactMap(integer)
        guard let list, list.count == (value as? [Any])?.count ?? 1, !list.isEmpty, list.allSatisfy({ $0 >= 0 }) else {
            throw AdapterError.badValue(path, key: "layers_to_transform", value: jsonText(value),
                                        expected: "null, a block index or a non-empty list of block indices")
        }
        return Array(Set(list)).sorted()
    }

    /// Overwrites `lora`'s parameters with the tensors of `directory`. Every LoRA parameter, and
    /// every norm modules_to_save selects, must be there with its shape and finite values, and
    /// every tensor of the file must be one of them; nothing is overwritten unless all are.
    public static func load(into lora: ModelAdapters, from directory: String) throws {
        let path = directory + "/" + weightsFile
        guard FileManager.default.fileExists(atPath: path) else { throw AdapterError.missing(path) }
        let file = try SafetensorsFile(path: path)
        var byParameter: [String: SafetensorsTensor] = [:]
        for t in file.tensors {
            let name = parameterName(t.name)
            if let other = byParameter[name] { throw AdapterError.duplicateTensor(path, t.name, other.name) }
            byParameter[name] = t
        }
        let adapters = Dictionary(uniqueKeysWithValues: lora.adapters.flatMap { [($0.adapter.a.name, $0.adapter), ($0.adapter.b.name, $0.adapter)] })
        let norms = Set(try savedNorms(of: lora, in: directory).map(\.name))
        var values: [(Parameter, [Float])] = []
        // A score head loads when the file has one; one that is missing keeps its initial values
        // (a reward model started from a causal LM's adapter).
        for p in lora.parameters where p.name.contains(".lora_") || norms.contains(p.name)
            || (p === lora.scoreHead && byParameter[p.name] != nil) {
            guard let t = byParameter.removeValue(forKey: p.name) else { throw AdapterError.missingTensor(path, prefix + p.name) }
            if t.shape != p.shape {
                let isA = p.name.hasSuffix(".lora_A.weight"), r = lora.config.rank
                if let adapter = adapters[p.name], t.shape.count == 2, t.shape[isA ? 1 : 0] == p.shape[isA ? 1 : 0], t.shape[isA ? 0 : 1] != r {
                    throw AdapterError.wrongRank(path, t.name, found: t.shape[isA ? 0 : 1], rank: r,
                                                 base: [adapter.outFeatures, adapter.inFeatures])
                }
                throw AdapterError.wrongShape(path, t.name, expected: p.shape, found: t.shape)
            }
            let v = try file.floats(t)
            if let i = v.firstIndex(where: { !$0.isFinite }) { throw AdapterError.nonFinite(path, t.name, index: i, value: v[i]) }
            values.append((p, v))
        }
        if let extra = byParameter.values.map(\.name).sorted().first {
            throw AdapterError.unexpectedTensor(path, extra, byParameter.count, why: unmatchedReason(parameterName(extra), lora: lora))
        }
        for (p, v) in values { p.setValues(p.name.contains(".lora_") || p === lora.scoreHead ? v : lora.family.effectiveNorm(fromHuggingFace: v)) }
    }

    /// The parameter name of a tensor name: without `base_model.model.`, and without an
    /// adapter name between `lora_A`/`lora_B` and `weight` (`.lora_A.default.weight`); DoRA's
    /// magnitude as PEFT saves it, `….lora_magnitude_vector` (in memory
    /// `….lora_magnitude_vector.default.weight`, which older tools wrote too).
    static func parameterName(_ key: String) -> String {
        let name = key.hasPrefix(prefix) ? String(key.dropFirst(prefix.count)) : key
        if let m = name.firstMatch(of: /^(.+\.lora_magnitude_vector)(?:\.[^.]+)?(?:\.weight)?$/) { return String(m.1) }
        return name.replacing(/\.(lora_[AB])\.[^.]+\.weight$/) { ".\($0.1).weight" }
    }

    /// Why a tensor has no parameter: its block, linear or kind is not adapted.
    static func unmatchedReason(_ name: String, lora: ModelAdapters) -> String {
        if name == ModelAdapters.scoreHeadName {
            return "it is a reward model's score head, and adapter_config.json is not a sequence classifier's (task_type SEQ_CLS)"
        }
        if name.hasSuffix(".lora_magnitude_vector"), !lora.config.useDoRA {
            return "it is DoRA's magnitude, and adapter_config.json does not set use_dora"
        }
        guard let m = name.firstMatch(of: /^model\.layers\.(\d+)\.(.+)\.(?:lora_[AB]\.weight|lora_magnitude_vector)$/), let layer = Int(m.1) else {
            return !name.hasSuffix("norm.weight") ? "it is no LoRA tensor of a \(lora.family.name) block's linears"
                : "it is a full RMSNorm weight, and adapter_config.json's modules_to_save does not select it"
        }
        guard layer < lora.layers.count else { return "the model has \(lora.layers.count) blocks" }
        guard let linear = lora.order.first(where: { $0.path == m.2 }) else { return "'\(m.2)' is not a linear of a \(lora.family.name) block" }
        return "adapter_config.json's target_modules / layers_to_transform do not adapt \(linear.moduleName(layer: layer))"
    }

    /// null, false, "", [] or {}: what PEFT writes for a feature that is off.
    static func isEmptyJSON(_ v: Any) -> Bool {
        switch v {
        case is NSNull: true
        case let s as String: s.isEmpty
        case let a as [Any]: a.isEmpty
        case let d as [String: Any]: d.isEmpty
        default: boolean(v) == false
        }
    }

    /// A JSON true or false (Foundation decodes both as NSNumber, objCType "c"; numbers are not).
    static func boolean(_ v: Any?) -> Bool? {
        guard let n = v as? NSNumber, String(cString: n.objCType) == "c" else { return nil }
        return n.boolValue
    }

    static func number(_ v: Any?) -> Double? {
        guard let n = v as? NSNumber, boolean(n) == nil else { return nil }
        return n.doubleValue
    }

    static func integer(_ v: Any?) -> Int? {
        guard let d = number(v), d == d.rounded(), abs(d) < 1e15 else { return nil }
        return Int(d)
    }

    static func jsonText(_ v: Any) -> String {
        guard let data = try? JSONSerialization.data(withJSONObject: [v], options: [.sortedKeys, .withoutEscapingSlashes]) else { return "\(v)" }
        return String(decoding: data.dropFirst().dropLast(), as: UTF8.self)
    }
}

public enum AdapterError: Error, Equatable, CustomStringConvertible {
    case missing(String)
    case bad(String, String)
    case unsupported(String, key: String, value: String, feature: String)
    case badValue(String, key: String, value: String?, expected: String)
    case missingTensor(String, String)
    case duplicateTensor(String, String, String)
    case wrongShape(String, String, expected: [Int], found: [Int])
    case wrongRank(String, String, found: Int, rank: Int, base: [Int])
    case nonFinite(String, String, index: Int, value: Float)
    case unexpectedTensor(String, String, Int, why: String)

    public var description: String {
        switch self {
        case let .missing(p): "\(p): no such file (an adapter directory holds adapter_config.json and adapter_model.safetensors)"
        case let .bad(p, why): "\(p): \(why)"
        case let .unsupported(p, key, value, feature): "\(p): \(key) \(value): \(feature) is not supported; qlora applies LoRA and DoRA (and trained RMSNorms) only"
        case let .badValue(p, key, value, expected): "\(p): \(key) is \(value ?? "missing"); expected \(expected)"
        case let .missingTensor(p, n): "\(p): tensor '\(n)' is missing"
        case let .duplicateTensor(p, n, other): "\(p): tensors '\(other)' and '\(n)' are the same parameter"
        case let .wrongShape(p, n, e, f): "\(p): tensor '\(n)' has shape \(f), the model needs \(e)"
        case let .wrongRank(p, n, f, r, base): "\(p): tensor '\(n)' has rank \(f) but adapter_config.json's r is \(r) "
            + "(base weight \(base); per-module ranks are not supported)"
        case let .nonFinite(p, n, i, v): "\(p): tensor '\(n)' holds \(v) at element \(i)"
        case let .unexpectedTensor(p, n, count, why): "\(p): tensor '\(n)' matches no adapter of this model: \(why)"
            + (count > 1 ? " (and \(count - 1) more tensors)" : "")
        }
    }
}
