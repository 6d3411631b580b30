import Foundation
import QuantKernels

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

    /// `--optim`, the TrainingArguments names: adamw (torch's AdamW) or adamw_8bit
    /// (bitsandbytes' AdamW8bit: `Blockwise8Moments`).
    public enum Kind: String, Codable, Sendable, CaseIterable {
        case adamw
        case adamw8bit = "adamw_8bit"
    }

    public let parameters: [Parameter]
    public var hyperparameters: Hyperparameters
    public let kind: Kind
    /// adamw_8bit: the 8-bit moments of each parameter of at least `Blockwise8Moments.minimumCount`
    /// values (its expAvg and expAvgSq are then empty); nil for the others, whose fp32 moments
    /// follow bitsandbytes' 32-bit update.
    public let blockwise: [Blockwise8Moments?]
    /// Updates done so far: torch's `state["step"]`, the t of the next bias correction minus 1.
    /// Checkpoints set it on restore.
    public var step: Int = 0
    /// m per parameter, each of that parameter's count; zero before the first update.
    public let expAvg: [FloatBuffer]
    /// v per parameter, each of that parameter's count; zero before the first update.
    public let expAvgSq: [FloatBuffer]

    public init(parameters: [Parameter], _ hyperparameters: Hyperparameters = Hyperparameters(), kind: Kind = .adamw) {
        precondition(Set(parameters.map(\.name)).count == parameters.count, "AdamW: parameter names repeat")
        self.parameters = parameters
        self.hyperparameters = hyperparameters
        self.kind = kind
        let eightBit = parameters.map { kind == .adamw8bit && $0.count >= Blockwise8Moments.minimumCount }
        blockwise = zip(parameters, eightBit).map { $1 ? Blockwise8Moments(count: $0.count) : nil }
        expAvg = zip(parameters, eightBit).map { FloatBuffer(count: $1 ? 0 : $0.count) }
        expAvgSq = zip(parameters, eightBit).map { FloatBuffer(count: $1 ? 0 : $0.count) }
    }

    /// Bytes the optimizer's state holds: 8 per value for fp32 moments; 2 per value and 8 per
    /// block of 256 for 8-bit ones.
    public var stateBytes: Int {
        zip(parameters, blockwise).reduce(0) { n, e in n + (e.1?.bytes ?? 8 * e.0.count) }
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
        if kind == .adamw8bit {
            for (i, p) in parameters.enumerated() {
                let plr = lr * (lrScales?[i] ?? 1)
                if let moments = blockwise[i] {
                    moments.update(p, lr: plr, step: step, h)
                } else {
                    Blockwise8Moments.update32(p, m: expAvg[i].base, v: expAvgSq[i].base, lr: plr, step: step, h)
                }
            }
            return
        }
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

/// The moments of one parameter under bitsandbytes' AdamW8bit (optim_bits 8, block-wise), as
/// its CPU backend computes them (bitsandbytes 0.50, backends/cpu/ops.py,
/// `_optimizer_update_8bit_blockwise_cpu`): m and v stored as 8-bit codes of the signed and
/// unsigned dynamic maps, one fp32 absmax per block of 256; each update dequantizes them
/// (code × absmax), steps in fp32, and requantizes them with new absmax (the nearest map value,
/// `qk_quantize_nested_ref`, bit-exact with its `cquantize_blockwise_cpu_fp32`). Tensors under
/// `minimumCount` values keep fp32 moments and bitsandbytes' 32-bit update (`update32`).
/// tools/make_adamw8bit_fixtures.py and AdamW8bitTests check both against bitsandbytes itself.
public final class Blockwise8Moments {
    /// bitsandbytes' min_8bit_size.
    public static let minimumCount = 4096
    public static let blockSize = 256
    public let count: Int
    public var codes1: [UInt8], codes2: [UInt8]
    public var absmax1: [Float], absmax2: [Float]

    public init(count: Int) {
        self.count = count
        let blocks = (count + Self.blockSize - 1) / Self.blockSize
        codes1 = [UInt8](repeating: 0, count: count)
        codes2 = [UInt8](repeating: 0, count: count)
        absmax1 = [Float](repeating: 0, count: blocks)
        absmax2 = [Float](repeating: 0, count: blocks)
    }

    public var bytes: Int { 2 * count + 4 * (absmax1.count + absmax2.count) }

    /// The signed (m) and unsigned (v) dynamic maps: create_dynamic_map(signed=True/False).
    static let map1 = Array(UnsafeBufferPointer(start: qk_dynamic_map_ptr(), count: 256))
    static let map2 = Array(UnsafeBufferPointer(start: qk_dynamic_map_unsigned_ptr(), count: 256))

    /// The maps' quantization tables (`qk_blockwise8_table`), built once.
    static let table1 = table(map1), table2 = table(map2)
    static func table(_ map: [Float]) -> [UInt8] {
        var lut = [UInt8](repeating: 0, count: 65536)
        qk_blockwise8_table(map, &lut)
        return lut
    }

    /// code[q] × absmax of q's block, into `out`.
    static func dequantize(_ codes: [UInt8], _ absmax: [Float], _ map: [Float], into out: inout [Float]) {
        for i in codes.indices { out[i] = map[Int(codes[i])] * absmax[i / blockSize] }
    }

    /// fp32 room for the two moments during an update, shared by every parameter's update.
    nonisolated(unsafe) private static var scratch: ([Float], [Float]) = ([], [])

    func update(_ p: Parameter, lr: Double, step: Int, _ h: AdamW.Hyperparameters) {
        var (m, v) = Self.scratch
        Self.scratch = ([], [])
        defer { Self.scratch = (m, v) }
        if m.count < count {
            m = [Float](repeating: 0, count: count)
            v = [Float](repeating: 0, count: count)
        }
        Self.dequantize(codes1, absmax1, Self.map1, into: &m)
        Self.dequantize(codes2, absmax2, Self.map2, into: &v)
        let b1 = Float(h.beta1), a1 = Float(1 - h.beta1), b2 = Float(h.beta2), a2 = Float(1 - h.beta2)
        let c1 = 1 - pow(h.beta1, Double(step)), c2 = Float((1 - pow(h.beta2, Double(step))).squareRoot())
        let eps = Float(h.eps), decay = Float(1 - lr * h.weightDecay), value = Float(-lr / c1)
        let x = p.value.base, g = p.grad.base
        for i in 0..<count {
            // torch: mul_ then add_(alpha), mul_ then addcmul_: fused multiply-adds (as in AdamW above).
            m[i] = (m[i] * b1).addingProduct(g[i], a1)
            v[i] = (v[i] * b2).addingProduct(a2 * g[i], g[i])
            let denom = v[i].squareRoot() / c2 + eps
            let xi = h.weightDecay > 0 ? x[i] * decay : x[i]
            x[i] = xi + value * (m[i] / denom)   // addcdiv_: self + value · (t1 / t2)
        }
        m.withUnsafeBufferPointer { qk_quantize_blockwise8($0.baseAddress, Int64(count), 0, Self.table1, &codes1, &absmax1) }
        v.withUnsafeBufferPointer { qk_quantize_blockwise8($0.baseAddress, Int64(count), 0, Self.table2, &codes2, &absmax2) }
    }

    /// bitsandbytes' 32-bit Adam update on its CPU backend (`_optimizer_update_32bit_cpu`), for
    /// the tensors AdamW8bit leaves in fp32.
    static func update32(_ p: Parameter, m: UnsafeMutablePointer<Float>, v: UnsafeMutablePointer<Float>, lr: Double, step: Int,
                         _ h: AdamW.Hyperparameters) {
        let b1 = Float(h.beta1), a1 = Float(1 - h.beta1), b2 = Float(h.beta2), a2 = Float(1 - h.beta2)
        let c1 = 1 - pow(h.beta1, Double(step)), c2 = (1 - pow(h.beta2, Double(step))).squareRoot()
        let stepSize = Float(-lr * c2 / c1), epsC2 = Float(h.eps * c2), decay = Float(1 - lr * h.weightDecay)
        let x = p.value.base, g = p.grad.base
        for i in 0..<p.count {
            m[i] = (m[i] * b1).addingProduct(g[i], a1)
            v[i] = (v[i] * b2).addingProduct(a2 * g[i], g[i])
            let xi = h.weightDecay > 0 ? x[i] * decay : x[i]
            let update = m[i] / (v[i].squareRoot() + epsC2)
            x[i] = xi.addingProduct(update, stepSize)   // add_(update, alpha=step_size): fused
        }
    }
}
