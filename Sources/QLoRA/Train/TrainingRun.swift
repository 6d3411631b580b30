import Foundation
import Quant

/// Everything a run is configured with, written to `<run>/config.json` and read back by
/// `--resume`. Field names are the CLI's flags in snake case. Keys no field reads are ignored,
/// so configs of older runs still load (`ema_trainable_only`, a flag that did nothing: the EMA
/// only ever shadows the trainable parameters).
public struct TrainingConfig: Codable, Sendable, Equatable {
    public var model: String
    /// Files, folders or globs (`DataSources`): a string in config.json when one, else a list.
    public var data: DataSources
    /// A synthetic shape trained on seeded random token ids instead of `model` and `data`.
    public var shape: String?
    public var layers: Int?
    public var valFile: DataSources?
    /// The format of every data file (nil: each file's extension says).
    public var dataFormat: SFTFormat?
    public var valFraction: Double = 0.05
    public var maxLen = 256
    public var packing = false
    /// Batch examples of similar length (the Trainer's `group_by_length`); nil: off.
    public var groupByLength: Bool?
    public var textColumn = "text"
    public var skipBad = false
    public var chatTemplate: String?
    /// What a GGUF's K-quants become at load. New runs store it (`as-is` by default); nil is
    /// a run from before the choice existed, trained on `q4_1`, and resumes on it.
    public var kQuants: QuantizedModel.KQuantTarget?

    public var loraR = 16
    public var loraAlpha: Float = 32
    public var loraDropout: Float = 0.05
    public var loraTargets = "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj"
    public var loraLayers: Int?
    public var useRslora = false
    /// DoRA (PEFT's use_dora): a trained magnitude per output row of each adapted linear; nil: off.
    public var useDora: Bool?
    /// How the adapters start (PEFT's init_lora_weights names; nil: default). pissa, olora and
    /// loftq are prepared when the run starts: `model` then names the new base written in the run
    /// and `loadLoraFrom` the adapter that goes with it, and `initFrom` the model they came from.
    public var initLoraWeights: String?
    /// LoftQ's alternations of quantization and SVD (nil: 1).
    public var loftqIter: Int?
    /// The model a pissa/olora/loftq initialization was computed from (set when it was prepared).
    public var initFrom: String?
    public var trainNorms = false
    public var loadLoraFrom: String?
    /// Adapters stacked frozen on the trained ones (the 2nd, 3rd, … `--load-lora-from`): their
    /// deltas apply in every forward and backward; they get no gradients and are not saved.
    public var frozenAdapters: [String]?

    public var lr = 2e-4
    /// The optimizer (nil: adamw): adamw_8bit keeps its moments in 8 bits (`Blockwise8Moments`).
    public var optim: AdamW.Kind?
    /// LoRA+: lora_B (and trained norms) learn at lr × this (`LoRAPlus`); nil: plain LoRA.
    public var loraplusLrRatio: Double?
    public var beta1 = 0.9
    public var beta2 = 0.999
    public var eps = 1e-8
    public var weightDecay = 0.0
    public var maxGradNorm = 1.0
    public var schedule = LRSchedule.Kind.cosine
    public var warmupSteps: Int?
    public var warmupRatio = 0.03
    /// Sequences (pairs) per micro-batch on each rank.
    public var batchSize = 4
    /// The ranks a data-parallel run started on (nil: one process). Its global micro-batch is
    /// batchSize × ranks, kept when the run resumes on another number of ranks.
    public var ranks: Int?
    public var gradAccum = 1
    public var maxSteps: Int?
    public var epochs: Double = 1
    public var seed: UInt64 = 42

    public var ema = 0.999
    public var emaEvery = 1
    /// The EMA's decay warms up with the update count (`EMA.warmup`). New runs store it (on by
    /// default); nil is a run from before it existed, and resumes without it.
    public var emaWarmup: Bool?
    public var evalEvery: Int?
    public var quickEvery: Int?
    public var quickBatches = 4
    public var evalBatchSize: Int?
    public var saveEvery: Int?
    public var keepLast = 3
    /// The pilot → 8 chunks → tail schedule: full evaluation and checkpoint at each boundary.
    public var plan = true
    public var gradCheckpoint = false
    /// Alert on a collapse of tokens/s (timing-dependent, so off where runs are compared).
    public var speedAlerts = true
    /// Where the scalars go besides metrics.jsonl and chart.svg (nil: none).
    public var reportTo: ReportTarget?

    /// What the run trains for (nil: sft). Preference objectives read pairs; `batchSize`
    /// counts pairs then.
    public var objective: ObjectiveKind?
    /// DPO's, SimPO's and ORPO's β (nil: TRL's default of each, `ObjectiveKind.defaultBeta`).
    public var beta: Double?
    /// DPO's loss type (nil: sigmoid).
    public var dpoLoss: PreferenceLoss.DPOKind?
    public var labelSmoothing: Double?
    /// SimPO's target margin γ (nil: 0.5).
    public var simpoGamma: Double?
    /// The reward objective's center_rewards_coefficient.
    public var centerRewards: Double?
    /// DPO's reference: a frozen adapter (nil: the adapter the run starts from, or the base).
    public var refAdapter: String?
    /// What the frozen 4-bit GEMMs and the LM head compute in (nil: fp32).
    public var computeDtype: ComputeDTypeChoice?
    /// What the run computes in: `computeDtype` resolved when the run started (`auto`'s
    /// choice), so a resumed run keeps it (nil in runs written before it was recorded).
    public var computeDtypeInUse: ComputeDTypeChoice?

    public init(model: String, data: DataSources) {
        self.model = model
        self.data = data
    }

    public var objectiveKind: ObjectiveKind { objective ?? .sft }

    /// The objective the run trains with.
    public var makeObjective: any TrainingObjective {
        let kind = objectiveKind
        let beta = self.beta ?? kind.defaultBeta
        switch kind {
        case .sft: return CausalLMObjective()
        case .reward: return RewardObjective(centering: centerRewards ?? 0)
        case .dpo: return PreferenceObjective(.dpo(dpoLoss ?? .sigmoid, labelSmoothing: labelSmoothing ?? 0), beta: beta)
        case .simpo: return PreferenceObjective(.simpo(gamma: simpoGamma ?? 0.5, labelSmoothing: labelSmoothing ?? 0), beta: beta)
        case .orpo: return PreferenceObjective(.orpo, beta: beta)
        }
    }

    public var lora: LoRAConfig {
        get throws {
            var c = LoRAConfig(rank: loraR, alpha: loraAlpha, dropout: loraDropout, targets: try LoRATargets(parsing: loraTargets),
                               lastLayers: loraLayers, useRSLoRA: useRslora, useDoRA: useDora ?? false)
            c.initialization = try initialization == .gaussian ? .gaussian : .kaiming
            return c
        }
    }

    /// `initLoraWeights` parsed (default when nil).
    public var initialization: LoRAInitialization {
        get throws { try initLoraWeights.map { try LoRAInitialization(parsing: $0) } ?? .kaiming }
    }

    /// Whether the run still has to compute its initialization from W and write its new base.
    public var needsInitialization: Bool {
        get throws { try initialization.changesBase && initFrom == nil }
    }

    /// The adapters the run trains: with `loadLoraFrom`, that directory's own configuration
    /// (rank, alpha, targets, layers, trained norms), which replaces the lora_* flags; else the
    /// flags. The run builds these, and the memory estimate counts them.
    public var trainedLoRA: (config: LoRAConfig, trainsNorms: Bool) {
        get throws {
            if let from = loadLoraFrom { return try AdapterFiles.config(in: from) }
            return (try lora, trainNorms)
        }
    }
}

/// `--compute-dtype`: fp32, bf16 (AVX512-BF16 needed), or auto (bf16 where the CPU has it).
public enum ComputeDTypeChoice: String, Codable, Sendable, CaseIterable {
    case fp32, bf16, auto

    /// `auto`'s quality bound: bf16 is taken when a probe batch's loss in bf16 is within this
    /// relative difference of fp32's (the issue's perplexity bound; runs measured ≈ 0.05%).
    public static let autoTolerance = 0.005

    /// What `auto` computes in for this model here: bf16 where the CPU has AVX512-BF16 and the
    /// loss of `probe` (a validation batch, causal-LM cross-entropy, adapters as they start)
    /// computed in bf16 is within `autoTolerance` of fp32's; else fp32. Returns the dtype and
    /// why, in words. Other choices resolve as `resolved()`, without a probe.
    public func resolved(model: DecoderModel, lora: ModelAdapters, probe: TokenBatch?,
                         tolerance: Double = autoTolerance) throws -> (ComputeDType, String) {
        guard self == .auto else { return (try resolved(), "--compute-dtype \(rawValue)") }
        guard ComputeRuntime.bf16Available else {
            return (.fp32, "auto: this CPU (\((try? RuntimeReport.current().cpu) ?? "unknown")) has no AVX512-BF16")
        }
        guard let probe, probe.scoredTokens > 0 else { return (.bf16, "auto: AVX512-BF16 present (no probe batch)") }
        let kept = model.computeDType
        defer { model.computeDType = kept }
        let trainer = Trainer(model: model, lora: lora, objective: CausalLMObjective())
        var loss: [ComputeDType: Double] = [:]
        for dtype in [ComputeDType.fp32, .bf16] {
            model.computeDType = dtype
            loss[dtype] = try trainer.loss(probe).mean
        }
        let (l32, l16) = (loss[.fp32]!, loss[.bf16]!)
        let relative = abs(l16 - l32) / max(abs(l32), 1e-12)
        let measured = String(format: "probe loss %.4f in bf16, %.4f in fp32 (%.3f%%)", l16, l32, 100 * relative)
        if relative.isFinite, relative <= tolerance {
            return (.bf16, "auto: AVX512-BF16 present, \(measured)")
        }
        return (.fp32, "auto: \(measured), above the \(tolerance * 100)% bound: staying in fp32")
    }

    /// What a run asking for this will compute in here, for estimates made before it starts:
    /// bf16 unless fp32 is asked for or the CPU lacks it (auto's probe may still pick fp32).
    public var expected: ComputeDType { self == .fp32 || !ComputeRuntime.bf16Available ? .fp32 : .bf16 }

    /// The dtype on this CPU; bf16 where the CPU lacks it is refused by name.
    public func resolved() throws -> ComputeDType {
        switch self {
        case .fp32: return .fp32
        case .auto: return ComputeRuntime.bf16Available ? .bf16 : .fp32
        case .bf16:
            guard ComputeRuntime.bf16Available else {
                throw TrainingError.nothingToTrain("--compute-dtype bf16: this CPU has no AVX512-BF16 (\((try? RuntimeReport.current().cpu) ?? "unknown CPU")); use fp32 or auto")
            }
            return .bf16
        }
    }
}

/// The objectives `qlora train --objective` offers.
public enum ObjectiveKind: String, Codable, Sendable, CaseIterable {
    case sft, reward, dpo, orpo, simpo

    /// Whether the objective trains on preference pairs.
    public var usesPairs: Bool { self != .sft }

    /// TRL's default β: DPOConfig 0.1, ORPOConfig 0.1, CPOConfig (SimPO) 2.0 as the SimPO paper.
    public var defaultBeta: Double { self == .simpo ? 2.0 : 0.1 }
}

/// One row of metrics.jsonl: a training update (`loss`, `tokens_per_s`, …) or an evaluation
/// (`val_loss`, `val_ppl`, `kind` full/quick/alert, `ema`).
public struct MetricsRow: Codable, Sendable, Equatable {
    public var step: Int
    public var loss: Double?
    public var lr: Double?
    public var gradNorm: Double?
    public var tokensPerS: Double?
    /// Tokens the update processed, padding not counted (tokens_per_s counts the padded rows).
    public var tokens: Int?
    /// Seconds the update took (its micro-batches, clipping, AdamW and EMA).
    public var updateS: Double?
    public var trainedTokens: Int?
    public var rssMb: Double?
    public var elapsedS: Double?
    public var valLoss: Double?
    public var valPpl: Double?
    /// With an EMA, full evaluations also score the live weights.
    public var valLossLive: Double?
    public var kind: String?
    public var ema: Bool?
    public var event: String?
    /// Preference objectives: the share of pairs the model ranks right (validation rows).
    public var valAccuracy: Double?
    /// The objective's own metrics, written as keys of their own ("rewards/chosen", …;
    /// "val_rewards/chosen", … on evaluation rows).
    public var metrics: [String: Double] = [:]

    enum CodingKeys: String, CodingKey {
        case step, loss, lr, kind, ema, event
        case gradNorm = "grad_norm", tokensPerS = "tokens_per_s", trainedTokens = "trained_tokens", rssMb = "rss_mb"
        case tokens, updateS = "update_s"
        case elapsedS = "elapsed_s", valLoss = "val_loss", valPpl = "val_ppl", valLossLive = "val_loss_live"
        case valAccuracy = "val_accuracy"
    }

    struct MetricKey: CodingKey {
        var stringValue: String
        var intValue: Int? { nil }
        init(stringValue: String) { self.stringValue = stringValue }
        init?(intValue: Int) { nil }
    }

    public init(from decoder: Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        step = try c.decode(Int.self, forKey: .step)
        loss = try c.decodeIfPresent(Double.self, forKey: .loss)
        lr = try c.decodeIfPresent(Double.self, forKey: .lr)
        gradNorm = try c.decodeIfPresent(Double.self, forKey: .gradNorm)
        tokensPerS = try c.decodeIfPresent(Double.self, forKey: .tokensPerS)
        tokens = try c.decodeIfPresent(Int.self, forKey: .tokens)
        updateS = try c.decodeIfPresent(Double.self, forKey: .updateS)
        trainedTokens = try c.decodeIfPresent(Int.self, forKey: .trainedTokens)
        rssMb = try c.decodeIfPresent(Double.self, forKey: .rssMb)
        elapsedS = try c.decodeIfPresent(Double.self, forKey: .elapsedS)
        valLoss = try c.decodeIfPresent(Double.self, forKey: .valLoss)
        valPpl = try c.decodeIfPresent(Double.self, forKey: .valPpl)
        valLossLive = try c.decodeIfPresent(Double.self, forKey: .valLossLive)
        kind = try c.decodeIfPresent(String.self, forKey: .kind)
        ema = try c.decodeIfPresent(Bool.self, forKey: .ema)
        event = try c.decodeIfPresent(String.self, forKey: .event)
        valAccuracy = try c.decodeIfPresent(Double.self, forKey: .valAccuracy)
        let known = Set(["step", "loss", "lr", "kind", "ema", "event", "grad_norm", "tokens_per_s", "tokens", "update_s", "trained_tokens", "rss_mb",
                         "elapsed_s", "val_loss", "val_ppl", "val_loss_live", "val_accuracy"])
        let all = try decoder.container(keyedBy: MetricKey.self)
        for key in all.allKeys where !known.contains(key.stringValue) {
            if let v = try? all.decode(Double.self, forKey: key) { metrics[key.stringValue] = v }
        }
    }

    public func encode(to encoder: Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(step, forKey: .step)
        try c.encodeIfPresent(loss, forKey: .loss)
        try c.encodeIfPresent(lr, forKey: .lr)
        try c.encodeIfPresent(gradNorm, forKey: .gradNorm)
        try c.encodeIfPresent(tokensPerS, forKey: .tokensPerS)
        try c.encodeIfPresent(tokens, forKey: .tokens)
        try c.encodeIfPresent(updateS, forKey: .updateS)
        try c.encodeIfPresent(trainedTokens, forKey: .trainedTokens)
        try c.encodeIfPresent(rssMb, forKey: .rssMb)
        try c.encodeIfPresent(elapsedS, forKey: .elapsedS)
        try c.encodeIfPresent(valLoss, forKey: .valLoss)
        try c.encodeIfPresent(valPpl, forKey: .valPpl)
        try c.encodeIfPresent(valLossLive, forKey: .valLossLive)
        try c.encodeIfPresent(kind, forKey: .kind)
        try c.encodeIfPresent(ema, forKey: .ema)
        try c.encodeIfPresent(event, forKey: .event)
        try c.encodeIfPresent(valAccuracy, forKey: .valAccuracy)
        var m = encoder.container(keyedBy: MetricKey.self)
        for (k, v) in metrics where v.isFinite { try m.encode(v, forKey: MetricKey(stringValue: k)) }
    }

    public init(step: Int) { self.step = step }
}

/// What a run reports as it goes (the CLI draws it).
public enum TrainingEvent {
    case message(String)
    /// An update's row, the run's length, and the seconds left (`TrainingRun.secondsLeft`).
    case update(MetricsRow, total: Int, secondsLeft: Double?)
    case evaluation(MetricsRow)
    case checkpoint(path: String, step: Int)
    case adapterSaved(path: String, why: String)
    case alert(String)
}

/// Errors of a run that are the user's to fix.
public enum TrainingError: Error, CustomStringConvertible {
    case noRun(String)
    case nothingToTrain(String)
    case tooLarge(String)
    case diverged(step: Int)

    public var description: String {
        switch self {
        case let .noRun(p): "\(p): not a run directory with a checkpoint (config.json and checkpoint-N/ expected)"
        case let .nothingToTrain(why): why
        case let .tooLarge(why): why
        case let .diverged(step): "the loss is not finite at update \(step) even after restoring the last checkpoint; lower --lr"
        }
    }
}

/// A fine-tuning run: the model with its adapters, the data in order, AdamW, the LR schedule,
/// the EMA, and the run directory (RunLayout: config.json, metrics.jsonl, checkpoint-N/,
/// lora_best/, lora_best_ema/, lora_final/, lora_final_ema/).
///
/// Determinism: the batch order is a pure function of (seed, epoch); dropout masks of (seed,
/// update, micro-batch, layer, linear); every kernel's summation order is fixed for a thread
/// count. A checkpoint holds every other piece of state, so a resumed run repeats the updates
/// an uninterrupted one makes, bit for bit.
public final class TrainingRun {
    public let config: TrainingConfig
    public let directory: String
    public let model: DecoderModel
    public let lora: ModelAdapters
    public let trainer: Trainer
    public let optimizer: AdamW
    public let schedule: LRSchedule
    public let ema: EMA?
    public let plan: TrainingPlan?
    /// SFT examples or preference pairs (with their reference log-probabilities for DPO).
    public let train: any TrainingData
    public let validation: any TrainingData
    public let objective: any TrainingObjective
    public let totalUpdates: Int
    public private(set) var step = 0
    public private(set) var bestValLoss = Double.infinity
    /// Where the best validation loss so far came from: its update and whether the live
    /// weights (rather than the EMA's) scored it; nil before a full evaluation after update 0.
    public private(set) var best: (step: Int, live: Bool)?
    /// The adapter directory holding the best weights: lora_best (live weights) or lora_best_ema.
    public var bestAdapter: String? {
        best.map { directory + "/" + RunLayout.adapter(.best, ema: !$0.live && ema != nil) }
    }
    private var iterator: any TokenBatchStream
    private var lastCheckpointStep = -1
    private let started = Date()
    private var recentLosses: [Double] = []
    /// This process's update times (the first, which pays for first-touch allocations, is not
    /// counted in the ETA) and the seconds one pass over the whole validation set took.
    private var updateSeconds: [(seconds: Double, trained: Int)] = []
    private var validationPassSeconds: Double?
    private var recentSpeeds: [Double] = []
    /// What the memory estimate said the run needs (set by the caller): RSS above it by
    /// `memoryMargin` is said once, on screen and in metrics.jsonl, before the machine swaps.
    public var memoryBudgetBytes: Int?
    public static let memoryMargin = 1.25
    private var memoryWarned = false
    /// The metrics' charts and TensorBoard events; nil on ranks that do not write.
    private let report: RunReport?
    /// The ranks of a data-parallel run (nil: one process). `config.batchSize` is per rank.
    public let world: DataParallel?
    /// Whether this process writes the run directory: rank 0, or the only process.
    public var isWriter: Bool { world?.isWriter ?? true }
    /// Ranks training together now.
    public var ranks: Int { world?.size ?? 1 }
    /// Sequences (pairs) per micro-batch over every rank: --batch-size × the ranks the run
    /// started on (`TrainingConfig.ranks`), split over the ranks it runs on.
    public var globalMicroBatch: Int { config.batchSize * (config.ranks ?? 1) }
    /// Sequences (pairs) per update: the global micro-batch × --grad-accum.
    public var globalBatch: Int { globalMicroBatch * config.gradAccum }

    /// A new run (`resume` false: the directory must not hold a checkpoint) or the continuation of
    /// the one in `directory` from its newest complete checkpoint.
    ///
    /// `train` and `validation` are what the objective (`config.objective`) reads: SFT examples
    /// for sft, preference pairs otherwise. DPO computes the reference log-probabilities of
    /// every pair first (or reads them back from the run, `ReferenceLogProbs`).
    ///
    /// `world`: the ranks of a data-parallel run; `config.batchSize` is then per rank (as
    /// accelerate's per_device_train_batch_size), and only rank 0 writes the run directory.
    public init(config: TrainingConfig, directory: String, model: DecoderModel, train: any TrainingData, validation: any TrainingData,
                resume: Bool, world: DataParallel? = nil, onEvent: (TrainingEvent) -> Void) throws {
        var config = config
        self.directory = directory
        self.world = world
        self.model = model
        let kind = config.objectiveKind
        guard (train is PreferenceDataSet) == kind.usesPairs, (validation is PreferenceDataSet) == kind.usesPairs else {
            throw TrainingError.nothingToTrain(kind.usesPairs
                ? "\(train.source): the \(kind.rawValue) objective trains on preference pairs ({prompt, chosen, rejected} rows)"
                : "\(train.source): sft trains on examples, not preference pairs (pass --objective dpo, orpo, simpo or reward)")
        }
        guard train.count > 0 else { throw TrainingError.nothingToTrain("\(train.source): no training examples") }
        guard train.trainedTokenCount > 0 else { throw TrainingError.nothingToTrain("\(train.source): every label is masked") }
        objective = config.makeObjective
        let (loraConfig, trainsNorms) = try config.trainedLoRA
        let trained = try ModelAdapters(model: model, config: loraConfig, trainNorms: trainsNorms, scoreHead: kind == .reward, seed: config.seed)
        if let from = config.loadLoraFrom {
            try AdapterFiles.load(into: trained, from: from)
            onEvent(.message("adapters loaded from \(from)"))
        }
        if let frozen = config.frozenAdapters, !frozen.isEmpty {
            let set = AdapterSet(base: model)
            for directory in frozen { try set.load(directory, name: directory) }
            lora = try trained.stacking(set.names.map { (name: $0, adapters: try set.adapters($0)) })
            onEvent(.message("stacked frozen on them: " + frozen.joined(separator: ", ")))
        } else {
            lora = trained
        }
        trainer = Trainer(model: model, lora: lora, gradientCheckpointing: config.gradCheckpoint, objective: objective)
        if resume, let inUse = config.computeDtypeInUse {
            // What the run computed in when it started. `auto` moved to a CPU without bf16 goes
            // on in fp32 rather than stop; an explicit bf16 is refused there, as at the start.
            if inUse == .bf16, config.computeDtype == .auto, !ComputeRuntime.bf16Available {
                trainer.computeDType = .fp32
                onEvent(.message("compute dtype: fp32 — the run started in bf16 (auto) but this CPU has no AVX512-BF16; "
                                 + "updates from here differ from an uninterrupted run by bf16's rounding"))
            } else {
                trainer.computeDType = try inUse.resolved()
            }
        } else if resume {
            // A run from before the choice was recorded: resolved as it was then (auto: bf16
            // wherever the CPU has it).
            trainer.computeDType = try (config.computeDtype ?? .fp32).resolved()
        } else {
            let probe = validation.evaluationBatches(batchSize: 4).first
            let (dtype, why) = try (config.computeDtype ?? .fp32).resolved(model: model, lora: lora, probe: probe)
            trainer.computeDType = dtype
            config.computeDtypeInUse = dtype == .bf16 ? .bf16 : .fp32
            if config.computeDtype == .auto { onEvent(.message("compute dtype: \(dtype) (\(why))")) }
        }
        if let world {
            // One dtype for every rank: the ranks must compute one model's gradients.
            let everyRankBF16 = try world.all(trainer.computeDType == .bf16)
            if !everyRankBF16, trainer.computeDType == .bf16 {
                trainer.computeDType = .fp32
                config.computeDtypeInUse = .fp32
                onEvent(.message("compute dtype: fp32 — another rank computes in fp32 (no AVX512-BF16 there, or auto's probe chose it)"))
            }
        }
        let ranks = world?.size ?? 1
        if !resume { config.ranks = ranks > 1 ? ranks : nil }
        self.config = config
        optimizer = AdamW(parameters: lora.parameters, .init(beta1: config.beta1, beta2: config.beta2, eps: config.eps,
                                                             weightDecay: config.weightDecay), kind: config.optim ?? .adamw)
        if let ratio = config.loraplusLrRatio { optimizer.lrScales = LoRAPlus.scales(for: lora.parameters, ratio: ratio) }
        let micro = config.batchSize * (config.ranks ?? 1)
        let perEpoch = (train.count + micro - 1) / micro
        let updatesPerEpoch = max(1, perEpoch / config.gradAccum)
        totalUpdates = config.maxSteps ?? max(1, Int((Double(updatesPerEpoch) * config.epochs).rounded(.up)))
        schedule = LRSchedule(config.schedule, baseLR: config.lr,
                              warmup: config.warmupSteps.map { .steps($0) } ?? .ratio(config.warmupRatio), totalSteps: totalUpdates)
        ema = config.ema > 0 ? EMA(parameters: lora.parameters, beta: config.ema, every: config.emaEvery, warmup: config.emaWarmup ?? false) : nil
        plan = config.plan ? TrainingPlan(totalUpdates: totalUpdates) : nil

        var (train, validation) = (train, validation)
        if let preference = objective as? PreferenceObjective, preference.needsReference,
           let t = train as? PreferenceDataSet, let v = validation as? PreferenceDataSet {
            // The reference is fixed before any update: a frozen --ref-adapter, else the weights
            // the run starts from (the adapter it loads; the base itself when it starts fresh,
            // B being zero: then the adapters are left out of the pass altogether). A resumed
            // run restores its checkpoint only below, so these are still the starting weights.
            let describing = config.refAdapter.map { "adapter \($0)" }
                ?? config.loadLoraFrom.map { "adapter \($0) as loaded" } ?? "base model (adapter off)"
            (train, validation) = try ReferenceLogProbs.attach(
                train: t, validation: v, directory: world.map { $0.isWriter ? directory : $0.scratch } ?? directory, describing: describing,
                pairsPerBatch: config.evalBatchSize ?? 4 * config.batchSize,
                reference: { [lora] () throws -> Trainer in
                    if let path = config.refAdapter {
                        let set = AdapterSet(base: model)
                        try set.load(path, name: path)
                        return Trainer(model: model, lora: try set.adapters(path))
                    }
                    return Trainer(model: model, lora: config.loadLoraFrom == nil && (config.frozenAdapters ?? []).isEmpty ? .disabled(for: model) : lora)
                }, onEvent: onEvent)
        }
        self.train = train
        self.validation = validation
        iterator = try train.batchStream(batchSize: micro, seed: config.seed, state: nil, groupByLength: config.groupByLength ?? false)

        let fm = FileManager.default
        let writes = world?.isWriter ?? true
        if resume {
            let newest = try Self.latestCheckpoint(in: directory, world: world)
            if world?.isWriter ?? true {
                for (path, reason) in Checkpoint.damaged(in: directory, newerThan: newest) {
                    onEvent(.message("skipped \(path), which is damaged (\(reason))" + (newest.map { "; resuming from \($0)" } ?? "")))
                }
            }
            guard let latest = newest else { throw TrainingError.noRun(directory) }
            let state = try Checkpoint.restore(from: latest, optimizer: optimizer, ema: ema)
            step = state.step
            lastCheckpointStep = step
            let before = Int(state.rngStates["world_size"] ?? 1)
            if before != ranks {
                onEvent(.message("resumed on \(ranks) rank(s); the run trained on \(before) until update \(step): it goes on from the same data "
                                 + "position with the same global batch (\(micro) per micro-batch, split over \(ranks) rank(s)); losses differ "
                                 + "from an uninterrupted run in rounding" + (config.loraDropout > 0 ? " and in dropout masks" : "")))
            }
            iterator = try train.batchStream(batchSize: micro, seed: config.seed,
                                             state: try state.decodeDataState(BatchIterator.State.self), groupByLength: config.groupByLength ?? false)
            bestValLoss = state.rngStates["best_val_loss_bits"].map { Double(bitPattern: $0) } ?? .infinity
            if let at = state.rngStates["best_step"] { best = (Int(at), state.rngStates["best_is_live"] == 1) }
            if writes { try Self.dropMetrics(after: step, in: directory) }
            onEvent(.message("resumed from \(latest) at update \(step) of \(totalUpdates)"))
        } else if writes {
            if Checkpoint.latest(in: directory) != nil {
                throw TrainingError.nothingToTrain("\(directory) already holds a run; continue it with --resume \(directory) or pick another --out")
            }
            try fm.createDirectory(atPath: directory, withIntermediateDirectories: true)
            let encoder = JSONEncoder()
            encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
            encoder.keyEncodingStrategy = .convertToSnakeCase
            try AtomicFile.write(to: directory + "/" + RunLayout.configFile, bytes: [UInt8](try encoder.encode(config)))
            try? fm.removeItem(atPath: directory + "/" + RunLayout.metricsFile)
        }
        report = writes ? try RunReport(directory: directory, target: config.reportTo ?? .none, resumedAt: resume ? step : nil) : nil
    }

    public static func loadConfig(run directory: String) throws -> TrainingConfig {
        try decodeConfig(try configData(run: directory), run: directory)
    }

    /// The bytes of a run's config.json.
    public static func configData(run directory: String) throws -> Data {
        guard let data = FileManager.default.contents(atPath: directory + "/" + RunLayout.configFile) else { throw TrainingError.noRun(directory) }
        return data
    }

    public static func decodeConfig(_ data: Data, run directory: String) throws -> TrainingConfig {
        guard !data.isEmpty else { throw TrainingError.noRun(directory) }
        let decoder = JSONDecoder()
        decoder.keyDecodingStrategy = .convertFromSnakeCase
        return try decoder.decode(TrainingConfig.self, from: data)
    }

    // MARK: The loop

    /// Trains until `totalUpdates` or until `shouldStop` says so after an update (then a
    /// checkpoint is written first). Returns whether the run finished.
    @discardableResult
    public func run(shouldStop: () -> Bool = { false }, onEvent: (TrainingEvent) -> Void) throws -> Bool {
        if step == 0 {
            onEvent(.message(lora.summaryLine(baseCount: model.parameterCount)))
            try checkGradientsFlow(onEvent)
            try evaluate(kind: "full", onEvent)   // the baseline
        } else {
            try checkGradientsFlow(onEvent)
        }
        while step < totalUpdates {
            let row = try update(onEvent)
            if let row {
                updateSeconds.append((row.updateS ?? 0, row.trainedTokens ?? 0))
                onEvent(.update(row, total: totalUpdates, secondsLeft: secondsLeft))
                try append(row)
            }
            if let warning = watchMemory() {
                onEvent(.alert(warning))
                try append(with(MetricsRow(step: step)) { $0.event = "memory: \(warning)" })
            }
            var alert: String? = nil
            if let row, let loss = row.loss, let speed = row.tokensPerS { alert = watch(loss: loss, speed: speed) }
            if let world {
                // The speed is each rank's own measure: an alert on any rank is one on all, as
                // its evaluation and checkpoint are collective.
                let anyAlert = try world.any(alert != nil)
                alert = anyAlert ? alert ?? "alert on another rank" : nil
                if step % DataParallel.checkEvery == 0 { try world.checkIdentical(lora.parameters, step: step) }
            }
            if let alert {
                onEvent(.alert(alert))
                try append(with(MetricsRow(step: step)) { $0.event = "alert: \(alert)" })
                try evaluate(kind: "alert", onEvent)
                try saveCheckpoint(onEvent)
            } else if fullEvaluationDue(afterUpdate: step) {
                try evaluate(kind: "full", onEvent)
                try saveCheckpoint(onEvent)
            } else if quickEvaluationDue(afterUpdate: step) {
                try evaluate(kind: "quick", onEvent)
            }
            if let every = config.saveEvery, step % every == 0, lastCheckpointStep != step { try saveCheckpoint(onEvent) }
            if step < totalUpdates, try stopRequested(shouldStop() || stopFileFound) {
                if lastCheckpointStep != step { try saveCheckpoint(onEvent) }
                if stopFileFound {
                    try? FileManager.default.removeItem(atPath: directory + "/" + RunLayout.stopFile)
                    onEvent(.message("\(RunLayout.stopFile) found in \(directory): stopped after update \(step) (removed it)"))
                }
                try report?.redraw()
                return false
            }
        }
        try report?.redraw()
        if let world { try world.checkIdentical(lora.parameters, step: step) }
        guard isWriter else { return true }
        let final = directory + "/" + RunLayout.adapter(.final), finalEMA = directory + "/" + RunLayout.adapter(.final, ema: true)
        try AdapterFiles.save(lora, to: final, baseModel: config.model)
        onEvent(.adapterSaved(path: final, why: "final"))
        if let ema {
            try ema.withAveragedWeights { try AdapterFiles.save(lora, to: finalEMA, baseModel: config.model) }
            onEvent(.adapterSaved(path: finalEMA, why: "final, EMA weights"))
        }
        return true
    }

    /// The newest complete checkpoint of the run: on a data-parallel run rank 0's, which the other
    /// ranks receive a copy of (`DataParallel.sharedCheckpoint`, collective).
    private static func latestCheckpoint(in directory: String, world: DataParallel?) throws -> String? {
        guard let world else { return Checkpoint.latest(in: directory) }
        return try world.sharedCheckpoint(in: directory)
    }

    /// This process's share of a batch: all of it for one process, its rows on a rank (nil: none).
    private func share(of batch: TokenBatch) -> TokenBatch? {
        guard let world else { return batch }
        return batch.shard(rank: world.rank, of: world.size)
    }

    /// Whether rank 0 (or the only process) finds RUN/STOP (`RunLayout.stopFile`).
    private var stopFileFound: Bool { isWriter && FileManager.default.fileExists(atPath: directory + "/" + RunLayout.stopFile) }

    /// Whether the run stops here: asked on this process, or on any rank of a data-parallel run
    /// (every rank must stop after the same update).
    private func stopRequested(_ asked: Bool) throws -> Bool { try world?.any(asked) ?? asked }

    /// One optimizer update over grad_accum micro-batches. Returns its metrics row, or nil when a
    /// non-finite loss or gradient made it skip the update (the last good state is restored).
    private func update(_ onEvent: (TrainingEvent) -> Void) throws -> MetricsRow? {
        let start = Date()
        lora.parameters.forEach { $0.zeroGrad() }
        let tokens = (0..<config.gradAccum).map { _ in iterator.nextBatch() }
        let scored = tokens.reduce(0) { $0 + $1.scoredTokens }
        // The loss is a mean over the update's scored tokens (sft) or pairs (preference objectives).
        let normalizer = tokens.reduce(0) { $0 + objective.normalizer($1) }
        let next = step + 1
        var loss = LossSum()
        // The normalizer is the global batch's on every rank (each draws the whole of it), so
        // the summed gradients are those of one process training on every row.
        // With overlap, each block's sum over the ranks starts as the last micro-batch's backward
        // leaves that block.
        let overlapped = world.flatMap { $0.overlaps ? $0.overlapped(lora.parameters) : nil }
        overlapped?.begin()
        if normalizer > 0 {
            for (a, b) in tokens.enumerated() {
                guard let part = share(of: b) else { continue }
                let seed = dropoutSeed(update: next, micro: a + (world?.rank ?? 0) * config.gradAccum)
                if a == tokens.count - 1, let overlapped { trainer.afterBlockBackward = overlapped.blockDone }
                defer { trainer.afterBlockBackward = nil }
                loss = loss + (try trainer.accumulateGradients(part, gradScale: 1 / Float(normalizer), dropoutSeed: seed))
            }
        }
        if let world {
            if let overlapped {
                try overlapped.finish()
            } else {
                try StepProfile.measure(.optimizer) { try world.allReduceGradients(lora.parameters) }
            }
            loss = try world.combine(loss)
        }
        let norm = StepProfile.measure(.optimizer) { Double(clipGradNorm(lora.parameters, maxNorm: config.maxGradNorm)) }
        guard loss.mean.isFinite || normalizer == 0, norm.isFinite else {
            onEvent(.alert(String(format: "update %d: loss %@, grad norm %@ — update skipped", next, "\(loss.mean)", "\(norm)")))
            try append(with(MetricsRow(step: next)) { $0.event = "non-finite loss or gradient: update skipped" })
            try restoreLastGood(onEvent)
            step = next
            return nil
        }
        let lr = schedule.lr(at: step)
        StepProfile.measure(.optimizer) { optimizer.update(lr: lr) }
        if let ema, ema.isDue(afterUpdate: next) { StepProfile.measure(.ema) { ema.update(afterUpdate: next) } }
        step = next
        let seconds = Date().timeIntervalSince(start)
        let processed = tokens.reduce(0) { $0 + $1.inputIds.count }
        var row = MetricsRow(step: step)
        row.loss = loss.mean
        row.lr = lr
        row.gradNorm = norm
        row.tokensPerS = Double(processed) / seconds
        row.tokens = tokens.reduce(0) { $0 + $1.realTokens }
        row.updateS = seconds
        row.trainedTokens = scored
        row.metrics = loss.metricMeans
        row.rssMb = Double(RuntimeMemory.currentRSS()) / 1_048_576
        row.elapsedS = Date().timeIntervalSince(started)
        return row
    }

    private func dropoutSeed(update: Int, micro: Int) -> UInt64? {
        guard lora.config.dropout > 0 else { return nil }
        return DropoutStream.step(seed: config.seed, update: update, micro: micro)
    }

    /// Once: this process's RSS above the memory estimate by `memoryMargin` (the estimate missed
    /// something, or memory leaks), with what to change before the machine swaps.
    private func watchMemory() -> String? {
        guard !memoryWarned, let budget = memoryBudgetBytes, budget > 0 else { return nil }
        let rss = RuntimeMemory.currentRSS()
        guard Double(rss) > Self.memoryMargin * Double(budget) else { return nil }
        memoryWarned = true
        let physical = Double(ProcessInfo.processInfo.physicalMemory)
        return String(format: "RSS %.0f MiB at update %d is %.0f%% above the memory estimate of %.0f MiB (%.0f%% of the machine's %.1f GiB); "
                      + "if it keeps growing the machine will swap: stop (touch RUN/STOP) and lower --batch-size or --max-len, or add --grad-checkpoint",
                      Double(rss) / 1_048_576, step, 100 * (Double(rss) / Double(budget) - 1), Double(budget) / 1_048_576,
                      100 * Double(rss) / physical, physical / 1_073_741_824)
    }

    /// A loss spike (above 2× the median of the last 20 and above it by 1) or a collapse of
    /// tokens/s (below a third of the recent median) gives an alert.
    private func watch(loss: Double, speed: Double) -> String? {
        defer {
            recentLosses = Array((recentLosses + [loss]).suffix(20))
            recentSpeeds = Array((recentSpeeds + [speed]).suffix(20))
        }
        guard recentLosses.count >= 10 else { return nil }
        let ml = recentLosses.sorted()[recentLosses.count / 2], ms = recentSpeeds.sorted()[recentSpeeds.count / 2]
        if loss > 2 * ml && loss > ml + 1 { return String(format: "loss spike at update %d: %.4f against a recent median of %.4f", step, loss, ml) }
        if config.speedAlerts, speed < ms / 3 { return String(format: "tokens/s collapsed at update %d: %.1f against a recent median of %.1f", step, speed, ms) }
        return nil
    }

    /// "LoRA grads flowing": whether one micro-batch's gradient is non-zero for some adapter,
    /// printed at the start and after a resume (a run where none flows stops here with
    /// `nothingToTrain`). Leaves no trace in the state.
    private func checkGradientsFlow(_ onEvent: (TrainingEvent) -> Void) throws {
        let probe = iterator   // a copy: the real order is untouched
        var p = probe
        let whole = p.nextBatch()
        lora.parameters.forEach { $0.zeroGrad() }
        var flowing = false
        if let batch = share(of: whole) {
            _ = try trainer.accumulateGradients(batch, gradScale: 1 / Float(max(1, objective.normalizer(batch))), dropoutSeed: nil)
            flowing = lora.parameters.contains { p in p.grad.buffer.contains { $0 != 0 && $0.isFinite } }
        }
        if let world { flowing = try world.any(flowing) }
        lora.parameters.forEach { $0.zeroGrad() }
        onEvent(.message("LoRA grads flowing: \(flowing)"))
        guard flowing else { throw TrainingError.nothingToTrain("no gradient reaches the adapters (every label masked in the first batch?)") }
    }

    // MARK: Evaluation

    /// Seconds until the run ends, from what this process has measured: its recent updates'
    /// time per trained token (the first update, which pays for first-touch allocations, aside)
    /// times the trained tokens an update holds on average over the data — so that an order
    /// that is not uniform in length (--group-by-length puts the longest rows first) does not
    /// skew it — for the updates left, plus the evaluations still due at the cost the last
    /// full one took per pass over the validation set (the baseline's, before any other: so the
    /// estimate holds from the first updates). nil before two updates.
    public var secondsLeft: Double? {
        let recent = updateSeconds.dropFirst().suffix(20)
        guard !recent.isEmpty else { return nil }
        let left = totalUpdates - step
        guard left > 0 else { return 0 }
        let seconds = recent.reduce(0) { $0 + $1.seconds }, trained = recent.reduce(0) { $0 + $1.trained }
        let perUpdateTokens = Double(train.trainedTokenCount) / Double(max(1, train.count)) * Double(globalBatch)
        let perUpdate = trained > 0 && perUpdateTokens > 0 ? perUpdateTokens * seconds / Double(trained) : seconds / Double(recent.count)
        return Double(left) * perUpdate + validationPassesLeft * (validationPassSeconds ?? 0)
    }

    /// Passes over the validation set the evaluations after this update will make: two per
    /// full evaluation with an EMA (its weights and the live ones), one without; a quick
    /// evaluation its share of the batches.
    var validationPassesLeft: Double {
        guard step < totalUpdates, validation.count > 0 else { return 0 }
        let batches = (validation.count + evaluationBatchSize - 1) / evaluationBatchSize
        var passes = 0.0
        for s in (step + 1)...totalUpdates {
            if fullEvaluationDue(afterUpdate: s) {
                passes += ema == nil ? 1 : 2
            } else if quickEvaluationDue(afterUpdate: s) {
                passes += Double(min(config.quickBatches, batches)) / Double(batches)
            }
        }
        return passes
    }

    /// A full evaluation (and a checkpoint) follows update `s`: a plan boundary, every
    /// --eval-every, and the last update. `run()` and the ETA both ask this.
    private func fullEvaluationDue(afterUpdate s: Int) -> Bool {
        (plan?.isBoundary(afterUpdate: s) ?? false) || (config.evalEvery.map { s % $0 == 0 } ?? false) || s == totalUpdates
    }

    /// A quick evaluation follows update `s` (when no full one does): every --quick-every.
    private func quickEvaluationDue(afterUpdate s: Int) -> Bool { config.quickEvery.map { s % $0 == 0 } ?? false }

    /// Sequences per evaluation batch: --eval-batch-size, else 4 × --batch-size.
    private var evaluationBatchSize: Int { config.evalBatchSize ?? 4 * config.batchSize }

    /// Mean validation loss with the EMA weights swapped in (when there is an EMA), on the whole
    /// validation set (`full`, `alert`) or its first `quickBatches` batches (`quick`); full
    /// evaluations with an EMA score the live weights too (`val_loss_live`). A new best
    /// validation loss of a full or alert evaluation after update 0 — the better of the EMA's
    /// and the live weights' — saves lora_best (the live weights) and, with an EMA,
    /// lora_best_ema; `best` says which of the two scored it (`bestAdapter`).
    private func evaluate(kind: String, _ onEvent: (TrainingEvent) -> Void) throws {
        guard validation.count > 0 else { return }
        var batches = validation.evaluationBatches(batchSize: evaluationBatchSize)
        if kind == "quick" { batches = Array(batches.prefix(config.quickBatches)) }
        /// Sharded over the ranks (batch i on rank i mod N) and summed in batch order, as one process sums them.
        func measure() throws -> LossSum {
            guard let world else { return try batches.reduce(LossSum()) { acc, b in acc + (try trainer.loss(b)) } }
            let mine = try batches.indices.filter { $0 % world.size == world.rank }.map { (index: $0, loss: try trainer.loss(batches[$0])) }
            return try world.combine(numbered: mine)
        }
        let loss: LossSum
        var live: LossSum? = nil
        let evaluationStart = Date()
        // At update 0 (a fresh run's baseline) the EMA's shadows are still copies of the live
        // weights: one pass scores both.
        let livePass = ema != nil && kind != "quick" && step > 0
        if let ema {
            loss = try ema.withAveragedWeights(measure)
            if kind != "quick" { live = livePass ? try measure() : loss }
        } else {
            loss = try measure()
        }
        if kind != "quick" { validationPassSeconds = Date().timeIntervalSince(evaluationStart) / (livePass ? 2 : 1) }
        var row = MetricsRow(step: step)
        row.valLoss = loss.mean
        row.valLossLive = live?.mean
        if config.objectiveKind == .sft { row.valPpl = exp(loss.mean) }
        row.valAccuracy = loss.metric("rewards/accuracies") ?? loss.metric("accuracy")
        row.metrics = Dictionary(uniqueKeysWithValues: loss.metricMeans.map { ("val_" + $0.key, $0.value) })
        row.kind = kind
        row.ema = ema != nil
        row.elapsedS = Date().timeIntervalSince(started)
        onEvent(.evaluation(row))
        try append(row)
        try report?.redraw()
        let liveBetter = live.map { $0.mean < loss.mean } ?? (ema == nil)
        let candidate = liveBetter ? (live?.mean ?? loss.mean) : loss.mean
        if kind != "quick", step > 0, candidate < bestValLoss {
            bestValLoss = candidate
            best = (step, liveBetter)
            guard isWriter else { return }
            let livePath = directory + "/" + RunLayout.adapter(.best), emaPath = directory + "/" + RunLayout.adapter(.best, ema: true)
            try AdapterFiles.save(lora, to: livePath, baseModel: config.model)
            if let ema {
                try ema.withAveragedWeights { try AdapterFiles.save(lora, to: emaPath, baseModel: config.model) }
            }
            let which = ema == nil ? "" : liveBetter ? String(format: ", live weights; EMA %.4f", loss.mean)
                : String(format: ", EMA weights; live %.4f", live?.mean ?? .nan)
            onEvent(.adapterSaved(path: bestAdapter ?? livePath, why: String(format: "best val_loss %.4f%@", candidate, which)))
        }
    }

    // MARK: State

    private func saveCheckpoint(_ onEvent: (TrainingEvent) -> Void) throws {
        if let world { try world.checkIdentical(lora.parameters, step: step) }
        lastCheckpointStep = step
        guard isWriter else { return }
        var marks: [String: UInt64] = ["best_val_loss_bits": bestValLoss.bitPattern, "world_size": UInt64(ranks)]
        if let best {
            marks["best_step"] = UInt64(best.step)
            marks["best_is_live"] = best.live ? 1 : 0
        }
        let state = try TrainingState(step: step, schedulerStep: step, rngStates: marks,
                                      dataState: iterator.state)
        let path = try Checkpoint.save(state, optimizer: optimizer, ema: ema, in: directory, keepLast: config.keepLast)
        onEvent(.checkpoint(path: path, step: step))
    }

    /// After a non-finite update: the parameters are untouched (the update was not applied), so
    /// only non-finite values already in them need the checkpoint back.
    private func restoreLastGood(_ onEvent: (TrainingEvent) -> Void) throws {
        lora.parameters.forEach { $0.zeroGrad() }
        let broken = lora.parameters.contains { p in p.value.buffer.contains { !$0.isFinite } }
        guard broken else { return }
        guard let latest = try Self.latestCheckpoint(in: directory, world: world) else { throw TrainingError.diverged(step: step + 1) }
        _ = try Checkpoint.restore(from: latest, optimizer: optimizer, ema: ema)
        onEvent(.message("restored \(latest)"))
    }

    private func append(_ row: MetricsRow) throws {
        guard isWriter else { return }
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]   // TRL's metric names: rewards/chosen
        var line = try encoder.encode(row)
        line.append(0x0A)
        let path = directory + "/" + RunLayout.metricsFile
        if !FileManager.default.fileExists(atPath: path) { _ = FileManager.default.createFile(atPath: path, contents: nil) }
        let h = try FileHandle(forWritingTo: URL(fileURLWithPath: path))
        defer { try? h.close() }
        try h.seekToEnd()
        try h.write(contentsOf: line)
        try report?.record(row)
    }

    /// Rows past `step` belong to updates a resumed run makes again: dropped (atomically).
    static func dropMetrics(after step: Int, in directory: String) throws {
        let path = directory + "/" + RunLayout.metricsFile
        guard let data = FileManager.default.contents(atPath: path) else { return }
        let decoder = JSONDecoder()
        var kept: [UInt8] = []
        for line in data.split(separator: 0x0A, omittingEmptySubsequences: true) {
            guard let row = try? decoder.decode(MetricsRow.self, from: Data(line)), row.step <= step else { continue }
            kept += line
            kept.append(0x0A)
        }
        try AtomicFile.write(to: path, bytes: kept)
    }
}

extension TokenBatch {
    /// The ids and labels of a data batch, as the trainer runs them.
    init(_ b: Batch) {
        self.init(inputIds: b.inputIds, labels: b.labels, sequences: b.batchSize, length: b.sequenceLength, lengths: b.lengths)
    }
}

@inline(__always) func with<T>(_ value: T, _ body: (inout T) -> Void) -> T {
    var v = value
    body(&v)
    return v
}
