import Foundation

/// Where a training step spends its time, by kind of work: filled while a profile is
/// installed (`StepProfile.install`), at the cost of two clock reads per measured call;
/// free otherwise. The benchmark and `qlora train --profile` read it.
public final class StepProfile: @unchecked Sendable {
    public enum Kind: String, CaseIterable, Codable, Sendable {
        /// The frozen 4-bit (or 8-bit) products of the block linears, forward and backward.
        case frozenGEMM = "frozen_gemm"
        /// LoRA's own products (x·Aᵀ, ·Bᵀ and their gradients).
        case lora
        /// Causal attention (scores, softmax, weighted values) and its backward.
        case attention
        /// The LM head's products and the cross-entropy.
        case head
        /// AdamW, clipping and the EMA update.
        case optimizer
    }

    public private(set) var seconds: [Kind: Double] = [:]
    /// Floating-point operations of the frozen GEMMs (2·T·out·in per product).
    public private(set) var frozenFLOPs: Double = 0

    public init() {}

    nonisolated(unsafe) static var current: StepProfile?

    /// Makes `profile` the one measured calls add to (nil stops measuring).
    public static func install(_ profile: StepProfile?) { current = profile }

    /// Runs `body`, adding its wall time to `kind` when a profile is installed.
    @inline(__always)
    static func measure<R>(_ kind: Kind, flops: Double = 0, _ body: () throws -> R) rethrows -> R {
        guard let p = current else { return try body() }
        let start = DispatchTime.now().uptimeNanoseconds
        defer {
            p.seconds[kind, default: 0] += Double(DispatchTime.now().uptimeNanoseconds - start) * 1e-9
            if kind == .frozenGEMM { p.frozenFLOPs += flops }
        }
        return try body()
    }

    /// Runs `body` as optimizer time (for callers outside the module).
    public static func measureOptimizer<R>(_ body: () throws -> R) rethrows -> R { try measure(.optimizer, body) }

    public func reset() {
        seconds = [:]
        frozenFLOPs = 0
    }
}
