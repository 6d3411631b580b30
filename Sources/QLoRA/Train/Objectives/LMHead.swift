import Foundation
import QuantKernels

/// The final norm, the LM head and per-position cross-entropy, shared by the objectives that
/// score tokens (causal LM, DPO, SimPO, ORPO). Legend: N = B·T rows, C hidden, V vocab.
///
///   xn[N, C] = rmsnorm(x)                                     (`normalize`)
///   logits = xn·lm_headᵀ, soft-capped where the family does,  (`crossEntropy`, a chunk of rows at
///   CE_t = −log softmax(logits_t)[target_t]                    a time: never [N, V] whole)
///   dxn_t = gradScale · (softmax − onehot)·lm_head
///   dx = rmsnorm backward of dxn                              (`normBackward`)
enum LMHead {
    /// rmsnorm(x) with the model's final norm (the trained copy when norms train): xn [N, C]
    /// and the rows' reciprocal RMS [N] the backward needs.
    static func normalize(_ x: FloatBuffer, rows: Int, model: DecoderModel, adapters: ModelAdapters, arena: FloatArena)
        -> (xn: FloatBuffer, rstd: FloatBuffer) {
        let c = model.config, C = c.hiddenSize
        let xn = arena.take(rows * C), rstd = arena.take(rows)
        rmsNormForward(y: xn.base, rstd: rstd.base, x: x.base, weight: model.weights.finalNorm, trainable: adapters.finalNorm,
                       tokens: rows, eps: c.rmsNormEps)
        return (xn, rstd)
    }

    /// dx [N, C] from dxn: the final norm's backward (adding its weight's gradient when it trains).
    static func normBackward(dx: FloatBuffer, dxn: FloatBuffer, x: FloatBuffer, rstd: FloatBuffer, rows: Int, model: DecoderModel,
                             adapters: ModelAdapters) {
        rmsNormBackward(dx: dx.base, dy: dxn.base, x: x.base, rstd: rstd.base, weight: model.weights.finalNorm,
                        trainable: adapters.finalNorm, tokens: rows)
    }

    /// Rows of logits the head computes at once unless told: as many as 48 MiB of fp32 logits
    /// hold, in multiples of 64, between 128 and 512 (SmolLM2's 49,152-token vocabulary: 256;
    /// Gemma 3's 262,144: 128). Fewer rows make the head's products slower — each chunk packs
    /// the whole head again, and bf16 packs cost as much as fp32's at half the arithmetic — and
    /// the memory is not all extra: a training step's backward reuses the chunk's pages for its
    /// gradient buffers (Trainer rewinds the arena after the head).
    static func defaultChunkRows(vocab V: Int) -> Int {
        let budget = 48 << 20
        return min(512, max(128, budget / (4 * max(V, 1)) / 64 * 64))
    }

    /// Σ CE over the positions whose target is not −100, `chunkRows` rows of logits at a time
    /// (nil: `defaultChunkRows`).
    /// `rowLoss` [N], when given, receives each position's CE (0 where not scored); `dxn` [N, C],
    /// when given, receives gradScale · ∂(Σ CE)/∂xn (zero rows where nothing is scored).
    static func crossEntropy(xn: FloatBuffer, targets: [Int32], model: DecoderModel, chunkRows: Int?, gradScale: Float,
                             dxn: FloatBuffer?, rowLoss: UnsafeMutablePointer<Double>?, arena: FloatArena) throws -> LossSum {
        let c = model.config, C = c.hiddenSize, V = c.vocabSize, N = targets.count
        let chunk = max(1, chunkRows ?? defaultChunkRows(vocab: V))
        let logits = arena.take(min(chunk, N) * V)
        let tanhs = c.finalLogitSoftcap == nil ? nil : arena.take(min(chunk, N) * V)
        var losses = [Double](repeating: 0, count: min(chunk, N))
        var total = LossSum()
        var first = 0
        while first < N {
            let n = min(chunk, N - first)
            let labels = Array(targets[first..<(first + n)])
            if labels.allSatisfy({ $0 == -100 }) {
                dxn?.base.advanced(by: first * C).update(repeating: 0, count: n * C)
                rowLoss?.advanced(by: first).update(repeating: 0, count: n)
                first += n
                continue
            }
            try model.weights.lmHead.forward(xn.base + first * C, rows: n, width: C, vocab: V, into: logits.base, dtype: model.computeDType)
            // Gemma 2's final soft-capping: logits ← cap·tanh(logits / cap), keeping tanh for the backward.
            if let cap = c.finalLogitSoftcap, let tanhs {
                for i in 0..<(n * V) {
                    let t = tanhf(logits.base[i] / cap)
                    tanhs.base[i] = t
                    logits.base[i] = cap * t
                }
            }
            let sum = labels.withUnsafeBufferPointer { l in
                losses.withUnsafeMutableBufferPointer { qk_cross_entropy_rows(logits.base, l.baseAddress, Int64(n), Int64(V), gradScale, $0.baseAddress, 0) }
            }
            rowLoss?.advanced(by: first).update(from: losses, count: n)
            total = total + LossSum(sum: sum, tokens: labels.reduce(0) { $1 == -100 ? $0 : $0 + 1 })
            if let dxn {
                if let tanhs { for i in 0..<(n * V) { logits.base[i] *= 1 - tanhs.base[i] * tanhs.base[i] } }
                try model.weights.lmHead.backward(logits.base, rows: n, width: C, vocab: V, into: dxn.base + first * C, accumulate: false,
                                                  dtype: model.computeDType)
            }
            first += n
        }
        return total
    }
}

/// Each sequence's log-probability of its scored tokens (the completion: labels not −100),
/// Σ_t log softmax(logits_{t−1})[id_t], from one pass through the head; and the backward for
/// any loss of those sums. Legend: B sequences, T tokens each, N = B·T, C hidden.
///
///   π_b = −Σ_{t in row b, completion} CE_t    (the head pass keeps dxn with unit scale, one row
///                                              per position: ∂CE_t/∂xn_t)
///   backward: given ∂L/∂CE_t, row t of dxn is scaled by it (CE's gradient is linear in its
///   scale), then the final norm's backward gives dx
///
/// One head pass serves the loss and its gradient because every per-token gradient of a
/// sequence-level loss is the unit one times a per-position factor.
struct SequenceLogProbs {
    /// [B]: π_b, summed in position order in float64.
    let sums: [Double]
    /// [B]: tokens scored in each row (the completion's length).
    let counts: [Int]
    /// [N]: CE of each position the head scored (0 elsewhere); `targets` [N] what it scored.
    let positionLoss: [Double]
    let targets: [Int32]
    /// [N]: whether a position belongs to its row's completion (counts toward π_b).
    let inCompletion: [Bool]
    private let x: FloatBuffer, rstd: FloatBuffer, dxn: FloatBuffer?
    let rows: Int, length: Int

    /// - Parameters:
    ///   - wholeRows: rows whose every real token after the first is scored too (prompt
    ///     included), as ORPO's NLL term wants; their completion sums are unchanged.
    ///   - withGradient: keep dxn for `backward`.
    init(hidden x: FloatBuffer, batch: TokenBatch, model: DecoderModel, adapters: ModelAdapters, chunkRows: Int?,
         wholeRows: Range<Int> = 0..<0, withGradient: Bool, arena: FloatArena) throws {
        let completion = batch.shiftedTargets, N = completion.count, T = batch.length
        var targets = completion
        for b in wholeRows {
            for t in 0..<(batch.lengths[b] - 1) { targets[b * T + t] = batch.inputIds[b * T + t + 1] }
        }
        let (xn, rstd) = LMHead.normalize(x, rows: N, model: model, adapters: adapters, arena: arena)
        let dxn = withGradient ? arena.take(N * model.config.hiddenSize) : nil
        var rowLoss = [Double](repeating: 0, count: N)
        _ = try rowLoss.withUnsafeMutableBufferPointer {
            try LMHead.crossEntropy(xn: xn, targets: targets, model: model, chunkRows: chunkRows, gradScale: 1, dxn: dxn,
                                    rowLoss: $0.baseAddress, arena: arena)
        }
        var sums = [Double](repeating: 0, count: batch.sequences), counts = [Int](repeating: 0, count: batch.sequences)
        for b in 0..<batch.sequences {
            for t in 0..<T where completion[b * T + t] != -100 {
                sums[b] -= rowLoss[b * T + t]
                counts[b] += 1
            }
        }
        self.sums = sums
        self.counts = counts
        positionLoss = rowLoss
        self.targets = targets
        inCompletion = completion.map { $0 != -100 }
        self.x = x
        self.rstd = rstd
        self.dxn = dxn
        rows = N
        length = T
    }

    /// πbar_b = π_b / n_b: the length-averaged log-probability (SimPO, ORPO, IPO).
    var means: [Double] { zip(sums, counts).map { $1 > 0 ? $0 / Double($1) : 0 } }

    /// ∂L/∂CE_t [N] of a loss of the sums: −∂L/∂π_b at each completion position of row b.
    func positionGradient(dSums: [Double]) -> [Double] {
        (0..<rows).map { inCompletion[$0] ? -dSums[$0 / length] : 0 }
    }

    /// Writes dx [N, C] = gradScale · Σ_t ∂L/∂CE_t · ∂CE_t/∂x, given `dPosition` [N] = ∂L/∂CE_t.
    func backward(dPosition: [Double], gradScale: Float, dx: FloatBuffer, model: DecoderModel, adapters: ModelAdapters) {
        guard let dxn else { preconditionFailure("SequenceLogProbs.backward needs withGradient") }
        let C = model.config.hiddenSize
        for (t, d) in dPosition.enumerated() {
            let s = Float(d * Double(gradScale)), row = dxn.base + t * C
            for i in 0..<C { row[i] *= s }
        }
        LMHead.normBackward(dx: dx, dxn: dxn, x: x, rstd: rstd, rows: rows, model: model, adapters: adapters)
    }
}
