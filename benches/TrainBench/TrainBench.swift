import Foundation
import Quant
import QLoRA
import QuantKernels

/// `qlora bench train`: one LoRA training configuration as `qlora train` runs it — B sequences
/// of T random tokens, every position trained, forward + backward + clipping + AdamW per step —
/// (+ the EMA update with `ema`), timed over several steps after a warm-up, with the seconds
/// and share of step time per kind of work (StepProfile.Kind) and
/// the frozen GEMMs' throughput inside the step beside dense sgemm on the same shapes.
/// Peak RSS is the process's: run one configuration per process (benches/train.sh does).
public enum TrainBench {
    public struct Config: Sendable {
        public var model = "models/SmolLM2-135M-Instruct.Q4_1.gguf"
        /// A synthetic shape instead of `model`, cut to `layers` blocks when given.
        public var shape: SyntheticShape?
        public var layers: Int?
        public var rank = 16
        public var batch = 4
        public var length = 256
        public var gradientCheckpointing = false
        /// EMA decay of the adapters' shadows, updated every step (0: no EMA).
        public var ema = 0.0
        /// LoRA dropout (0: none; `qlora train`'s default is 0.05), a fresh mask each step.
        public var loraDropout: Float = 0
        public var steps = 5
        public var warmup = 1
        /// What the step trains for. A preference objective reads the batch as batch/2 pairs
        /// (rows 0..<P chosen, P..<2P rejected), each row's first half the prompt (not scored),
        /// with reference log-probabilities of 0 for DPO (timing only).
        public var objective: ObjectiveKind = .sft
        /// SFT: leave each row's first half unscored too, as a preference step does (so the two
        /// are the same rows and the same scored tokens).
        public var maskPrompt = false
        /// Also time a causal-LM (SFT) step on the same rows and scored tokens, alternating with
        /// the objective's step by step, so that both see the same machine load: the cost of a
        /// preference update against an SFT update on as many sequences.
        public var againstSFT = false
        /// What the frozen 4-bit GEMMs compute in.
        public var dtype: ComputeDType = .fp32
        /// DoRA adapters (PEFT's use_dora) instead of plain LoRA.
        public var useDoRA = false
        /// The optimizer (adamw_8bit: 8-bit moments).
        public var optimizer: AdamW.Kind = .adamw
        /// With `useDoRA`: also time a plain LoRA step of the same rank on the same rows,
        /// alternating step by step: DoRA's cost per step under the same machine load.
        public var againstLoRA = false
        /// With dtype bf16: also time the same step with fp32 products (same adapters and rows),
        /// alternating step by step: bf16's speed-up under the same machine load.
        public var againstFP32 = false
        public init() {}
    }

    public struct Result: Codable, Sendable {
        public var model: String
        public var objective: String
        public var dtype: String
        public var rank: Int
        public var batch: Int
        public var length: Int
        public var gradientCheckpointing: Bool
        public var ema: Double
        public var loraDropout: Float
        public var trainableParameters: Int
        public var steps: Int
        public var stepSecondsMedian: Double
        public var tokensPerSecond: Double
        public var peakRSSBytes: Int
        /// Share of the step's wall time, by kind (StepProfile.Kind raw values, plus "other").
        public var shares: [String: Double]
        /// Seconds per step, by kind (mean over the timed steps), "other" included.
        public var seconds: [String: Double]
        /// GFLOP/s of the frozen GEMMs inside the step, and of dense sgemm on the same products.
        public var frozenGFLOPS: Double
        public var denseGFLOPS: Double
        /// With `againstSFT`: the SFT step's median seconds on the same rows, and the median over
        /// rounds of (objective step / SFT step), each round's two steps back to back.
        public var sftStepSecondsMedian: Double?
        public var ratioToSFTMedian: Double?
        public var useDoRA: Bool?
        /// With `againstLoRA`: the plain LoRA step's median seconds, and the median over rounds
        /// of (DoRA step / LoRA step).
        public var loraStepSecondsMedian: Double?
        public var ratioToLoRAMedian: Double?
        /// With `againstFP32`: the fp32 step's median seconds, and the median over rounds of
        /// (fp32 step / bf16 step), each round's two steps back to back.
        public var fp32StepSecondsMedian: Double?
        public var speedupOverFP32Median: Double?
        /// With `againstFP32`: the fastest fp32 step over the fastest bf16 step (on a shared,
        /// noisy machine the least disturbed step of each).
        public var speedupOverFP32Best: Double?
    }

    public static func run(_ c: Config, progress: (String) -> Void) throws -> Result {
        let model: DecoderModel
        if let shape = c.shape {
            let start = Date()
            model = try SyntheticModel.make(shape, layers: c.layers) { p in
                if p.done % 16 == 0 || p.done == p.total { progress("\(shape.rawValue): \(p.done)/\(p.total) tensors quantized") }
            }
            progress(String(format: "\(shape.rawValue): built in %.1f s, %.2f GB of frozen weights, RSS %.2f GB", Date().timeIntervalSince(start),
                            Double(model.frozenBytes) / 1e9, Double(RuntimeMemory.currentRSS()) / 1e9))
        } else {
            model = try DecoderModel(path: c.model)
        }
        let loraConfig = LoRAConfig(rank: c.rank, alpha: Float(2 * c.rank), dropout: c.loraDropout)
        var doraConfig = loraConfig
        doraConfig.useDoRA = c.useDoRA
        let lora = try ModelAdapters(model: model, config: doraConfig, scoreHead: c.objective == .reward, seed: 1)
        var run = TrainingConfig(model: c.model, data: "")
        run.objective = c.objective
        let trainer = Trainer(model: model, lora: lora, gradientCheckpointing: c.gradientCheckpointing, objective: run.makeObjective)
        trainer.computeDType = c.dtype
        let optimizer = AdamW(parameters: lora.parameters, kind: c.optimizer)
        let ema = c.ema > 0 ? EMA(parameters: lora.parameters, beta: c.ema) : nil
        progress(String(format: "adapters and AdamW moments allocated: RSS %.2f GB", Double(RuntimeMemory.currentRSS()) / 1e9))
        var rng = SplitMix64(seed: 256)
        let ids = (0..<(c.batch * c.length)).map { _ in Int32(rng.next() % UInt64(model.config.vocabSize)) }
        var labels = ids
        if c.objective.usesPairs || c.maskPrompt {
            for b in 0..<c.batch { for t in 0..<(c.length / 2) { labels[b * c.length + t] = -100 } }
        }
        let P = c.batch / 2
        let pairs = c.objective.usesPairs
            ? TokenBatch.PairRows(count: P, reference: c.objective == .dpo ? [Double](repeating: 0, count: 2 * P) : nil) : nil
        let batch = TokenBatch(inputIds: ids, labels: labels, sequences: c.batch, length: c.length, pairs: pairs)
        let scale = 1 / Float(trainer.objective.normalizer(batch))
        let sft = c.againstSFT ? Trainer(model: model, lora: lora, gradientCheckpointing: c.gradientCheckpointing) : nil
        sft?.computeDType = c.dtype
        let sftBatch = TokenBatch(inputIds: ids, labels: labels, sequences: c.batch, length: c.length)
        // The plain LoRA baseline of --against-lora: its own adapters, optimizer and EMA.
        let plain = c.useDoRA && c.againstLoRA ? try ModelAdapters(model: model, config: loraConfig, scoreHead: c.objective == .reward, seed: 1) : nil
        let plainTrainer = plain.map { Trainer(model: model, lora: $0, gradientCheckpointing: c.gradientCheckpointing, objective: run.makeObjective) }
        plainTrainer?.computeDType = c.dtype
        let plainOptimizer = plain.map { AdamW(parameters: $0.parameters, kind: c.optimizer) }
        let plainEMA = plain.flatMap { p in c.ema > 0 ? EMA(parameters: p.parameters, beta: c.ema) : nil }
        /// A baseline's whole step (gradients, clipping, update, EMA), alternated with the measured
        /// one so both see the same machine load; its seconds.
        func baselineStep(_ trainer: Trainer, _ parameters: [Parameter], _ optimizer: AdamW, _ ema: EMA?, _ batch: TokenBatch,
                          scale: Float, dropoutSeed: UInt64?) throws -> Double {
            let start = DispatchTime.now().uptimeNanoseconds
            parameters.forEach { $0.zeroGrad() }
            _ = try trainer.accumulateGradients(batch, gradScale: scale, dropoutSeed: dropoutSeed)
            clipGradNorm(parameters, maxNorm: 1)
            optimizer.update(lr: 1e-4)
            ema?.update()
            return Double(DispatchTime.now().uptimeNanoseconds - start) * 1e-9
        }
        var loraTimes: [Double] = [], loraRatios: [Double] = []
        var fp32Times: [Double] = [], speedups: [Double] = []
        var sftTimes: [Double] = [], ratios: [Double] = []
        var times: [Double] = []
        var shares: [String: Double] = [:], perStep: [String: Double] = [:]
        var frozenSeconds = 0.0, frozenFLOPs = 0.0
        for s in 0..<(c.warmup + c.steps) {
            let profile = StepProfile()
            let timed = s >= c.warmup
            StepProfile.install(timed ? profile : nil)
            let start = DispatchTime.now().uptimeNanoseconds
            lora.parameters.forEach { $0.zeroGrad() }
            let dropoutSeed = c.loraDropout > 0 ? DropoutStream.step(seed: 1, update: s, micro: 0) : nil
            let loss = try trainer.accumulateGradients(batch, gradScale: scale, dropoutSeed: dropoutSeed)
            StepProfile.measure(.optimizer) {
                clipGradNorm(lora.parameters, maxNorm: 1)
                optimizer.update(lr: 1e-4)
            }
            if let ema { StepProfile.measure(.ema) { ema.update() } }
            let seconds = Double(DispatchTime.now().uptimeNanoseconds - start) * 1e-9
            StepProfile.install(nil)
            progress(String(format: "step %d/%d: %.2f s, loss %.4f%@; RSS %.2f GB, peak %.2f GB", s + 1, c.warmup + c.steps, seconds,
                            loss.mean, timed ? "" : " (warm-up)", Double(RuntimeMemory.currentRSS()) / 1e9, Double(RuntimeMemory.peakRSS()) / 1e9))
            if let sft {
                let t = try baselineStep(sft, lora.parameters, optimizer, ema, sftBatch, scale: 1 / Float(sftBatch.scoredTokens),
                                         dropoutSeed: dropoutSeed)
                progress(String(format: "  sft step on the same rows: %.2f s (%.3f× the %@ step)", t, seconds / t, c.objective.rawValue))
                if timed {
                    sftTimes.append(t)
                    ratios.append(seconds / t)
                }
            }
            if let plain, let plainTrainer, let plainOptimizer {
                let t = try baselineStep(plainTrainer, plain.parameters, plainOptimizer, plainEMA, batch, scale: scale, dropoutSeed: dropoutSeed)
                progress(String(format: "  plain LoRA step on the same rows: %.2f s (DoRA %.3f× it)", t, seconds / t))
                if timed {
                    loraTimes.append(t)
                    loraRatios.append(seconds / t)
                }
            }
            if c.againstFP32 {
                trainer.computeDType = .fp32
                defer { trainer.computeDType = c.dtype }
                let t = try baselineStep(trainer, lora.parameters, optimizer, ema, batch, scale: scale, dropoutSeed: dropoutSeed)
                progress(String(format: "  fp32 step on the same rows: %.2f s (%@ %.3f× faster)", t, "\(c.dtype)", t / seconds))
                if timed {
                    fp32Times.append(t)
                    speedups.append(t / seconds)
                }
            }
            guard timed else { continue }
            times.append(seconds)
            for (k, v) in profile.seconds.map({ ($0.rawValue, $1) }) + [("other", seconds - profile.measuredSeconds)] {
                shares[k, default: 0] += v / seconds / Double(c.steps)
                perStep[k, default: 0] += v / Double(c.steps)
            }
            frozenSeconds += profile.frozenSeconds
            frozenFLOPs += profile.frozenFLOPs
        }
        let median = times.sorted()[times.count / 2]
        let peak = RuntimeMemory.peakRSS()   // before the dense baseline, which dequantizes whole matrices
        return Result(model: c.shape.map { $0.rawValue + (c.layers.map { " (\($0) layers)" } ?? "") } ?? c.model,
                      objective: c.objective.rawValue + (c.maskPrompt && !c.objective.usesPairs ? " (prompt halves unscored)" : ""),
                      dtype: "\(c.dtype)", rank: c.rank, batch: c.batch, length: c.length, gradientCheckpointing: c.gradientCheckpointing,
                      ema: c.ema, loraDropout: c.loraDropout, trainableParameters: lora.trainableCount, steps: c.steps, stepSecondsMedian: median,
                      tokensPerSecond: Double(c.batch * c.length) / median, peakRSSBytes: peak,
                      shares: shares, seconds: perStep, frozenGFLOPS: frozenFLOPs / frozenSeconds / 1e9,
                      denseGFLOPS: try denseGFLOPS(model: model, tokens: c.batch * c.length),
                      sftStepSecondsMedian: sftTimes.isEmpty ? nil : sftTimes.sorted()[sftTimes.count / 2],
                      ratioToSFTMedian: ratios.isEmpty ? nil : ratios.sorted()[ratios.count / 2], useDoRA: c.useDoRA ? true : nil,
                      loraStepSecondsMedian: loraTimes.isEmpty ? nil : loraTimes.sorted()[loraTimes.count / 2],
                      ratioToLoRAMedian: loraRatios.isEmpty ? nil : loraRatios.sorted()[loraRatios.count / 2],
                      fp32StepSecondsMedian: fp32Times.isEmpty ? nil : fp32Times.sorted()[fp32Times.count / 2],
                      speedupOverFP32Median: speedups.isEmpty ? nil : speedups.sorted()[speedups.count / 2],
                      speedupOverFP32Best: fp32Times.min().flatMap { f in times.min().map { f / $0 } })
    }

    /// Dense sgemm (OpenBLAS, all threads) on one layer's seven products, forward (X·Wᵀ) and
    /// backward (dY·W), at the step's T: the throughput the frozen path is compared with. Each
    /// product's median of 7 runs after a warm-up, so one preempted run does not count.
    static func denseGFLOPS(model: DecoderModel, tokens T: Int) throws -> Double {
        let layer = model.weights.layers[0]
        var flops = 0.0, seconds = 0.0
        ComputeRuntime.setBLASThreads(ComputeRuntime.defaultThreads)
        defer { ComputeRuntime.setBLASThreads(1) }
        for m in model.config.family.linears {
            let w = layer.matrix(m), W = w.dequantize()
            let x = FloatBuffer(count: T * max(w.rows, w.cols)), y = FloatBuffer(count: T * max(w.rows, w.cols))
            try W.withUnsafeBufferPointer { (wp) throws in
                for backward in [false, true] {
                    var times: [Double] = []
                    for _ in 0..<8 {
                        let start = DispatchTime.now().uptimeNanoseconds
                        if backward {
                            try ComputeRuntime.sgemm(m: T, n: w.cols, k: w.rows, a: x.base, lda: w.rows, b: wp.baseAddress!,
                                                     ldb: w.cols, transposeB: false, beta: 0, c: y.base, ldc: w.cols)
                        } else {
                            try ComputeRuntime.sgemm(m: T, n: w.rows, k: w.cols, a: x.base, lda: w.cols, b: wp.baseAddress!,
                                                     ldb: w.cols, transposeB: true, beta: 0, c: y.base, ldc: w.rows)
                        }
                        times.append(Double(DispatchTime.now().uptimeNanoseconds - start) * 1e-9)
                    }
                    seconds += times.dropFirst().sorted()[3]
                    flops += 2 * Double(T * w.rows * w.cols)
                }
            }
        }
        return flops / seconds / 1e9
    }
}
