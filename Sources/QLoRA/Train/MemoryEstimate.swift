import Foundation
import Quant

/// What a training run will hold, by part, before it starts — the arithmetic mirrors what
/// Trainer allocates (one arena per step) and what the model and optimizer keep.
/// Legend: B sequences, T tokens each, N = B·T, C hidden, F intermediate, H/Hkv heads, D head
/// dim, V vocab, L layers, r rank.
public struct MemoryEstimate: Codable, Sendable, Equatable {
    /// 4-bit linears, token matrices and norms as held (mapped pages count once touched).
    public var frozenWeightsBytes: Int
    /// fp32 adapter (and trained norm) values, their gradients, AdamW's two moments, EMA shadows.
    public var adapterBytes: Int
    public var gradientBytes: Int
    public var optimizerBytes: Int
    public var emaBytes: Int
    /// Activations kept for the backward: every block's (or, with checkpointing, one block's
    /// plus the L + 1 block inputs), and the backward's scratch.
    public var activationBytes: Int
    /// One chunk of LM-head logits and the head's inputs and gradients, beyond the backward's
    /// gradient buffers (`activationBytes`), which reuse their memory once the head is done.
    public var logitsBytes: Int
    /// Per-thread tile buffers of the GEMMs, the runtime, libraries and the tokenizer.
    public var bufferBytes: Int
    public var totalBytes: Int
    /// Physical memory of the machine (or what the caller passed in).
    public var availableBytes: Int

    enum CodingKeys: String, CodingKey {
        case frozenWeightsBytes = "frozen_weights_bytes", adapterBytes = "adapter_bytes", gradientBytes = "gradient_bytes"
        case optimizerBytes = "optimizer_bytes", emaBytes = "ema_bytes", activationBytes = "activation_bytes"
        case logitsBytes = "logits_bytes", bufferBytes = "buffer_bytes", totalBytes = "total_bytes"
        case availableBytes = "available_bytes"
    }

    /// Runtime, OpenBLAS and OpenMP, tokenizer and bookkeeping: `qlora info` peaks at ≈ 30 MB.
    public static let runtimeBytes = 40 << 20

    public init(config c: ModelConfig, frozenBytes: Int, lora: LoRAConfig, trainNorms: Bool, sequences B: Int, length T: Int,
                gradientCheckpointing: Bool, ema: Bool, headChunkRows: Int? = nil, threads: Int = 2, computeDType: ComputeDType = .fp32,
                optimizer: AdamW.Kind = .adamw, dataParallel: Bool = false,
                availableBytes: Int = Int(ProcessInfo.processInfo.physicalMemory)) {
        let N = B * T, C = c.hiddenSize, F = c.intermediateSize
        let qDim = c.numHeads * c.headDim, kvDim = c.numKVHeads * c.headDim
        let layers = lora.adaptedLayers(of: c.numLayers)
        var adapterFloats = 0, savedPerLayer: [Int] = Array(repeating: 0, count: c.numLayers)
        // AdamW's two moments: 8 bytes a value; adamw_8bit: 2 a value and 8 a block of 256 for
        // tensors of at least 4096 values (Blockwise8Moments), 8 a value below.
        var optimizer8 = 0, doraRows = 0
        func moments(_ n: Int) -> Int {
            n >= Blockwise8Moments.minimumCount ? 2 * n + 8 * ((n + Blockwise8Moments.blockSize - 1) / Blockwise8Moments.blockSize) : 8 * n
        }
        for l in layers {
            for m in c.family.linears where lora.targets.matches(m, layer: l) {
                let (rows, cols) = m.shape(in: c)
                adapterFloats += lora.rank * (rows + cols)
                optimizer8 += moments(lora.rank * rows) + moments(lora.rank * cols)
                savedPerLayer[l] += N * lora.rank
                if lora.useDoRA {
                    // DoRA: the magnitude [out] trains; the forward keeps z [N, out] for dm; ‖W_j‖² in float64.
                    adapterFloats += rows
                    optimizer8 += moments(rows)
                    savedPerLayer[l] += N * rows
                    doraRows += rows
                }
            }
        }
        if trainNorms {
            let norms = c.numLayers * c.family.norms.reduce(0) { $0 + $1.size.size(in: c) } + C
            adapterFloats += norms
            optimizer8 += 8 * norms
        }
        let block = N * (4 * C + 2 * qDim + 2 * kvDim + 3 * F + 2) + B * c.numHeads * T * T
        let kept = gradientCheckpointing ? block + (savedPerLayer.max() ?? 0) : c.numLayers * block + savedPerLayer.reduce(0, +)
        let inputs = (c.numLayers + 1) * N * C
        // The backward's gradient buffers (BlockGradients, and dIn) come after the head, in its
        // memory; dx and one more block output before it.
        let afterHead = N * (2 * C + 2 * qDim + 2 * kvDim + 3 * F) + N * C
        let scratch = afterHead + 2 * N * C
        let dropout = lora.dropout > 0 ? N * max(C, F, qDim) : 0
        // DoRA's backward: c ⊙ dy [N, out] of the widest linear.
        let doraScratch = lora.useDoRA ? N * max(C, F, qDim, kvDim, c.family.linears.map { $0.shape(in: c).rows }.max() ?? 0) : 0
        frozenWeightsBytes = frozenBytes
        adapterBytes = 4 * adapterFloats
        gradientBytes = 4 * adapterFloats
        optimizerBytes = optimizer == .adamw8bit ? optimizer8 : 8 * adapterFloats
        emaBytes = ema ? 4 * adapterFloats : 0
        activationBytes = 4 * (kept + inputs + scratch + dropout + doraScratch)
        let headRows = min(headChunkRows ?? LMHead.defaultChunkRows(vocab: c.vocabSize), N)
        let head = (c.finalLogitSoftcap == nil ? 1 : 2) * headRows * c.vocabSize + 2 * N * C + N   // + tanh of a soft-capped chunk
        logitsBytes = 4 * max(0, head - afterHead)
        // bf16 products round their input (X, dY or a chunk of logit gradients) into two k slices
        // of at most 768 columns the calling thread keeps for the next call: rows rounded up to
        // the kernel's 8, 2 bytes each. Their W panels fit in the per-thread 4 MiB.
        let rows8 = { ($0 + 7) / 8 * 8 }
        let bf16Panel = computeDType == .bf16 ? 2 * 2 * rows8(max(N, headRows)) * 768 : 0
        // A rank of a data-parallel run sums its gradients over the ranks through a flat copy of
        // them (DataParallel.Overlapped; summing after the backward needs at most 16 MiB of it).
        bufferBytes = Self.runtimeBytes + threads * (4 << 20) + bf16Panel + (dataParallel ? 4 * adapterFloats : 0) + 8 * doraRows
        totalBytes = frozenWeightsBytes + adapterBytes + gradientBytes + optimizerBytes + emaBytes + activationBytes
            + logitsBytes + bufferBytes
        self.availableBytes = availableBytes
    }

    /// Whether it fits in 90% of the machine's memory.
    public var fits: Bool { totalBytes <= availableBytes / 10 * 9 }

    /// The breakdown, one part per line, in MiB.
    public var lines: [String] {
        func mib(_ b: Int) -> String { String(format: "%9.1f MiB", Double(b) / 1_048_576) }
        return [
            "frozen weights   \(mib(frozenWeightsBytes))",
            "adapters         \(mib(adapterBytes))",
            "gradients        \(mib(gradientBytes))",
            "AdamW moments    \(mib(optimizerBytes))",
            "EMA shadows      \(mib(emaBytes))",
            "activations      \(mib(activationBytes))",
            "logits and loss  \(mib(logitsBytes))",
            "buffers, runtime \(mib(bufferBytes))",
            "total            \(mib(totalBytes)) of \(String(format: "%.1f GiB", Double(availableBytes) / 1_073_741_824)) installed",
        ]
    }

    /// What to change when it does not fit.
    public func advice(gradientCheckpointing: Bool) -> String {
        var tips: [String] = []
        if !gradientCheckpointing { tips.append("add --grad-checkpoint (keeps one block's activations)") }
        tips.append("lower --batch-size (raise --grad-accum to keep the batch) or --max-len")
        if frozenWeightsBytes > availableBytes / 2 { tips.append("the frozen weights alone take most of the memory: a smaller model") }
        return tips.joined(separator: "; ")
    }
}
