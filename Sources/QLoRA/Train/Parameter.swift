import Foundation

/// One trainable fp32 tensor with its gradient, both 64-byte aligned and of the same shape.
/// Named as PEFT names it in an adapter file (without the `base_model.model.` prefix), e.g.
/// `model.layers.0.self_attn.q_proj.lora_A.weight` or `model.layers.0.input_layernorm.weight`.
///
/// Frozen tensors are never Parameters: they have no gradient buffer at all.
public final class Parameter {
    public let name: String
    public let shape: [Int]
    public let value: FloatBuffer
    public let grad: FloatBuffer

    public init(name: String, shape: [Int], values: [Float]? = nil) {
        precondition(!shape.isEmpty && shape.allSatisfy { $0 > 0 }, "parameter '\(name)' has shape \(shape)")
        self.name = name
        self.shape = shape
        let n = shape.reduce(1, *)
        value = FloatBuffer(count: n)
        grad = FloatBuffer(count: n)
        if let values {
            precondition(values.count == n, "parameter '\(name)': \(values.count) values for shape \(shape)")
            values.withUnsafeBufferPointer { value.base.update(from: $0.baseAddress!, count: n) }
        }
    }

    public var count: Int { value.count }

    public func zeroGrad() { grad.base.update(repeating: 0, count: count) }

    /// A copy of the values.
    public var values: [Float] { value.array }

    /// Overwrites the values (same count).
    public func setValues(_ v: [Float]) {
        precondition(v.count == count, "parameter '\(name)': \(v.count) values for \(count)")
        v.withUnsafeBufferPointer { value.base.update(from: $0.baseAddress!, count: count) }
    }

    /// A hash of the parameters' values as bits (FNV-1a over their 32-bit words, in order): the
    /// ranks' weights compared (DataParallel), DoRA's norm cache keyed on A and B.
    public static func bitsHash(_ parameters: [Parameter]) -> UInt64 {
        var h: UInt64 = 0xcbf2_9ce4_8422_2325
        for p in parameters {
            let words = UnsafeRawPointer(p.value.base).assumingMemoryBound(to: UInt32.self)
            for i in 0..<p.count { h = (h ^ UInt64(words[i])) &* 0x0000_0100_0000_01b3 }
        }
        return h
    }
}
