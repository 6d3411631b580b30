import Foundation

/// AdamW over a list of Parameters, as torch.optim.AdamW computes it in float32 on the CPU
/// (torch.optim.adam._single_tensor_adam with decoupled weight decay; not fused, not amsgrad).
/// Each parameter p [n] owns two moments of its shape, m = exp_avg [n] and v = exp_avg_sq [n].
/// One `update(lr:)` with step t (counted from 1) does, per element:
///
///     p ← p · (1 − lr·wd)                      skipped when wd = 0
///     m ← lerp(m, g, 1 − β1) = m + (1 − β1)·(g − m)        fused multiply-add
///     v ← v·β2 + ((1 − β2)·g)·g                            fused multiply-add
///     p ← p + (−lr / (1 − β1ᵗ))·m / (√v / √(1 − β2ᵗ) + eps)
///
/// The scalars (1 − lr·wd, bias corrections, step size) are computed in Double as Python does
/// and rounded to Float once, as torch does when it hands a Python float to a float32 kernel.
/// torch's AVX-512 lerp and addcmul kernels fuse the multiply-add, so this does too; its vector
/// sqrt is not correctly rounded (within 1 ulp) while `squareRoot()` is, so results agree with
/// torch bit for bit on small tensors and within a few ulps on large ones
/// (tools/make_optim_fixtures.py, AdamWTests).
public final class AdamW {
    public struct Hyperparameters: Sendable, Equatable, Codable {
        public var beta1: Double
        public var beta2: Double
        public var eps: Double
        public var weightDecay: Double

        /// torch.optim.AdamW's defaults.
        public init(beta1: Double = 0.9, beta2: Double = 0.999, eps: Double = 1e-8, weightDecay: Double = 0.01) {
            self.beta1 = beta1
            self.beta2 = beta2
            self.eps = eps
            self.weightDecay = weightDecay
        }
    }

    public let parameters: [Parameter]
    public var hyperparameters: Hyperparameters
    /// Updates done so far: torch's `state["step"]`, the t of the next bias correction minus 1.
    /// Checkpoints set it on restore.
    public var step: Int = 0
    /// m per parameter, each of that parameter's count; zero before the first update.
    public let expAvg: [FloatBuffer]
    /// v per parameter, each of that parameter's count; zero before the first update.
    public let expAvgSq: [FloatBuffer]

    public init(parameters: [Parameter], _ hyperparameters: Hyperparameters = Hyperparameters()) {
        precondition(Set(parameters.map(\.name)).count == parameters.count, "AdamW: parameter names repeat")
        self.parameters = parameters
        self.hyperparameters = hyperparameters
        expAvg = parameters.map { FloatBuffer(count: $0.count) }
        expAvgSq = parameters.map { FloatBuffer(count: $0.count) }
    }

    /// One optimizer step with learning rate `lr` (from an `LRSchedule`), reading each
    /// parameter's `grad` and writing its `value`. Gradients are left as they are.
    ///
    /// With `lrScales`, parameter i steps with lr × lrScales[i] (its decay too), as a torch
    /// parameter group with that learning rate does (LoRA+: `LoRAPlus.scales`).
    public func update(lr: Double) {
        step += 1
        let h = hyperparameters, t = Double(step)
        let biasCorrection1 = 1 - pow(h.beta1, t)
        let biasCorrection2 = 1 - pow(h.beta2, t)
        func scalars(_ lr: Double) -> ElementScalars {
            ElementScalars(
                decay: Float(1 - lr * h.weightDecay), decays: h.weightDecay != 0,
                lerpWeight: Float(1 - h.beta1), beta2: Float(h.beta2), oneMinusBeta2: Float(1 - h.beta2),
                biasCorrection2Sqrt: Float(pow(biasCorrection2, 0.5)), eps: Float(h.eps), negStepSize: Float(-(lr / biasCorrection1)))
        }
        let base = scalars(lr)
        for (i, p) in parameters.enumerated() {
            let scale = lrScales?[i] ?? 1
            Self.updateElements(p: p.value.base, g: p.grad.base, m: expAvg[i].base, v: expAvgSq[i].base, n: p.count,
                                scale == 1 ? base : scalars(lr * scale))
        }
    }

    /// Per parameter, the factor of the learning rate it steps with (nil: 1 for all).
    public var lrScales: [Double]? {
        didSet { precondition(lrScales.map { $0.count == parameters.count } ?? true, "AdamW: one lr scale per parameter") }
    }

    struct ElementScalars {
        var decay: Float, decays: Bool, lerpWeight: Float, beta2: Float, oneMinusBeta2: Float
        var biasCorrection2Sqrt: Float, eps: Float, negStepSize: Float
    }

    /// The per-element loop: p, g, m, v [n].
    static func updateElements(p: UnsafeMutablePointer<Float>, g: UnsafePointer<Float>, m: UnsafeMutablePointer<Float>,
                               v: UnsafeMutablePointer<Float>, n: Int, _ s: ElementScalars) {
        // torch's lerp: start + w·(end − start) for |w| < 0.5, else end + (w − 1)·(end − start).
        let smallWeight = abs(s.lerpWeight) < 0.5
        let coefficient = smallWeight ? s.lerpWeight : s.lerpWeight - 1
        for i in 0..<n {
            let gi = g[i]
            let x = s.decays ? p[i] * s.decay : p[i]
            let mi = (smallWeight ? m[i] : gi).addingProduct(coefficient, gi - m[i])
            let vi = (v[i] * s.beta2).addingProduct(s.oneMinusBeta2 * gi, gi)
            m[i] = mi
            v[i] = vi
            let denom = vi.squareRoot() / s.biasCorrection2Sqrt + s.eps
            p[i] = x + (s.negStepSize * mi) / denom
        }
    }
}

/// LoRA+ (Hayou et al. 2024), as PEFT's `create_loraplus_optimizer` groups the parameters:
/// lora_B matrices and one-dimensional parameters (trained norms) step with lr × ratio, the
/// rest (lora_A, a score head) with lr; the weight decay is the same for all (PEFT's
/// `loraplus_weight_decay`; its no-decay group holds biases, which qlora does not train).
public enum LoRAPlus {
    /// The factor of each parameter's learning rate.
    public static func scales(for parameters: [Parameter], ratio: Double) -> [Double] {
        parameters.map { isGroupB($0) ? ratio : 1 }
    }

    /// PEFT's group B: a name with lora_B, or a one-dimensional parameter.
    public static func isGroupB(_ p: Parameter) -> Bool { p.name.contains("lora_B") || p.shape.count == 1 }
}
