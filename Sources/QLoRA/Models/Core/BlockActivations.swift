import Foundation
import QuantKernels

/// A fixed-size fp32 allocation, zeroed, 64-byte aligned, freed with the object: the storage of
/// activations, handed to the kernels as a pointer without `withUnsafe…` closures.
public final class FloatBuffer {
    public let count: Int
    public let base: UnsafeMutablePointer<Float>
    /// The arena a borrowed buffer lives in (kept alive by it); nil when the buffer owns its memory.
    private let arena: FloatArena?

    public init(count: Int) {
        precondition(count >= 0, "FloatBuffer of \(count) floats")
        self.count = count
        let raw = UnsafeMutableRawPointer.allocate(byteCount: max(count, 1) * MemoryLayout<Float>.stride, alignment: 64)
        base = raw.initializeMemory(as: Float.self, repeating: 0, count: max(count, 1))
        arena = nil
    }

    /// `count` floats of `arena`'s memory at `base`, not zeroed.
    init(borrowing base: UnsafeMutablePointer<Float>, count: Int, arena: FloatArena) {
        self.count = count
        self.base = base
        self.arena = arena
    }

    deinit { if arena == nil { base.deallocate() } }

    /// All of it.
    public var buffer: UnsafeMutableBufferPointer<Float> { UnsafeMutableBufferPointer(start: base, count: count) }

    /// Rows [first, first + rows) of a row-major matrix `width` wide.
    public func rows(_ first: Int, count rows: Int, width: Int) -> UnsafeMutableBufferPointer<Float> {
        precondition(first >= 0 && rows >= 0 && (first + rows) * width <= count, "rows \(first)..<\(first + rows) of width \(width) in \(count) floats")
        return UnsafeMutableBufferPointer(start: base + first * width, count: rows * width)
    }

    public var array: [Float] { Array(buffer) }
}

/// Memory for the buffers of a training step, handed out in 64-byte aligned pieces and
/// taken back whole by `reset()`: a step of the same shape as the last reuses pages that are
/// already mapped instead of asking the kernel for fresh zeroed ones (~1.5 GB a step at
/// batch 4 × 256 on SmolLM2). Pieces are not zeroed. Not thread-safe.
///
/// Pieces taken since a `mark()` can be taken back early with `rewind(to:)`, so that what is
/// taken next reuses their memory: the LM head's chunk of logits and the backward's gradient
/// buffers share pages (a step's peak is the larger of the two, not their sum).
public final class FloatArena {
    private var chunks: [(base: UnsafeMutablePointer<Float>, capacity: Int)] = []
    private var chunk = 0
    private var used = 0
    /// Floats held now, and the most held at once since the last reset.
    private var demand = 0
    private var peakDemand = 0

    /// Where the arena stands: what `rewind(to:)` returns it to.
    public struct Mark {
        fileprivate let chunk: Int, used: Int, demand: Int
    }

    public init() {}

    deinit { chunks.forEach { $0.base.deallocate() } }

    /// Floats mapped.
    public var capacity: Int { chunks.reduce(0) { $0 + $1.capacity } }

    /// A piece of `count` floats, valid until the next `reset()`.
    public func take(_ count: Int) -> FloatBuffer {
        let n = (max(count, 1) + 15) / 16 * 16
        demand += n
        peakDemand = max(peakDemand, demand)
        while chunk < chunks.count, used + n > chunks[chunk].capacity {
            chunk += 1
            used = 0
        }
        if chunk == chunks.count {
            let size = max(n, 1 << 20)
            let raw = UnsafeMutableRawPointer.allocate(byteCount: size * MemoryLayout<Float>.stride, alignment: 64)
            chunks.append((raw.bindMemory(to: Float.self, capacity: size), size))
            used = 0
        }
        let b = FloatBuffer(borrowing: chunks[chunk].base + used, count: count, arena: self)
        used += n
        return b
    }

    public func mark() -> Mark { Mark(chunk: chunk, used: used, demand: demand) }

    /// Takes back every piece taken since `m` (none of them may be used after this); pieces
    /// taken before it stay.
    public func rewind(to m: Mark) {
        precondition(m.chunk < chunk || (m.chunk == chunk && m.used <= used), "rewind to a mark taken after the arena was reset or rewound past it")
        chunk = m.chunk
        used = m.used
        demand = m.demand
    }

    /// Takes every piece back (none may be used after this). When the last cycle needed more
    /// than one chunk, they are replaced by one chunk of the most it held at once.
    public func reset() {
        if chunks.count > 1 {
            chunks.forEach { $0.base.deallocate() }
            // Chunks below malloc's mmap threshold stay on its heap once freed: give the pages
            // back before the one chunk of the whole demand is mapped beside them.
            qk_release_free_memory()
            let raw = UnsafeMutableRawPointer.allocate(byteCount: peakDemand * MemoryLayout<Float>.stride, alignment: 64)
            chunks = [(raw.bindMemory(to: Float.self, capacity: peakDemand), peakDemand)]
        }
        chunk = 0
        used = 0
        demand = 0
        peakDemand = 0
    }
}

/// What one decoder layer's forward writes besides its output, for T tokens: the inputs of
/// every product and element-wise op, which its backward reads. Legend: T tokens, S keys
/// (cached + new), C hidden, F intermediate, H/Hkv heads, D head dim.
///
/// Inference reuses one set for every layer; training keeps one per layer.
public final class BlockActivations {
    /// Rows: B sequences of T / B tokens each, sequence b at rows b·T/B ..< (b+1)·T/B.
    public let T: Int
    /// B: the sequences of a training batch run side by side (1 when decoding).
    public let sequences: Int
    /// 1 / rms of the layer input x, [T] (input_layernorm).
    public let attentionRstd: FloatBuffer
    /// rmsnorm(x) ⊙ w, [T, C]: the input of q/k/v_proj.
    public let attentionInput: FloatBuffer
    /// Queries and keys after RoPE, values: [T, H·D], [T, Hkv·D], [T, Hkv·D].
    public let q: FloatBuffer
    public let k: FloatBuffer
    public let v: FloatBuffer
    /// Softmax probabilities [H, T, S], zero past the causal limit; nil when not kept.
    public let probabilities: FloatBuffer?
    /// Attention output, [T, H·D]: the input of o_proj.
    public let attentionOutput: FloatBuffer
    /// h = x + o_proj(attention), [T, C]: the residual stream between the two halves.
    public let residual: FloatBuffer
    /// 1 / rms of h, [T] (post_attention_layernorm).
    public let mlpRstd: FloatBuffer
    /// rmsnorm(h) ⊙ w, [T, C]: the input of gate/up_proj.
    public let mlpInput: FloatBuffer
    /// gate_proj and up_proj outputs, [T, F] each.
    public let gate: FloatBuffer
    public let up: FloatBuffer
    /// silu(gate) ⊙ up, [T, F]: the input of down_proj.
    public let mlpHidden: FloatBuffer
    /// q and k before their per-head norms, [T, H·D] and [T, Hkv·D], and 1 / rms of each
    /// head's row, [T·H] and [T·Hkv]: families with q/k norms (Qwen3) only.
    public let qRaw: FloatBuffer?
    public let kRaw: FloatBuffer?
    public let qRstd: FloatBuffer?
    public let kRstd: FloatBuffer?
    /// Sandwich-norm blocks (Gemma): o_proj's and down_proj's outputs before their norms,
    /// [T, C], and 1 / rms of each row, [T].
    public let attentionProjection: FloatBuffer?
    public let attentionProjectionRstd: FloatBuffer?
    public let mlpOutput: FloatBuffer?
    public let mlpOutputRstd: FloatBuffer?
    /// A fused linear's output before it is split (Phi-3's qkv_proj, gate_up_proj), [T, widest].
    public let fused: FloatBuffer?
    /// What each LoRA adapter of the layer keeps (u = drop(x)·Aᵀ, [T, r]; DoRA's z [T, out] too).
    let lora: [LinearSpec: LoRAAdapter.Saved]

    /// Tokens per sequence.
    public var sequenceLength: Int { T / sequences }

    /// - Parameters:
    ///   - tokens: T, all rows (B · tokens per sequence).
    ///   - keys: S, the keys each query may see at most (T / B without a cache).
    ///   - keepsProbabilities: allocate `probabilities` [B, H, T/B, S].
    ///   - sequences: B.
    ///   - adapters: the layer's LoRA adapters, for which room is made.
    public init(config c: ModelConfig, tokens T: Int, keys S: Int, keepsProbabilities: Bool, sequences B: Int = 1,
                adapters: LayerAdapters? = nil, arena: FloatArena? = nil, dropoutScratch: QLoRA.FloatBuffer? = nil) {
        func FloatBuffer(count: Int) -> QLoRA.FloatBuffer { arena?.take(count) ?? QLoRA.FloatBuffer(count: count) }
        precondition(B >= 1 && T % B == 0, "\(T) rows do not split into \(B) sequences")
        self.T = T
        sequences = B
        lora = (adapters?.adapters ?? [:]).mapValues {
            LoRAAdapter.Saved(tokens: T, rank: $0.rank, arena: arena, scratch: dropoutScratch, doraRows: $0.magnitude == nil ? 0 : $0.outFeatures)
        }
        let qDim = c.numHeads * c.headDim, kvDim = c.numKVHeads * c.headDim
        attentionRstd = FloatBuffer(count: T)
        attentionInput = FloatBuffer(count: T * c.hiddenSize)
        q = FloatBuffer(count: T * qDim)
        k = FloatBuffer(count: T * kvDim)
        v = FloatBuffer(count: T * kvDim)
        probabilities = keepsProbabilities ? FloatBuffer(count: c.numHeads * T * S) : nil   // B·H·(T/B)·S
        attentionOutput = FloatBuffer(count: T * qDim)
        residual = FloatBuffer(count: T * c.hiddenSize)
        mlpRstd = FloatBuffer(count: T)
        mlpInput = FloatBuffer(count: T * c.hiddenSize)
        gate = FloatBuffer(count: T * c.intermediateSize)
        up = FloatBuffer(count: T * c.intermediateSize)
        mlpHidden = FloatBuffer(count: T * c.intermediateSize)
        let qkNorm = c.family.hasQKNorms
        qRaw = qkNorm ? FloatBuffer(count: T * qDim) : nil
        kRaw = qkNorm ? FloatBuffer(count: T * kvDim) : nil
        qRstd = qkNorm ? FloatBuffer(count: T * c.numHeads) : nil
        kRstd = qkNorm ? FloatBuffer(count: T * c.numKVHeads) : nil
        let sandwich = c.family.hasSandwichNorms
        attentionProjection = sandwich ? FloatBuffer(count: T * c.hiddenSize) : nil
        attentionProjectionRstd = sandwich ? FloatBuffer(count: T) : nil
        mlpOutput = sandwich ? FloatBuffer(count: T * c.hiddenSize) : nil
        mlpOutputRstd = sandwich ? FloatBuffer(count: T) : nil
        fused = c.family.fusedWidth(c).map { FloatBuffer(count: T * $0) }
    }
}
