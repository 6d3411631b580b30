import ArgumentParser
import Foundation
import GEMMBench
import ModelBench
import TrainBench

extension SyntheticShape: ExpressibleByArgument {}
import QLoRA
import Quant

struct Bench: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Benchmarks (medians of several runs, as ratios to a baseline measured in the same run).",
        subcommands: [GEMM.self, ModelSpeed.self, TrainSpeed.self, MemorySweep.self, AllReduceSpeed.self]
    )
}

extension QuantFormat: ExpressibleByArgument {}
extension QuantizedModel.KQuantTarget: ExpressibleByArgument {
    /// `--k-quants`' help, for every command that loads a model to train or evaluate.
    static let help: ArgumentHelp = "What a GGUF's K-quants, Q5_0 and Q5_1 become at load: as-is (the default: trained on as the file stores them, bit-exact with ggml), or requantized as older runs were: q4_1 (Q2_K…Q4_K to Q4_1, the rest to Q8_0; one more rounding: Gemma 3 270M's GPL-3 perplexity 2.0% above transformers' on the exact weights) or q8_0 (all to Q8_0, 0.2% there)."
}

extension ComputeDType: ExpressibleByArgument {}

extension GEMMOptions.Path: ExpressibleByArgument {
    public init?(argument: String) {
        guard let p = Self.allCases.first(where: { "\($0)" == argument }) else { return nil }
        self = p
    }
}

struct GEMM: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "gemm",
        abstract: "4-bit GEMMs, forward (Y = X·Wᵀ) and backward (dX = dY·W), against dense 2-thread sgemm.",
        discussion: """
            For each shape out x in and token count T, times dense OpenBLAS sgemm on the fp32
            weights and each format's dequantize-into-sgemm product on the same weights, run after
            run, and reports GFLOP/s (2·T·out·in per product) with the ratio to dense (above 1 is
            faster than dense). Also reports dequantization throughput per format and SIMD level.

            Example: qlora bench gemm --shapes 4096x4096 --tokens 256 --formats nf4 --runs 7
                     qlora bench gemm --dtype bf16 --shapes 4096x4096,11008x4096 --tokens 256,1024 --formats nf4,q4_0
                     qlora bench gemm --dtype bf16 --bf16-kernels avx512_bf16,amx --shapes 4096x4096 --tokens 256 --formats nf4
            """
    )

    @Option(help: "Shapes out x in, comma-separated.") var shapes = "576x576,1536x576,576x1536,4096x4096,11008x4096"
    @Option(help: "Token counts T, comma-separated.") var tokens = "1,64,256,512,1024"
    @Option(help: "Formats, comma-separated: \(QuantFormat.allCases.map(\.rawValue).joined(separator: ", ")).")
    var formats = QuantFormat.allCases.map(\.rawValue).joined(separator: ",")
    @Option(help: "Runs per case; medians are reported.") var runs = 5
    @Option(help: "Threads for both dense and quantized products.") var threads = 2
    @Option(help: "Per-thread tile buffer in KiB for the tiles path (0: the library's default, which depends on T).") var tileKib = 0
    @Option(help: "Implementation: auto (the AVX-512 micro-kernel at T ≥ 16 where it applies, else tiles), tiles, kernel.")
    var path: GEMMOptions.Path = .auto
    @Option(help: "Arithmetic of the 4-bit products: fp32, bf16 (inputs and weights rounded to bf16, fp32 sums; AVX512_BF16 only) or int8 (forward only, decoding's: inputs quantized per 32 to 8 bits, integer dot products with Q4_0/Q4_1/Q5_0/Q5_1/Q8_0/Q4_K/Q5_K/Q6_K codes on AVX512_VNNI CPUs; fp32 elsewhere). Dense stays fp32 sgemm.")
    var dtype: ComputeDType = .fp32
    @Option(help: "With --dtype bf16: micro-kernels to time side by side, comma-separated: avx512_bf16 (vdpbf16ps), amx (AMX-BF16 tiles, where the CPU has them). Default: the one qlora chose here (qlora info: bf16 kernel).")
    var bf16Kernels: String?
    @Flag(help: "Print JSON records for scripts instead of the table.") var json = false

    var parsedKernels: [ComputeRuntime.BF16Kernel] {
        get throws {
            try (bf16Kernels ?? "").split(separator: ",").map { s in
                guard let k = [ComputeRuntime.BF16Kernel.avx512, .amx].first(where: { $0.description == s }) else {
                    throw ValidationError("--bf16-kernels: unknown kernel '\(s)'; use avx512_bf16, amx")
                }
                return k
            }
        }
    }

    var parsed: (shapes: [(out: Int, in: Int)], tokens: [Int], formats: [QuantFormat]) {
        get throws {
            let shapes = try shapes.split(separator: ",").map { s -> (out: Int, in: Int) in
                let p = s.split(separator: "x").compactMap { Int($0) }
                guard p.count == 2, p[0] > 0, p[1] > 0 else { throw ValidationError("--shapes: '\(s)' is not OUTxIN, e.g. 4096x4096") }
                return (p[0], p[1])
            }
            let tokens = try self.tokens.split(separator: ",").map { s -> Int in
                guard let t = Int(s), t > 0 else { throw ValidationError("--tokens: '\(s)' is not a positive integer") }
                return t
            }
            let formats = try self.formats.split(separator: ",").map { s -> QuantFormat in
                guard let f = QuantFormat(rawValue: String(s)) else {
                    throw ValidationError("--formats: unknown format '\(s)'; use \(QuantFormat.allCases.map(\.rawValue).joined(separator: ", "))")
                }
                return f
            }
            return (shapes, tokens, formats)
        }
    }

    func validate() throws {
        let p = try parsed
        for shape in p.shapes {
            for f in p.formats where f.isGGML && shape.in % f.defaultBlockSize != 0 {
                throw ValidationError("--shapes: in = \(shape.in) is not a multiple of \(f.defaultBlockSize), which \(f.rawValue) needs")
            }
        }
        guard runs >= 1 else { throw ValidationError("--runs must be at least 1") }
        guard threads >= 1 else { throw ValidationError("--threads must be at least 1") }
        guard dtype != .bf16 || ComputeRuntime.bf16Available else {
            throw ValidationError("--dtype bf16 needs AVX-512 with AVX512_BF16, which this CPU (\(CPUInfo.current.brand)) lacks")
        }
        let kernels = try parsedKernels
        guard kernels.isEmpty || dtype == .bf16 else { throw ValidationError("--bf16-kernels needs --dtype bf16") }
        guard Set(kernels).count == kernels.count else { throw ValidationError("--bf16-kernels: a kernel is named twice") }
        if kernels.contains(.amx), (try? ComputeRuntime.withBF16Kernel(.amx) {}) == nil {  // the bench's own test, no product run
            throw ValidationError("--bf16-kernels amx: the AMX tiles cannot run here (\(ComputeRuntime.bf16KernelReason))")
        }
    }

    func run() throws {
        let p = try parsed
        var config = GEMMBench.Config()
        config.shapes = p.shapes
        config.tokens = p.tokens
        config.formats = p.formats
        config.runs = runs
        config.threads = threads
        config.tileBytes = tileKib * 1024
        config.path = path
        config.dtype = dtype
        config.bf16Kernels = try parsedKernels
        let report = try RuntimeReport.current()
        let header = report.lines + ["threads used: \(threads) (dense: OpenBLAS's; quantized: OpenMP), path: \(dtype == .bf16 ? "bf16 kernel" : "\(path)"), dtype: \(dtype) (dense: fp32)"]
        if !json { header.forEach { print($0) } }
        let records = try GEMMBench.run(config) { progress in
            if case let .measuring(what, done, total, elapsed) = progress {
                let eta = done > 0 ? String(format: ", ETA %.0f s", elapsed / Double(done) * Double(total - done)) : ""
                FileHandle.standardError.write(Data("[\(done)/\(total)] \(what)\(eta)\n".utf8))
            }
        }
        if json {
            struct Output: Encodable { let runtime: RuntimeReport; let threads: Int; let runs: Int; let dtype: String; let records: [GEMMBench.Record] }
            let encoder = JSONEncoder()
            encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
            print(String(decoding: try encoder.encode(Output(runtime: report, threads: threads, runs: runs, dtype: dtype.rawValue, records: records)), as: UTF8.self))
        } else {
            print(GEMMBench.table(records))
        }
    }
}

struct ModelSpeed: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "model",
        abstract: "Prompt processing and generation tokens/s of a model, as llama-bench's pp512 / tg128.",
        discussion: """
            Times one forward over --prompt-tokens random tokens, and --gen-tokens tokens decoded one
            at a time from an empty KV cache; medians of --runs runs; peak RSS of the process.

            Example: qlora bench model --model models/SmolLM2-135M-Instruct.Q4_1.gguf
            """
    )

    @Option(help: "A GGUF file or a quantized folder.") var model = "models/SmolLM2-135M-Instruct.Q4_1.gguf"
    @Option(help: "Prompt length (pp).") var promptTokens = 512
    @Option(help: "Tokens to generate (tg).") var genTokens = 128
    @Option(help: "Runs; medians are reported.") var runs = 3
    @Option(help: ComputeDTypeChoice.help(default: .fp32)) var computeDtype = ComputeDTypeChoice.fp32
    @Flag(help: "Print JSON for scripts.") var json = false

    func validate() throws {
        guard promptTokens > 0, genTokens > 0, runs > 0 else { throw ValidationError("--prompt-tokens, --gen-tokens and --runs must be positive") }
    }

    func run() throws {
        let r = try ModelBench.run(path: model, promptTokens: promptTokens, generatedTokens: genTokens, runs: runs,
                                   computeDType: try computeDtype.resolved()) {
            FileHandle.standardError.write(Data("\($0)\n".utf8))
        }
        if json {
            let encoder = JSONEncoder()
            encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
            print(String(decoding: try encoder.encode(r), as: UTF8.self))
        } else {
            try RuntimeReport.current().lines.forEach { print($0) }
            print(String(format: "%@ (%@): load %.2f s | pp%d %.1f tokens/s | tg%d %.1f tokens/s | peak RSS %.0f MB", r.model, r.computeDType,
                         r.loadSeconds, r.promptTokens, r.promptTokensPerSecond, r.generatedTokens, r.generationTokensPerSecond,
                         Double(r.peakRSSBytes) / 1e6))
        }
    }
}

struct TrainSpeed: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "train",
        abstract: "Tokens/s, peak RSS and where the time goes in one LoRA training configuration.",
        discussion: """
            Runs --warmup + --steps training steps (forward, backward, clipping, AdamW, the EMA
            with --ema) on --batch sequences of --length random tokens, all trained; reports the
            median step and, per kind
            of work, the seconds per step and share of the step: the frozen 4-bit GEMMs forward and
            backward (dX), LoRA, attention, RMSNorms, element-wise work (RoPE, SwiGLU, residual
            copies), the LM head and loss, the optimizer (clipping, AdamW), the EMA (--ema) and
            everything else, and the frozen GEMMs' GFLOP/s inside the step beside dense sgemm
            on the same products. Peak RSS is the process's: one configuration per process
            (benches/train.sh runs the grid of the closing notes).

            --objective dpo (reward, orpo, simpo) times a preference step on the same rows read \
            as pairs: beside --objective sft --mask-prompt it gives what a DPO update costs \
            against an SFT update on as many sequences (the reference log-probabilities being \
            cached, a DPO step is one forward and backward).

            Examples: qlora bench train --rank 16 --grad-checkpoint --ema 0.999
                      qlora bench train --objective dpo --batch 8 --against-sft
                      qlora bench train --shape llama-7b --layers 2 --batch 1 --length 512 --grad-checkpoint
                      qlora bench train --compute-dtype bf16 --against-fp32 --steps 7
            """
    )

    @Option(help: "A GGUF file or a quantized folder.") var model = "models/SmolLM2-135M-Instruct.Q4_1.gguf"
    @Option(help: "A synthetic model instead: \(SyntheticShape.allCases.map(\.rawValue).joined(separator: ", ")) (NF4 with double quantization, seeded random weights).")
    var shape: SyntheticShape?
    @Option(help: "Blocks of the synthetic shape to keep (default: all).") var layers: Int?
    @Option(help: "LoRA rank (alpha = 2r, targets q/k/v/o/gate/up/down).") var rank = 16
    @Option(help: "Sequences per step.") var batch = 4
    @Option(help: "Tokens per sequence.") var length = 256
    @Flag(help: "Recompute each block in the backward (per-block gradient checkpointing).") var gradCheckpoint = false
    @Option(help: "EMA decay of the adapters' shadows, updated every step (0: no EMA).") var ema = 0.0
    @Option(help: "LoRA dropout, a fresh mask each step (0: none; qlora train's default is 0.05).") var loraDropout: Float = 0
    @Option(help: "Timed steps; the median is reported.") var steps = 5
    @Option(help: "Untimed steps first.") var warmup = 1
    @Option(help: "Objective of the step: sft, or a preference one (reward, dpo, orpo, simpo: --batch rows are --batch/2 pairs, first half of each row the prompt).")
    var objective = ObjectiveKind.sft
    @Flag(help: "sft: leave the first half of each row unscored, as the preference objectives do (same rows, same scored tokens).")
    var maskPrompt = false
    @Flag(help: "With a preference --objective: alternate each step with an SFT step on the same rows and scored tokens and report the ratio (same machine load for both).")
    var againstSft = false
    @Flag(help: "DoRA adapters (PEFT's use_dora) instead of plain LoRA.") var useDora = false
    @Option(help: "The optimizer, as qlora train takes it: adamw or adamw_8bit.") var optim = AdamW.Kind.adamw
    @Flag(help: "With --use-dora: alternate each step with a plain LoRA step of the same rank on the same rows and report the ratio.")
    var againstLora = false
    @Option(help: ComputeDTypeChoice.help(default: .fp32)) var computeDtype = ComputeDTypeChoice.fp32
    @Flag(help: "With --compute-dtype bf16: alternate each step with the same step in fp32 (same adapters, same rows) and report bf16's speed-up (same machine load for both).")
    var againstFp32 = false
    @Flag(help: "Print JSON for scripts.") var json = false

    func validate() throws {
        if againstLora, !useDora { throw ValidationError("--against-lora compares --use-dora with plain LoRA: add --use-dora") }
        if againstSft, !objective.usesPairs { throw ValidationError("--against-sft compares a preference --objective with SFT") }
        if objective.usesPairs { guard batch % 2 == 0 else { throw ValidationError("--objective \(objective.rawValue): --batch counts rows, two per pair: make it even") } }
        guard rank > 0, batch > 0, length > 1, steps > 0, warmup >= 0 else {
            throw ValidationError("--rank, --batch, --steps must be positive, --length at least 2")
        }
        guard (0..<1).contains(ema) else { throw ValidationError("--ema must be in [0, 1), got \(ema)") }
        guard (0..<1).contains(loraDropout) else { throw ValidationError("--lora-dropout must be in [0, 1), got \(loraDropout)") }
    }

    func run() throws {
        var c = TrainBench.Config()
        c.model = model
        c.shape = shape
        c.layers = layers
        c.rank = rank
        c.batch = batch
        c.length = length
        c.gradientCheckpointing = gradCheckpoint
        c.ema = ema
        c.loraDropout = loraDropout
        c.steps = steps
        c.warmup = warmup
        c.objective = objective
        c.maskPrompt = maskPrompt
        c.againstSFT = againstSft
        c.useDoRA = useDora
        c.optimizer = optim
        c.againstLoRA = againstLora
        c.dtype = try computeDtype.resolved()
        if againstFp32, c.dtype != .bf16 { throw ValidationError("--against-fp32 compares --compute-dtype bf16 with fp32: add --compute-dtype bf16") }
        c.againstFP32 = againstFp32
        let r = try TrainBench.run(c) { FileHandle.standardError.write(Data("\($0)\n".utf8)) }
        if json {
            let encoder = JSONEncoder()
            encoder.outputFormatting = [.sortedKeys]
            print(String(decoding: try encoder.encode(r), as: UTF8.self))
            return
        }
        try RuntimeReport.current().lines.forEach { print($0) }
        print(String(format: "%@, %@, %@ GEMMs: %@r %d, batch %d × %d, checkpointing %@, EMA %@, dropout %@: %.1f tokens/s (step %.2f s), peak RSS %.0f MiB, %d trainable",
                     r.model, r.objective, r.dtype, r.useDoRA == true ? "DoRA " : "", r.rank, r.batch, r.length, r.gradientCheckpointing ? "on" : "off", r.ema > 0 ? "\(r.ema)" : "off", r.loraDropout > 0 ? "\(r.loraDropout)" : "off",
                     r.tokensPerSecond, r.stepSecondsMedian, Double(r.peakRSSBytes) / 1048576, r.trainableParameters))
        print("kind          s/step   share")
        for kind in StepProfile.Kind.allCases.map(\.rawValue) + ["other"] {
            print(kind.padding(toLength: 12, withPad: " ", startingAt: 0)
                  + String(format: " %7.3f  %5.1f%%", r.seconds[kind] ?? 0, 100 * (r.shares[kind] ?? 0)))
        }
        print(String(format: "frozen GEMMs in the step: %.0f GFLOP/s; dense sgemm, same products: %.0f GFLOP/s (%.2f×)",
                     r.frozenGFLOPS, r.denseGFLOPS, r.frozenGFLOPS / r.denseGFLOPS))
        if let fp32 = r.fp32StepSecondsMedian, let speedup = r.speedupOverFP32Median, let best = r.speedupOverFP32Best {
            print(String(format: "bf16 step against an fp32 step on the same %d × %d rows, alternated: %.2f s vs %.2f s (medians); median speed-up %.3f×, fastest steps %.3f×",
                         r.batch, r.length, r.stepSecondsMedian, fp32, speedup, best))
        }
        if let plain = r.loraStepSecondsMedian, let ratio = r.ratioToLoRAMedian {
            print(String(format: "DoRA step against a plain LoRA step on the same %d rows, alternated: %.2f s vs %.2f s (medians); median ratio %.3f",
                         r.batch, r.stepSecondsMedian, plain, ratio))
        }
        if let sft = r.sftStepSecondsMedian, let ratio = r.ratioToSFTMedian {
            print(String(format: "%@ step against an SFT step on the same %d rows, alternated: %.2f s vs %.2f s (medians); median ratio %.3f",
                         r.objective, r.batch, r.stepSecondsMedian, sft, ratio))
        }
    }
}

struct AllReduceSpeed: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "allreduce",
        abstract: "Under mpirun: the time of one update's gradient all-reduce for a model's LoRA adapters.",
        discussion: """
            Sums a flat buffer of the adapters' size (the LoRA gradients of --rank on the q/k/v/o/
            gate/up/down projections of every block, as qlora train all-reduces them each update)
            over the ranks, --runs times after a warm-up, and prints the median seconds, the bytes
            and the bus bandwidth (2(N−1)/N × bytes / seconds, the figure ring all-reduces are
            compared by). Without mpirun it says so.

            Examples: mpirun -np 2 --bind-to none qlora bench allreduce
                      mpirun -np 2 --bind-to none qlora bench allreduce --shape llama-7b
                      mpirun --hostfile hosts -np 4 qlora bench allreduce --shape llama-7b --mca …
            """
    )

    @Option(help: "A GGUF file or a quantized folder.") var model = "models/SmolLM2-135M-Instruct.Q4_1.gguf"
    @Option(help: "A synthetic shape instead: \(SyntheticShape.allCases.map(\.rawValue).joined(separator: ", ")) (built as a configuration only).")
    var shape: SyntheticShape?
    @Option(help: "LoRA rank.") var rank = 16
    @Option(help: "Timed all-reduces.") var runs = 10

    func run() throws {
        defer { MPIWorld.finish() }   // also under mpirun -np 1, where MPI started for one rank
        guard let world = try DataParallel.start() else {
            print("bench allreduce: not under mpirun with more than one rank (mpirun -np 2 --bind-to none qlora bench allreduce)")
            return
        }
        let config: ModelConfig
        if let shape { config = try shape.config(layers: nil) } else { config = try DecoderModel(path: model).config }
        let lora = LoRAConfig(rank: rank, alpha: Float(2 * rank))
        let estimate = MemoryEstimate(config: config, frozenBytes: 0, lora: lora, trainNorms: false, sequences: 1, length: 1,
                                      gradientCheckpointing: false, ema: false)
        let floats = estimate.gradientBytes / 4
        var buffer = (0..<floats).map { Float($0 % 7) }
        var seconds: [Double] = []
        try buffer.withUnsafeMutableBufferPointer { b in
            for run in 0...runs {
                try MPIWorld.barrier()
                let start = Date()
                try MPIWorld.allReduceSum(b)
                if run > 0 { seconds.append(Date().timeIntervalSince(start)) }
            }
        }
        let median = seconds.sorted()[seconds.count / 2]
        let bytes = Double(floats * 4), n = Double(world.size)
        if world.isWriter {
            print(String(format: "%@ r%d: %.1f MiB of gradients, %d ranks (%@): all-reduce %.1f ms (median of %d), bus bandwidth %.2f GB/s",
                         shape?.rawValue ?? model, rank, bytes / 1_048_576, world.size, world.process.flavor, 1000 * median, runs,
                         2 * (n - 1) / n * bytes / median / 1e9))
        }
    }
}
