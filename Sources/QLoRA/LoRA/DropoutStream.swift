import Foundation

/// Where every LoRA dropout mask comes from, in one place: a run's seed is mixed with the
/// update and micro-batch, then with the block, then with the linear (its index in the
/// family's order), then with the element, so that a forward, its backward and a checkpointed
/// recomputation regenerate the same mask without storing it, and a resumed run draws the same
/// masks as an uninterrupted one. Each stage is a SplitMix64-style finalizer; their constants
/// are kept as the runs that exist were drawn with.
public enum DropoutStream {
    /// The seed of micro-batch `micro` of update `update` of a run seeded `seed`.
    public static func step(seed: UInt64, update: Int, micro: Int) -> UInt64 {
        var z = seed &+ UInt64(update) &* 0x9E37_79B9_7F4A_7C15 &+ UInt64(micro) &* 0xC2B2_AE3D_27D4_EB4F
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        return z ^ (z >> 31)
    }

    /// Block `l`'s seed within a step.
    static func layer(_ step: UInt64, _ l: Int) -> UInt64 { step ^ (UInt64(l + 1) &* 0x9E37_79B9_7F4A_7C15) }

    /// The seed of the linear numbered `index` within a block.
    static func linear(_ layer: UInt64, index: Int) -> UInt64 {
        var z = layer ^ (UInt64(index + 1) &* 0xD1B5_4A32_D192_ED03)
        z = (z ^ (z >> 29)) &* 0xBF58_476D_1CE4_E5B9
        return z ^ (z >> 32)
    }

    /// Whether element `i` of a mask seeded `seed` is dropped with probability p (threshold =
    /// p · 2⁵³): SplitMix64's output for (seed, i).
    @inline(__always)
    static func drops(_ seed: UInt64, _ i: Int, threshold: UInt64) -> Bool {
        var z = seed &+ UInt64(i) &* 0x9E37_79B9_7F4A_7C15
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        z ^= z >> 31
        return (z >> 11) < threshold
    }
}
