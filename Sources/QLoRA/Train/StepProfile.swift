import Foundation

/// Where a training step spends its time, by kind of work: filled while a profile is
/// installed (`StepProfile.install`), free otherwise. Each measured call reads the clock
/// twice (nothing per element) and its time is exclusive: a measured call inside another
/// (the final norm inside the head, the EMA inside the optimizer) counts for its own kind
/// only, so the kinds add up to the time measured, and the step's remainder is "other"
/// (embedding lookup, buffer bookkeeping). The benchmark and its tests read it.
public final class StepProfile: @unchecked Sendable {
    public enum Kind: String, CaseIterable, Codable, Sendable {
        /// The frozen 4-bit (or 8-bit) products of the block linears, forward: Y = X·Wᵀ.
        case gemmForward = "gemm_fwd"
        /// Their backward, the input gradient dX = dY·W (no dW: W is frozen).
        case gemmBackward = "gemm_bwd"
        /// LoRA's own products (x·Aᵀ, ·Bᵀ and their gradients, dropout masks), forward and backward.
        case lora
        /// Causal attention (scores, softmax, weighted values) and its backward.
        case attention
        /// RMSNorm forward and backward (every block's two and the final one).
        case norms
        /// Element-wise work: RoPE and its backward, SwiGLU and its backward, residual copies.
        case elementwise
        /// The LM head's products (chunks of rows) and the cross-entropy.
        case head
        /// Gradient clipping and AdamW.
        case optimizer
        /// The EMA update of the adapters' shadows.
        case ema
    }

    public private(set) var seconds: [Kind: Double] = [:]
    /// Floating-point operations of the frozen GEMMs, forward and backward (2·T·out·in per product).
    public private(set) var frozenFLOPs: Double = 0
    /// Nanoseconds of measured calls inside the one running now (subtracted from its own).
    private var nestedNanos: UInt64 = 0

    public init() {}

    nonisolated(unsafe) static var current: StepProfile?

    /// Makes `profile` the one measured calls add to (nil stops measuring).
    public static func install(_ profile: StepProfile?) { current = profile }

    /// Seconds in the frozen GEMMs, forward and backward.
    public var frozenSeconds: Double { (seconds[.gemmForward] ?? 0) + (seconds[.gemmBackward] ?? 0) }

    /// Seconds in every kind together.
    public var measuredSeconds: Double { seconds.values.reduce(0, +) }

    /// Runs `body`, adding its wall time less that of measured calls inside it to `kind` when a
    /// profile is installed.
    @inline(__always)
    public static func measure<R>(_ kind: Kind, flops: Double = 0, _ body: () throws -> R) rethrows -> R {
        guard let p = current else { return try body() }
        let outer = p.nestedNanos
        p.nestedNanos = 0
        let start = DispatchTime.now().uptimeNanoseconds
        defer {
            let elapsed = DispatchTime.now().uptimeNanoseconds - start
            p.seconds[kind, default: 0] += Double(elapsed - min(elapsed, p.nestedNanos)) * 1e-9
            p.nestedNanos = outer + elapsed
            p.frozenFLOPs += flops
        }
        return try body()
    }

    public func reset() {
        seconds = [:]
        frozenFLOPs = 0
        nestedNanos = 0
    }
}
