import ArgumentParser
import Foundation
import QLoRA

struct Estimate: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Memory a training run needs, by part, against the memory installed.",
        discussion: """
            The same arithmetic qlora train runs before it starts (and refuses a run that does not \
            fit in 90% of the memory): frozen 4-bit weights, fp32 adapters, their gradients, AdamW \
            moments, EMA shadows, activations kept for the backward (every block's, or with \
            --grad-checkpoint one block's plus the block inputs), the LM head's logits chunk, and \
            buffers. --shape estimates a synthetic model without building it.

            Examples:
              qlora estimate --lora-r 16 --batch-size 4 --max-len 256
              qlora estimate --objective dpo --batch-size 4 --max-len 512   # 8 rows: 4 pairs
              qlora estimate --shape llama-7b --max-len 512 --batch-size 1 --grad-checkpoint --json
            """
    )

    @Option(help: "A GGUF file or a quantized model folder.") var model = "models/SmolLM2-135M-Instruct.Q4_1.gguf"
    @Option(help: "A synthetic shape instead of --model: \(SyntheticShape.allCases.map(\.rawValue).joined(separator: ", ")).")
    var shape: SyntheticShape?
    @Option(help: "Blocks of the synthetic shape to keep (default: all).") var layers: Int?
    @Option(help: "LoRA rank r.") var loraR = 16
    @Option(help: "Linears to adapt (as qlora train takes them).") var loraTargets = "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj"
    @Option(help: "LoRA dropout (its mask buffer counts when > 0).") var loraDropout: Float = 0.05
    @Flag(help: "Norms train too.") var trainNorms = false
    @Flag(help: "DoRA adapters, as qlora train --use-dora (the magnitudes, and z [tokens, out] kept per adapted linear).") var useDora = false
    @Option(help: "Sequences per micro-batch (pairs with a preference --objective).") var batchSize = 4
    @Option(help: "The run's objective: sft, or reward, dpo, orpo, simpo (two rows per pair).") var objective = ObjectiveKind.sft
    @Option(help: "Tokens per sequence.") var maxLen = 256
    @Flag(help: "Per-block gradient checkpointing.") var gradCheckpoint = false
    @Option(help: "EMA decay (0: no EMA shadows).") var ema = 0.999
    @Option(help: "What the run computes in, as qlora train takes it (bf16 adds the rounded input panel).")
    var computeDtype = ComputeDTypeChoice.auto
    @Option(help: "The optimizer, as qlora train takes it: adamw or adamw_8bit (8-bit moments).") var optim = AdamW.Kind.adamw
    @Flag(help: "Print JSON (with total_bytes) for scripts.") var json = false

    func run() throws {
        let config: ModelConfig, frozen: Int
        if let shape {
            config = try shape.config(layers: layers)
            frozen = try shape.frozenBytes(layers: layers)
        } else {
            let m = try DecoderModel(path: model)
            config = m.config
            frozen = m.frozenBytes
        }
        let lora = LoRAConfig(rank: loraR, alpha: Float(2 * loraR), dropout: loraDropout, targets: try LoRATargets(parsing: loraTargets),
                              useDoRA: useDora)
        try lora.validate(layers: config.numLayers)
        let sequences = batchSize * (objective.usesPairs ? 2 : 1)
        let e = MemoryEstimate(config: config, frozenBytes: frozen, lora: lora, trainNorms: trainNorms, sequences: sequences,
                               length: maxLen, gradientCheckpointing: gradCheckpoint, ema: ema > 0,
                               computeDType: computeDtype.expected, optimizer: optim)
        if json {
            let encoder = JSONEncoder()
            encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
            print(String(decoding: try encoder.encode(e), as: UTF8.self))
            return
        }
        print("\(shape?.rawValue ?? model): r \(loraR), batch \(sequences) × \(maxLen)\(objective.usesPairs ? " (\(batchSize) pairs, \(objective.rawValue))" : "")"
              + (gradCheckpoint ? ", gradient checkpointing" : ""))
        e.lines.forEach { print("  " + $0) }
        print(e.fits ? "fits" : "does not fit: " + e.advice(gradientCheckpointing: gradCheckpoint))
    }
}
