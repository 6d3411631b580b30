import Foundation
import QuantKernels

/// Rotary position embeddings as transformers' LlamaRotaryEmbedding computes them: inverse
/// frequencies inv_freq[i] = 1 / θ^(2i/D) in fp32 (`_compute_default_rope_parameters`),
/// rescaled by `_compute_llama3_parameters` for rope_scaling type llama3. Legend: T tokens,
/// D head dim.
public struct LlamaRoPE: Sendable {
    /// [D/2]
    public let inverseFrequencies: [Float]

    public init(config c: ModelConfig) throws(LlamaModelError) {
        let half = c.headDim / 2
        let base = (0..<half).map { i in 1 / Foundation.pow(c.ropeTheta, Float(2 * i) / Float(c.headDim)) }
        guard let scaling = c.ropeScaling, scaling.type != "default" else {
            inverseFrequencies = base
            return
        }
        guard scaling.type == "llama3" else {
            throw .unsupportedRopeScaling(type: scaling.type, detail: "only llama3 frequency scaling is implemented")
        }
        guard let low = scaling.lowFreqFactor, let high = scaling.highFreqFactor,
              let original = scaling.originalMaxPositionEmbeddings, high != low, scaling.factor > 0 else {
            throw .unsupportedRopeScaling(type: scaling.type, detail: "needs factor, low_freq_factor, high_freq_factor and "
                + "original_max_position_embeddings, got \(scaling)")
        }
        inverseFrequencies = Self.llama3(base, factor: scaling.factor, lowFreqFactor: low, highFreqFactor: high,
                                         originalContext: Float(original))
    }

    /// transformers' `_compute_llama3_parameters`, in fp32 as it runs there: wavelengths above
    /// original/low are slowed by `factor`, those below original/high kept, those between
    /// interpolated.
    static func llama3(_ invFreq: [Float], factor: Float, lowFreqFactor low: Float, highFreqFactor high: Float,
                       originalContext old: Float) -> [Float] {
        let lowFreqWavelen = old / low, highFreqWavelen = old / high
        return invFreq.map { f in
            let wavelen = 2 * Float.pi / f
            let scaled = wavelen > lowFreqWavelen ? f / factor : f
            guard !(wavelen < highFreqWavelen), !(wavelen > lowFreqWavelen) else { return scaled }
            let smooth = (old / wavelen - low) / (high - low)
            return (1 - smooth) * scaled / factor + smooth * scaled
        }
    }

    /// cos and sin of the angles of positions P ..< P + T: [T, D/2] each.
    public func tables(from P: Int, count T: Int) -> LlamaRoPETables {
        let half = inverseFrequencies.count
        let t = LlamaRoPETables(first: P, count: T, half: half)
        inverseFrequencies.withUnsafeBufferPointer { f in
            qk_rope_tables(t.cos.base, t.sin.base, f.baseAddress, Int64(half), Int64(P), Int64(T))
        }
        return t
    }
}

/// cos and sin [T, D/2] for positions first ..< first + T, shared by q and k of every layer.
public final class LlamaRoPETables {
    public let first: Int
    public let count: Int
    public let cos: FloatBuffer
    public let sin: FloatBuffer

    init(first: Int, count: Int, half: Int) {
        self.first = first
        self.count = count
        cos = FloatBuffer(count: count * half)
        sin = FloatBuffer(count: count * half)
    }

    /// Rotates x[T, heads·D] in place (rotate-half layout).
    func apply(_ x: UnsafeMutablePointer<Float>, heads: Int, headDim D: Int) {
        qk_rope_forward(x, cos.base, sin.base, Int64(count), Int64(heads), Int64(D))
    }

    /// The backward of `apply`: rotates dx[T, heads·D] back in place.
    func applyBackward(_ dx: UnsafeMutablePointer<Float>, heads: Int, headDim D: Int) {
        qk_rope_backward(dx, cos.base, sin.base, Int64(count), Int64(heads), Int64(D))
    }
}
