import ArgumentParser
import Foundation
import QLoRA

extension LRSchedule.Kind: ExpressibleByArgument {}
extension ObjectiveKind: ExpressibleByArgument {}
extension ComputeDTypeChoice: ExpressibleByArgument {
    /// `--compute-dtype`'s help, for every command that computes with a model.
    static func help(default choice: ComputeDTypeChoice) -> ArgumentHelp {
        ArgumentHelp("What the frozen 4-bit GEMMs and the LM head compute in: fp32, bf16 (inputs and weights rounded to bf16, fp32 sums: "
                     + "about twice as fast; needs AVX512-BF16, see qlora info) or auto (bf16 where the CPU has it\(choice == .auto ? " and a probe batch's loss in bf16 is within 0.5% of fp32's" : "")). "
                     + "Adapters, norms and attention stay fp32. Decoding (products under 8 rows) in bf16 takes int8 dot products instead: "
                     + "the input quantized per 32 values to 8 bits (llama.cpp's Q8_0) against Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K and Q6_K weights "
                     + "on CPUs with AVX512-VNNI, 2-3x as fast as fp32; other weights (NF4, FP4, Q2_K, Q3_K) decode in fp32.",
                     valueName: "dtype")
    }
}
extension PreferenceLoss.DPOKind: ExpressibleByArgument {}
extension SFTFormat: ExpressibleByArgument {}
extension ReportTarget: ExpressibleByArgument {}

struct Train: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Fine-tune LoRA adapters on a frozen 4-bit model (QLoRA), resumable.",
        discussion: """
            The base model stays 4-bit and frozen; LoRA adapters (and with --train-norms the \
            RMSNorm weights) train in fp32 with AdamW, with an EMA of them for evaluation and \
            the "best" saves.

            Data: JSON Lines or .json array rows {"text"}, {"prompt","completion"} (strings, or \
            TRL's message lists), {"messages":[{"role","content"}]}, ShareGPT \
            {"conversations":[{"from","value"}]} or Alpaca {"instruction","input","output"} \
            (conversations rendered with the model's own Jinja chat template, tool calls \
            included, only assistant turns trained; Alpaca as a user/assistant conversation, or \
            with the Alpaca prompt when the model has no template), CSV with a --text-column, \
            or a .txt file for language modelling. --data and --val-file take files, folders \
            and globs, repeated. A bad row is an error naming file:line (--skip-bad skips and \
            counts them); a row whose trained tokens all lie past --max-len is dropped and counted.

            Schedule: with --plan (the default) a pilot of 5% of the updates, 8 equal chunks \
            and a tail, each ending with a full evaluation and a checkpoint; also every \
            --eval-every and --save-every updates, and a quick evaluation on a few batches \
            every --quick-every. A loss spike or a collapse of tokens/s evaluates and \
            checkpoints at once; a NaN/inf loss skips the update. Ctrl-C writes a checkpoint \
            before leaving; --resume RUN continues exactly where it stopped.

            The run directory holds config.json, metrics.jsonl (one JSON object per line: \
            training rows with step, loss, lr, grad_norm, tokens_per_s, rss_mb; evaluation \
            rows with step, val_loss, val_ppl), checkpoint-N/ (the newest --keep-last), and \
            the adapters lora_best, lora_best_ema, lora_final and lora_final_ema (the EMA \
            weights at the end) in PEFT's layout (qlora generate --adapter DIR; qlora export \
            --adapter RUN --ema merges lora_final_ema), and chart.svg (training and validation \
            loss, learning rate, tokens/s; chart.png too where rsvg-convert or ImageMagick is), \
            redrawn at each evaluation; qlora plot RUN… overlays runs. --report-to tensorboard \
            adds TensorBoard event files in RUN/tensorboard/.

            Objectives (--objective): sft (the default) trains on the data above. reward, dpo, \
            orpo and simpo train on preference pairs, TRL's rows {"prompt","chosen","rejected"} \
            (strings or message lists; without "prompt", their common prefix is the prompt; an \
            optional "margin" for reward), and --batch-size counts pairs (2 rows each): \
              reward  a score head on the last token, −log σ(r_chosen − r_rejected − margin) \
                      (+ --center-rewards); saved as PEFT's SEQ_CLS adapter; qlora score reads it \
              dpo     −log σ(β·((π_c − ρ_c) − (π_r − ρ_r))) against a reference ρ computed once \
                      before training and kept in the run (reference_logps.json): the base with \
                      the adapter off, the adapter --load-lora-from starts from, or --ref-adapter; \
                      --dpo-loss sigmoid|robust|hinge|ipo, --label-smoothing \
              orpo    NLL of the chosen rows + β·odds-ratio term, no reference \
              simpo   −log σ(β·(mean π_c − mean π_r) − γ), no reference (--simpo-gamma) \
            Pairs longer than --max-len are dropped and counted. metrics.jsonl then carries \
            TRL's metric names (rewards/chosen, rewards/accuracies, …) and val_accuracy.

            Several --load-lora-from: the first adapter trains on; the others are stacked on it \
            frozen (y = W·x + s·B·A·x + Σ s_i·B_i·A_i·x), so a new skill can be trained on top of \
            adapters kept as they are; generate with all of them: qlora generate --adapter RUN/lora_final \
            --adapter OTHER.

            Under mpirun (Open MPI) or mpiexec (MPICH), N ranks train one run data-parallel: \
            --batch-size is per rank, gradients are summed over the ranks each update, rank 0 \
            writes the run; pass --bind-to none and -x OMP_NUM_THREADS=<cores per rank> to \
            Open MPI (it binds each rank to one core by default). README: "Past one machine". \
            `touch RUN/STOP` stops any run after the update going on, with a checkpoint (mpirun \
            kills its ranks a second after Ctrl-C, too soon for that).

            Examples:
              qlora train --max-steps 100 --out runs/demo
                  SmolLM2-135M-Instruct on the demo SFT set
              qlora train --model smol-nf4 --data sft.jsonl --lora-r 16 --out runs/smol
              qlora train --resume runs/smol
              qlora train --objective dpo --load-lora-from runs/demo/lora_final --out runs/dpo
                  DPO on the demo preference pairs, from an SFT adapter (also the reference)
              qlora train --objective reward --max-steps 100 --out runs/rm
              qlora train --load-lora-from runs/a/lora_final --load-lora-from runs/b/lora_final --out runs/a-on-b
              mpirun -np 2 --bind-to none -x OMP_NUM_THREADS=1 qlora train --batch-size 2 --out runs/dp
                  2 ranks on this machine, 4 sequences per update
            """
    )

    @Option(help: "A GGUF file or a quantized model folder (one with no tokenizer, as quantize --shape writes, trains seeded random ids).")
    var model = "models/SmolLM2-135M-Instruct.Q4_1.gguf"
    @Option(help: "What to train for: sft, reward, dpo, orpo or simpo (preference pairs).") var objective = ObjectiveKind.sft
    @Option(parsing: .singleValue, help: "Training data: .jsonl, .json, .csv or .txt files, folders or globs, repeatable (preference objectives: JSON pairs; default the demo pairs).")
    var data: [String] = [Train.demoData]
    @Option(help: "Format of every data file, whatever its name: jsonl, csv or text.") var dataFormat: SFTFormat?
    @Option(help: "Train a synthetic shape on seeded random ids instead (memory and speed): \(SyntheticShape.allCases.map(\.rawValue).joined(separator: ", ")).")
    var shape: SyntheticShape?
    @Option(help: "Blocks of the synthetic shape to keep (default: all).") var layers: Int?
    @Option(parsing: .singleValue, help: "Validation data, as --data (default: the demo set's val.jsonl with the demo data, else --val-fraction of --data).")
    var valFile: [String] = []
    @Option(help: "Share of --data held out for validation when there is no --val-file.") var valFraction = 0.05
    @Option(help: "Longest example in tokens (longer ones are truncated; one with nothing trained within it is dropped).") var maxLen = 256
    @Flag(help: "Pack examples into rows of exactly --max-len tokens.") var packing = false
    @Option(help: "CSV column holding the text.") var textColumn = "text"
    @Flag(help: "Skip bad data rows (counted and reported) instead of stopping at the first.") var skipBad = false
    @Option(help: chatTemplateHelp)
    var chatTemplate: ChatTemplate.Family?
    @Option(help: QuantizedModel.KQuantTarget.help)
    var kQuants: QuantizedModel.KQuantTarget?
    @Option(help: ComputeDTypeChoice.help(default: .auto))
    var computeDtype: ComputeDTypeChoice = .auto

    @Option(help: "LoRA rank r.") var loraR = 16
    @Option(help: "LoRA alpha (scale alpha/r, or alpha/√r with --use-rslora).") var loraAlpha: Float = 32
    @Option(help: "Dropout on the adapters' input.") var loraDropout: Float = 0.05
    @Option(help: "Linears to adapt: PEFT names (q_proj,…,down_proj), GGUF names (attn_q,…), all-linear, or re:REGEX.")
    var loraTargets = "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj"
    @Option(help: "Adapt only the last N blocks.") var loraLayers: Int?
    @Flag(help: "rsLoRA: scale by alpha/√r.") var useRslora = false
    @Flag(help: ArgumentHelp(
        "DoRA (PEFT's use_dora): each adapted linear also trains a magnitude per output row, W' = m·(W + s·B·A)/‖W + s·B·A‖.",
        discussion: "The norm is of the dequantized 4-bit weight plus the adapter's product, detached as PEFT's; the adapter saves as PEFT's (lora_magnitude_vector) and merges with qlora merge / export. Costs one more frozen product per adapted linear with --lora-dropout > 0 (as PEFT's), little without."))
    var useDora = false
    @Option(help: ArgumentHelp(
        "How the adapters start, by PEFT's init_lora_weights names: default (A Kaiming-uniform, B = 0), gaussian, pissa, pissa_niter_K, olora, loftq.",
        discussion: "pissa, pissa_niter_K (randomized SVD, K power iterations) and olora take A and B from W's rank-r SVD or QR and train on the residual W − s·B·A; loftq alternates NF4 quantization and a rank-r SVD (--loftq-iter) so that Q + s·B·A ≈ W, best started from a 16/32-bit Hugging Face folder. These write the new base (an NF4 bitsandbytes folder) and the starting adapter into RUN/init before training, print ‖W − (Q + s·B·A)‖/‖W‖ against plain QLoRA's, and the run trains on RUN/init/base (adapters saved by the run go with that base)."))
    var initLoraWeights = "default"
    @Option(help: "LoftQ: alternations of NF4 quantization and rank-r SVD (PEFT's loftq_iter).") var loftqIter = 1
    @Flag(help: "Train the RMSNorm weights too (fp32).") var trainNorms = false
    @Option(parsing: .singleValue, help: ArgumentHelp(
        "Start from the adapters of this directory (PEFT layout); repeated, the others are stacked frozen on it.",
        discussion: "The first directory is trained further and saved; each further one adds its ΔW in every forward and backward, untrained and unsaved (recorded in config.json for --resume)."))
    var loadLoraFrom: [String] = []

    @Option(help: "Peak learning rate.") var lr = 2e-4
    @Option(help: "The optimizer, by TrainingArguments' names: adamw, or adamw_8bit (bitsandbytes' AdamW8bit: both moments in 8 bits, block-wise, for tensors of 4096 values and more; 2.06 bytes a value instead of 8).")
    var optim: AdamW.Kind = .adamw
    @Option(help: "LoRA+: lora_B matrices (and trained norms) learn at --lr × this, as PEFT's create_loraplus_optimizer (the paper suggests 8–16, with --lr about halved).")
    var loraplusLrRatio: Double?
    @Option(help: "LR schedule: constant, linear or cosine.") var schedule = LRSchedule.Kind.cosine
    @Option(help: "Warm-up updates (default: --warmup-ratio of them).") var warmupSteps: Int?
    @Option(help: "Warm-up as a share of the updates.") var warmupRatio = 0.03
    @Option(help: "AdamW weight decay.") var weightDecay = 0.0
    @Option(help: "Clip the global gradient norm to this.") var maxGradNorm = 1.0
    @Option(help: "Sequences per micro-batch (per rank under mpirun: N ranks train N × this each micro-batch).") var batchSize = 4
    @Flag(help: ArgumentHelp("Batch examples of similar length (the Trainer's group_by_length): less padding, so more tokens/s on data of mixed lengths.",
                             discussion: "The seeded order is cut into spans of 50 batches, each sorted longest first."))
    var groupByLength = false
    @Option(help: "Micro-batches per update.") var gradAccum = 1
    @Option(help: "Updates to run (default: --epochs over the data).") var maxSteps: Int?
    @Option(help: "Passes over the data when --max-steps is not given.") var epochs = 1.0
    @Option(help: "Seed of the adapters' init, the data order and dropout.") var seed: UInt64 = 42

    @Option(help: "EMA decay β of the trainable weights (0 turns the EMA off).") var ema = 0.999
    @Option(help: "Update the EMA every K updates (with β^K).") var emaEvery = 1
    @Flag(inversion: .prefixedNo, help: ArgumentHelp(
        "Warm the EMA's decay up with the update count n: min(β, (1 + n)/(10 + n)), as TF's and timm's EMA do.",
        discussion: "Without it a short run's EMA hardly moves (at 0.999, 100 updates leave the shadows 90% the starting weights); --no-ema-warmup keeps β fixed, the seed script's semantics."))
    var emaWarmup = true
    @Option(help: "Full evaluation and checkpoint every N updates (besides the plan's boundaries).") var evalEvery: Int?
    @Option(help: "Quick evaluation on --quick-batches batches every N updates.") var quickEvery: Int?
    @Option(help: "Batches of a quick evaluation.") var quickBatches = 4
    @Option(help: "Sequences per evaluation batch (default: 4 × --batch-size; no gradients are kept).") var evalBatchSize: Int?
    @Option(help: "Checkpoint every N updates.") var saveEvery: Int?
    @Option(help: "Checkpoints kept.") var keepLast = 3
    @Flag(inversion: .prefixedNo, help: "The pilot → 8 chunks → tail evaluation/checkpoint schedule.") var plan = true
    @Flag(help: "Per-block gradient checkpointing: less memory, one more forward.") var gradCheckpoint = false
    @Option(help: "After training, generate a reply to this chat message with the tuned model (and before, with the base).")
    var sample: String?

    @Option(help: "DPO/ORPO/SimPO temperature β (default: 0.1; SimPO 2.0).") var beta: Double?
    @Option(help: "DPO loss: sigmoid, robust, hinge or ipo.") var dpoLoss: PreferenceLoss.DPOKind?
    @Option(help: "Label smoothing ε of DPO sigmoid/robust and SimPO (share of pairs assumed flipped).") var labelSmoothing: Double?
    @Option(help: "SimPO's target reward margin γ.") var simpoGamma: Double?
    @Option(help: "Reward model: coefficient of mean((r_chosen + r_rejected)²), centring the scores.") var centerRewards: Double?
    @Option(help: "DPO's reference: a frozen adapter (default: the adapter --load-lora-from starts from, else the base).")
    var refAdapter: String?

    @Option(help: "Also write the scalars for: none or tensorboard (event files in RUN/tensorboard/; tensorboard --logdir RUN).")
    var reportTo = ReportTarget.none
    @Option(help: "AdamW β1.") var beta1 = 0.9
    @Option(help: "AdamW β2.") var beta2 = 0.999
    @Option(help: "AdamW ε.") var eps = 1e-8
    @Flag(inversion: .prefixedNo, help: "Alert (evaluate and checkpoint) when tokens/s collapses.") var speedAlerts = true

    @Option(help: "Run directory.") var out: String?
    @Option(help: "Continue the run in this directory from its newest checkpoint.") var resume: String?
    @Flag(help: "Delete what --out holds first (a previous run) instead of refusing.") var overwrite = false
    @Option(help: ArgumentHelp(
        "A YAML file of settings: config.json's keys (lora_r: 32, data: [a.jsonl, b.jsonl], plan: false) and out.",
        discussion: "Its values are read as the flags they name, and flags on the command line override them; unknown keys are errors naming the file's line.",
        valueName: "file"))
    var config: String?
    @Flag(help: "Print the resolved settings (the file's, then the flags') as YAML that --config takes, and stop.") var printConfig = false

    func validate() throws {
        guard printConfig || (out == nil) != (resume == nil) else { throw ValidationError("pass --out RUN for a new run, or --resume RUN") }
        guard loraR > 0 else { throw ValidationError("--lora-r must be positive") }
        guard batchSize > 0, gradAccum > 0 else { throw ValidationError("--batch-size and --grad-accum must be positive") }
        do { _ = try LoRAInitialization(parsing: initLoraWeights) } catch { throw ValidationError("\(error)") }
        guard loftqIter >= 1 else { throw ValidationError("--loftq-iter must be at least 1") }
        if let r = loraplusLrRatio, !(r > 0 && r.isFinite) { throw ValidationError("--loraplus-lr-ratio must be a positive number (PEFT: ≥ 1), not \(r)") }
        guard maxLen > 1 else { throw ValidationError("--max-len must be at least 2") }
        guard lr > 0, lr.isFinite else { throw ValidationError("--lr must be positive") }
        guard ema >= 0, ema < 1 else { throw ValidationError("--ema must be in [0, 1)") }
        guard emaEvery > 0, keepLast > 0, quickBatches > 0 else { throw ValidationError("--ema-every, --keep-last and --quick-batches must be positive") }
        if let m = maxSteps { guard m > 0 else { throw ValidationError("--max-steps must be positive") } }
        guard epochs > 0 else { throw ValidationError("--epochs must be positive") }
        guard valFraction > 0, valFraction < 1 else { throw ValidationError("--val-fraction must be in (0, 1)") }
        if let beta { guard beta > 0, beta.isFinite else { throw ValidationError("--beta must be positive") } }
        if let labelSmoothing { guard labelSmoothing >= 0, labelSmoothing < 0.5 else { throw ValidationError("--label-smoothing must be in [0, 0.5)") } }
        if let centerRewards { guard centerRewards >= 0 else { throw ValidationError("--center-rewards must be ≥ 0") } }
        if resume == nil {
            let preferenceOnly = [("--beta", beta != nil && objective == .reward), ("--dpo-loss", dpoLoss != nil && objective != .dpo),
                                  ("--ref-adapter", refAdapter != nil && objective != .dpo), ("--simpo-gamma", simpoGamma != nil && objective != .simpo),
                                  ("--center-rewards", centerRewards != nil && objective != .reward),
                                  ("--label-smoothing", labelSmoothing != nil && objective != .dpo && objective != .simpo),
                                  ("--beta", beta != nil && objective == .sft)]
            if let (flag, _) = preferenceOnly.first(where: \.1) {
                throw ValidationError("\(flag) does not apply to --objective \(objective.rawValue)")
            }
            if objective.usesPairs, packing { throw ValidationError("--packing applies to sft only (preference pairs stay whole)") }
        }
    }

    var newConfig: TrainingConfig {
        let pairs = objective.usesPairs
        let data = pairs && self.data == [Self.demoData] ? [Self.demoPreferences] : self.data
        var c = TrainingConfig(model: model, data: DataSources(data))
        c.dataFormat = dataFormat
        c.objective = objective == .sft ? nil : objective
        c.beta = beta
        c.dpoLoss = dpoLoss
        c.labelSmoothing = labelSmoothing
        c.simpoGamma = simpoGamma
        c.centerRewards = centerRewards
        c.refAdapter = refAdapter
        c.shape = shape?.rawValue
        c.layers = layers
        c.valFile = !valFile.isEmpty ? DataSources(valFile)
            : data == [Self.demoData] ? "data/demo-sft/val.jsonl" : data == [Self.demoPreferences] ? "data/demo-preferences/val.jsonl" : nil
        c.valFraction = valFraction
        c.maxLen = maxLen
        c.packing = packing
        c.textColumn = textColumn
        c.skipBad = skipBad
        c.chatTemplate = chatTemplate?.rawValue
        c.kQuants = kQuants ?? .asIs  // stored explicitly: a resumed run without it was trained on q4_1
        c.computeDtype = computeDtype
        c.loraR = loraR
        c.loraAlpha = loraAlpha
        c.loraDropout = loraDropout
        c.loraTargets = loraTargets
        c.loraLayers = loraLayers
        c.useRslora = useRslora
        c.useDora = useDora ? true : nil
        c.initLoraWeights = (try? LoRAInitialization(parsing: initLoraWeights)) == .kaiming ? nil : initLoraWeights
        c.loftqIter = loftqIter == 1 ? nil : loftqIter
        c.trainNorms = trainNorms
        c.loadLoraFrom = loadLoraFrom.first
        c.frozenAdapters = loadLoraFrom.count > 1 ? Array(loadLoraFrom.dropFirst()) : nil
        c.lr = lr
        c.optim = optim == .adamw ? nil : optim
        c.loraplusLrRatio = loraplusLrRatio
        c.schedule = schedule
        c.warmupSteps = warmupSteps
        c.warmupRatio = warmupRatio
        c.weightDecay = weightDecay
        c.maxGradNorm = maxGradNorm
        c.batchSize = batchSize
        c.gradAccum = gradAccum
        c.maxSteps = maxSteps
        c.epochs = epochs
        c.seed = seed
        c.ema = ema
        c.emaEvery = emaEvery
        c.emaWarmup = emaWarmup
        c.evalEvery = evalEvery
        c.quickEvery = quickEvery
        c.quickBatches = quickBatches
        c.evalBatchSize = evalBatchSize
        c.saveEvery = saveEvery
        c.keepLast = keepLast
        c.plan = plan
        c.gradCheckpoint = gradCheckpoint
        c.reportTo = reportTo
        c.groupByLength = groupByLength ? true : nil
        c.beta1 = beta1
        c.beta2 = beta2
        c.eps = eps
        c.speedAlerts = speedAlerts
        return c
    }

    func run() throws {
        // Under mpirun/mpiexec with more than one rank: data-parallel training (DataParallel).
        let world = try DataParallel.start()
        defer { MPIWorld.finish() }
        guard let world else { return try train(world: nil) }
        defer { world.finish() }
        do {
            try train(world: world)
        } catch let exit as ExitCode {
            throw exit   // every rank stopped after the same update
        } catch {
            // A rank that fails alone must not leave the others waiting in a collective.
            FileHandle.standardError.write(Data("qlora train, rank \(world.rank) of \(world.size): error: \(error)\n".utf8))
            world.abort(1)
        }
    }

    /// pissa, olora, loftq: A and B from W, the new base and the starting adapter written into
    /// RUN/init; the run then trains on them (config.json records it, so --resume finds them).
    static func initialize(_ config: inout TrainingConfig, directory: String, world: DataParallel?, log: TrainingLog) throws {
        let method = try config.initialization
        guard world == nil else {
            throw ValidationError("--init-lora-weights \(method) writes a new base before training: start the run in one process "
                                  + "(qlora train … --max-steps 0 is enough), then continue it under mpirun with --resume")
        }
        guard config.shape == nil else { throw ValidationError("--init-lora-weights \(method) takes A and B from a model's weights, not a --shape") }
        guard config.loadLoraFrom == nil else {
            throw ValidationError("--init-lora-weights \(method) computes the adapters from W: it cannot start from --load-lora-from as well")
        }
        log.line("initializing the adapters by \(method) from \(config.model): A and B of every adapted linear, and the new base W − s·B·A"
                 + (method == .loftq ? " (LoftQ, \(config.loftqIter ?? 1) iteration(s))" : ""))
        var shown = 0
        let prepared = try LoRAInitialization.prepare(model: config.model, lora: try config.lora, trainNorms: config.trainNorms, method: method,
                                                      loftqIterations: config.loftqIter ?? 1, seed: config.seed, directory: directory + "/init") { line in
            shown += 1
            if shown % 10 == 1 || line.hasPrefix("note") { log.line(line) }
        }
        let t = prepared.totals
        log.line(String(format: "%@: ‖W − (Q + s·B·A)‖/‖W‖ = %.4f over %d linears (plain QLoRA, Q(W) and B = 0: %.4f); base %@, adapter %@ (%.0f s)",
                        method.description, t.initialized, prepared.errors.count, t.plain, prepared.base, prepared.adapter, prepared.seconds))
        config.initFrom = config.model
        config.model = prepared.base
        config.loadLoraFrom = prepared.adapter
    }

    func train(world: DataParallel?) throws {
        let writes = world?.isWriter ?? true
        if printConfig {
            let c = resume != nil ? try TrainingRun.loadConfig(run: resume!) : newConfig
            if writes { print(try TrainConfigFile.yaml(c, out: out), terminator: "") }
            return
        }
        let directory = resume ?? out!
        // One process per run directory (the writer's lock; released by the kernel when it exits).
        if writes { try RunLock.check(run: directory) }
        if overwrite, resume == nil, writes, FileManager.default.fileExists(atPath: directory) {
            guard FileManager.default.fileExists(atPath: directory + "/" + RunLayout.configFile) else {
                throw ValidationError("--overwrite: \(directory) is not a qlora run directory (no config.json); not deleting it")
            }
            try FileManager.default.removeItem(atPath: directory)
        }
        var config: TrainingConfig
        if resume != nil, let world {
            // Rank 0's config.json: the run directory need not be on a shared file system.
            let bytes = try world.share(world.isWriter ? [UInt8](try TrainingRun.configData(run: directory)) : nil)
            config = try TrainingRun.decodeConfig(Data(bytes ?? []), run: directory)
        } else {
            config = resume != nil ? try TrainingRun.loadConfig(run: directory) : newConfig
        }
        let log = TrainingLog(quiet: !writes)
        let lock = writes ? try RunLock.acquire(run: directory) : nil
        defer { withExtendedLifetime(lock) {} }
        if resume == nil, try config.needsInitialization { try Self.initialize(&config, directory: directory, world: world, log: log) }
        // A data-parallel run's global micro-batch is --batch-size × the ranks it started on.
        let ranks = world?.size ?? 1, startedOn = config.ranks ?? (resume != nil ? 1 : ranks)
        let micro = config.batchSize * startedOn, perRank = (micro + ranks - 1) / ranks
        if let world {
            let unit = config.objectiveKind.usesPairs ? "pair" : "sequence"
            log.line("data parallel: \(world.size) ranks (\(world.process.flavor)), \((try? RuntimeReport.current().threads).map(String.init) ?? "?") threads each; "
                     + (startedOn == ranks ? "--batch-size \(config.batchSize) per rank × \(ranks) ranks"
                                           : "the run's \(micro) \(unit)s per micro-batch (\(startedOn) rank(s) × \(config.batchSize)) over \(ranks) ranks, ≤ \(perRank) each,")
                     + " × --grad-accum \(config.gradAccum) = \(micro * config.gradAccum) \(unit)s per update")
        }
        var lm: LanguageModel? = nil
        let model: DecoderModel
        let kind = config.objectiveKind
        var randomIDs = false
        if let name = config.shape {
            guard let shape = SyntheticShape(rawValue: name) else { throw ValidationError("--shape: unknown '\(name)'") }
            log.line("building \(name)\(config.layers.map { " (\($0) layers)" } ?? "") with seeded random NF4 weights")
            model = try SyntheticModel.make(shape, layers: config.layers, seed: config.seed)
            randomIDs = true
        } else {
            log.line("loading \(config.model)")
            let quantized = try QuantizedModel(path: config.model, kQuants: config.kQuants ?? .q4_1)
            if LanguageModel.hasTokenizer(quantized) {
                let loaded = try LanguageModel(quantized)
                lm = loaded
                model = loaded.model
            } else {
                guard config.data == DataSources([Self.demoData]), !kind.usesPairs else {
                    throw ValidationError("\(config.model) has no tokenizer (tokenizer.json, or a GGUF's tokenizer.ggml.*) to read --data with")
                }
                log.line("\(config.model) has no tokenizer (a qlora quantize --shape model?), so seeded random ids as with --shape")
                model = try DecoderModel(quantized)
                randomIDs = true
            }
        }
        if randomIDs, kind.usesPairs {
            throw ValidationError("--objective \(kind.rawValue) needs a model with a tokenizer to read preference pairs (not --shape or a model without one)")
        }
        let train: any TrainingData, validation: any TrainingData
        if kind.usesPairs {
            let loaded = lm!
            let template = loaded.dataChatTemplate(config.chatTemplate.flatMap(ChatTemplate.Family.init(rawValue:)))
            func load(_ sources: DataSources) throws -> PreferenceDataSet {
                try PreferenceDataSet.load(paths: sources.paths, tokenizer: loaded.tokenizer, chatTemplate: template, maxLength: config.maxLen,
                                           skipBad: config.skipBad)
            }
            var t = try load(config.data), v: PreferenceDataSet
            if let path = config.valFile { v = try load(path) } else { (t, v) = try t.split(valFraction: config.valFraction, seed: config.seed) }
            v = v.sortedLongestFirst()
            for set in [t, v] where set.skipped > 0 {
                log.line("\(set.source): skipped \(set.skipped) bad rows; first: " + set.skippedReasons.map(\.description).joined(separator: "; "))
            }
            log.line("data: \(t.pairs.count) training pairs (\(t.trainedTokenCount) completion tokens), \(v.pairs.count) validation pairs; "
                     + "objective \(kind.rawValue)" + Self.dropped(t.tooLong + v.tooLong, t.tooLongRows + v.tooLongRows, "pairs longer than", config.maxLen))
            (train, validation) = (t, v)
        } else {
            let (t, v) = try Self.loadSFT(config: config, model: model, lm: lm, randomIDs: randomIDs, ranks: startedOn, log: log)
            (train, validation) = (t, v)
        }
        let sequences = perRank * (kind.usesPairs ? 2 : 1)
        let (trainedLoRA, trainsNorms) = try config.trainedLoRA
        let estimate = MemoryEstimate(config: model.config, frozenBytes: model.frozenBytes, lora: trainedLoRA,
                                      trainNorms: trainsNorms, sequences: sequences, length: config.maxLen,
                                      gradientCheckpointing: config.gradCheckpoint, ema: config.ema > 0,
                                      computeDType: (config.computeDtypeInUse ?? config.computeDtype ?? .fp32).expected,
                                      optimizer: config.optim ?? .adamw, dataParallel: world != nil)
        log.line(String(format: "memory estimate: %.0f MiB at batch %d × %d%@ (%.1f GiB installed)", Double(estimate.totalBytes) / 1_048_576,
                        sequences, config.maxLen, config.gradCheckpoint ? ", checkpointing" : "",
                        Double(estimate.availableBytes) / 1_073_741_824))
        if !estimate.fits {
            throw TrainingError.tooLarge("this run needs about \(String(format: "%.1f", Double(estimate.totalBytes) / 1_073_741_824)) GiB, "
                + "more than 90% of this machine's memory:\n  " + estimate.lines.joined(separator: "\n  ")
                + "\n---> HINT: " + estimate.advice(gradientCheckpointing: config.gradCheckpoint))
        }
        let generates = kind != .reward
        if let sample, generates, resume == nil, writes, let lm { try Self.show(sample, lm: lm, label: "base model", log: log) }

        let run = try TrainingRun(config: config, directory: directory, model: model, train: train, validation: validation,
                                  resume: resume != nil, world: world, onEvent: log.event)
        run.memoryBudgetBytes = estimate.totalBytes
        log.line("run: \(directory) — \(run.totalUpdates) updates of \(run.globalBatch) \(kind.usesPairs ? "pairs" : "sequences"), "
                 + "frozen GEMMs in \(run.trainer.computeDType)")
        let interrupt = Interrupt()
        let finished = try run.run(shouldStop: { interrupt.requested }, onEvent: log.event)
        log.finish()
        if let world, writes, world.reduceCount > 0 {
            let n = Double(world.reduceCount)
            let how = world.overlaps ? "exposed after the backward, waiting for the slowest rank included; overlapped with the backward"
                : String(format: "after the backward; rank 0 waited %.1f ms per update for the others first", 1000 * world.waitSeconds / n)
            log.line(String(format: "all-reduce: %.1f ms per update (%.1f MiB of gradients, %d updates; %@)",
                            1000 * world.reduceSeconds / n, Double(world.reducedBytes) / 1_048_576, world.reduceCount, how))
        }
        if let world, finished {
            // run() compared every rank's weights with rank 0's after the last update.
            log.line(String(format: "weights identical on all %d ranks after update %d (FNV-1a 0x%016llx)", world.size, run.step,
                            DataParallel.weightHash(run.lora.parameters)))
        }
        if !finished {
            log.line("stopped at update \(run.step); continue with: qlora train --resume \(directory)")
            throw ExitCode(interrupt.exitStatus)
        }
        let bestNote = run.best.map { b in
            "best val_loss \(String(format: "%.4f", run.bestValLoss)) at update \(b.step)"
                + (run.ema == nil ? "" : b.live ? " (live weights)" : " (EMA weights)") + ": \(run.bestAdapter ?? "")"
        } ?? "no evaluation after training began"
        log.line("done: \(run.step) updates in \(TrainingLog.duration(log.elapsed)); \(bestNote)")
        log.line("chart: \(directory)/\(RunLayout.chartFile)" + (config.reportTo == .tensorboard ? "; tensorboard --logdir \(directory)" : ""))
        if let sample, generates, writes, let lm {
            let set = AdapterSet(base: lm.model)
            // The best weights the run evaluated (EMA or live), else the final ones.
            let finalPath = run.bestAdapter ?? directory + "/" + RunLayout.adapter(.final)
            let final = try set.load(finalPath)
            let tuned = DecoderModel(lm.model, adapters: try set.adapters(final).stacking(run.lora.stacked))
            let stackedNote = run.lora.stacked.isEmpty ? "" : " + frozen " + run.lora.stacked.map(\.name).joined(separator: ", ")
            try Self.show(sample, lm: lm.with(model: tuned), label: "tuned (\(finalPath)\(stackedNote))", log: log)
        }
    }

    /// The SFT examples of a run: its files read with the model's tokenizer, or seeded random
    /// ids (a synthetic shape, a model without a tokenizer).
    static func loadSFT(config: TrainingConfig, model: DecoderModel, lm: LanguageModel?, randomIDs: Bool, ranks: Int = 1, log: TrainingLog) throws
        -> (SFTDataSet, SFTDataSet) {
        var train: SFTDataSet, validation: SFTDataSet
        if randomIDs {
            // Random ids, every position trained: for memory and speed, not for learning.
            func random(_ n: Int, _ seed: UInt64) -> SFTDataSet {
                var rng = SplitMix64(seed: seed)
                let examples = (0..<n).map { _ in
                    let ids = (0..<config.maxLen).map { _ in Int(rng.next() % UInt64(model.config.vocabSize)) }
                    return SFTExample(inputIds: ids, labels: ids)
                }
                return SFTDataSet(examples: examples, source: "random ids", padID: 0)
            }
            train = random(max(64, config.batchSize * ranks * config.gradAccum * (config.maxSteps ?? 1)), config.seed)
            validation = random(config.batchSize, config.seed &+ 1)
        } else {
            let loaded = lm!
            let template = loaded.dataChatTemplate(config.chatTemplate.flatMap(ChatTemplate.Family.init(rawValue:)))
            func load(_ sources: DataSources) throws -> SFTDataSet {
                try SFTDataSet.load(paths: sources.paths, format: config.dataFormat, tokenizer: loaded.tokenizer, chatTemplate: template,
                                    maxLength: config.maxLen, skipBad: config.skipBad, textColumn: config.textColumn)
            }
            train = try load(config.data)
            if let v = config.valFile {
                validation = try load(v)
            } else {
                (train, validation) = try train.split(valFraction: config.valFraction, seed: config.seed)
            }
        }
        if config.packing { train = train.packed(length: config.maxLen) }
        validation = validation.sortedLongestFirst()
        for set in [train, validation] where set.skipped > 0 {
            log.line("\(set.source): skipped \(set.skipped) bad rows; first: " + set.skippedReasons.map(\.description).joined(separator: "; "))
        }
        log.line("data: \(train.examples.count) training examples (\(train.trainedTokenCount) trained tokens), "
                 + "\(validation.examples.count) validation examples"
                 + dropped(train.tooLong + validation.tooLong, train.tooLongRows + validation.tooLongRows, "rows with nothing to train within", config.maxLen))
        return (train, validation)
    }

    /// The data line's note on rows dropped for length: "; dropped 3 rows … --max-len 128
    /// (a.jsonl:96, a.jsonl:120, …)", or nothing.
    static func dropped(_ n: Int, _ first: [SFTDataError], _ what: String, _ maxLen: Int) -> String {
        let rows = first.prefix(SFTDataSet.reasonsKept).compactMap { if case let .badRow(path, line, _) = $0 { "\(path):\(line)" } else { nil } }
        return n == 0 ? "" : "; dropped \(n) \(what) --max-len \(maxLen) (\(rows.joined(separator: ", "))\(n > rows.count ? ", …" : ""))"
    }

    static let demoData = "data/demo-sft/train.jsonl"
    static let demoPreferences = "data/demo-preferences/train.jsonl"

    static func show(_ message: String, lm: LanguageModel, label: String, log: TrainingLog) throws {
        let template = try lm.chatTemplate()
        let ids = lm.tokenizer.encode(try template.render([ChatMessage(.user, message)], addGenerationPrompt: true))
        var text = ""
        _ = try TextGenerator(model: lm).generate(prompt: ids, options: .init(
            maxNewTokens: 64, sampling: .init(temperature: 0), seed: 0, stopTokens: lm.stopTokens(template: template))) { text += $0 }
        log.line("\(label) — user: \(message)\n  assistant: \(text.trimmingCharacters(in: .whitespacesAndNewlines))")
    }
}

/// Ctrl-C (SIGINT) or SIGTERM once: stop after the current update, with a checkpoint; twice:
/// leave at once. SIGTERM is what schedulers send (Slurm's preemption, `kill`). Launchers treat
/// signals their own way (Open MPI's mpirun kills its ranks a second after a Ctrl-C): a
/// data-parallel run stops cleanly with `touch RUN/STOP` (`RunLayout.stopFile`).
final class Interrupt: @unchecked Sendable {
    private let lock = NSLock()
    /// The first signal, once one came.
    private var first: Int32?
    private let sources: [DispatchSourceSignal]

    init() {
        var sources: [DispatchSourceSignal] = []
        let signals = [SIGINT, SIGTERM]
        for sig in signals {
            signal(sig, SIG_IGN)
            let source = DispatchSource.makeSignalSource(signal: sig, queue: .global())
            sources.append(source)
        }
        self.sources = sources
        for (source, sig) in zip(sources, signals) {
            source.setEventHandler { [unowned self] in
                lock.lock()
                let again = first != nil
                if !again { first = sig }
                lock.unlock()
                if again { _exit(128 + sig) }
                let name = sig == SIGINT ? "interrupt" : "SIGTERM"
                FileHandle.standardError.write(Data("\n\(name): finishing this update and writing a checkpoint (a second signal quits at once)\n".utf8))
            }
            source.resume()
        }
    }

    var requested: Bool {
        lock.lock()
        defer { lock.unlock() }
        return first != nil
    }

    /// The exit status of a run stopped by the first signal: 128 + its number (130 for Ctrl-C,
    /// 143 for SIGTERM), as shells and schedulers read it; 130 when no signal stopped it (STOP).
    var exitStatus: Int32 {
        lock.lock()
        defer { lock.unlock() }
        return 128 + (first ?? SIGINT)
    }
}

/// The run's terminal output: a progress line redrawn in place on a terminal, plain lines
/// otherwise (logs, CI); evaluations, checkpoints and alerts on lines of their own.
final class TrainingLog {
    let start = Date()
    let tty = isatty(STDOUT_FILENO) != 0
    private var open = false
    /// Writes nothing (the ranks of a data-parallel run other than rank 0).
    let quiet: Bool

    init(quiet: Bool = false) { self.quiet = quiet }

    var elapsed: Double { Date().timeIntervalSince(start) }

    /// Unbuffered, so that a log file follows the run as it goes.
    private func write(_ s: String) { if !quiet { FileHandle.standardOutput.write(Data(s.utf8)) } }

    func line(_ s: String) {
        if open { write("\n"); open = false }
        write(s + "\n")
    }

    func finish() { if open { write("\n"); open = false } }

    func event(_ e: TrainingEvent) {
        switch e {
        case let .message(s): line(s)
        case let .alert(s): line("ALERT: \(s)")
        case let .checkpoint(path, _): line("checkpoint: \(path)")
        case let .adapterSaved(path, why): line("saved \(path) (\(why))")
        case let .evaluation(r):
            let second = r.valAccuracy.map { String(format: "accuracy %.3f", $0) } ?? String(format: "ppl %.2f", r.valPpl ?? .nan)
            line(String(format: "[eval %@] update %d: val_loss %.4f, %@%@%@", r.kind ?? "", r.step, r.valLoss ?? .nan, second,
                        r.ema == true ? " (EMA weights)" : "", r.valLossLive.map { String(format: "; live weights %.4f", $0) } ?? ""))
        case let .update(r, total, secondsLeft):
            let frac = Double(r.step) / Double(total)
            let eta = secondsLeft.map(Self.duration) ?? (r.step == total ? "0s" : "…")
            let accuracy = (r.metrics["rewards/accuracies"] ?? r.metrics["accuracy"]).map { String(format: " acc %.2f", $0) } ?? ""
            let stats = String(format: "%d/%d loss %.4f%@ lr %.2e %.0f tok/s ETA %@", r.step, total, r.loss ?? .nan, accuracy, r.lr ?? 0,
                               r.tokensPerS ?? 0, eta)
            if tty {
                let width = 24, filled = Int(frac * Double(width))
                write("\r[" + String(repeating: "#", count: filled) + String(repeating: "-", count: width - filled) + "] " + stats + "   ")
                open = true
            } else {
                write("update " + stats + "\n")
            }
        }
    }

    static func duration(_ s: Double) -> String {
        let t = Int(s.rounded())
        return t >= 3600 ? "\(t / 3600)h\(String(format: "%02d", t % 3600 / 60))m" : t >= 60 ? "\(t / 60)m\(String(format: "%02d", t % 60))s" : "\(t)s"
    }
}

extension AdamW.Kind: ExpressibleByArgument {}
