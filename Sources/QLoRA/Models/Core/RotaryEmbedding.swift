import Foundation
import QuantKernels

/// Rotary position embeddings as transformers' LlamaRotaryEmbedding computes them: inverse
/// frequencies inv_freq[i] = 1 / θ^(2i/D) in fp32 (`_compute_default_rope_parameters`),
/// rescaled by `_compute_llama3_parameters` for rope_scaling type llama3. Legend: T tokens,
/// D head dim.
public struct RotaryEmbedding: Sendable {
    /// [D/2]
    public let inverseFrequencies: [Float]
    /// [D/2] of the sliding layers when their base differs (Gemma 3's local layers; unscaled).
    public let localInverseFrequencies: [Float]?

    public init(config c: ModelConfig) throws(ModelError) {
        let half = c.headDim / 2
        func frequencies(_ theta: Float) -> [Float] { (0..<half).map { i in 1 / Foundation.pow(theta, Float(2 * i) / Float(c.headDim)) } }
        localInverseFrequencies = c.localRopeTheta.map(frequencies)
        let base = frequencies(c.ropeTheta)
        guard let scaling = c.ropeScaling, scaling.type != "default" else {
            inverseFrequencies = base
            return
        }
        if scaling.type == "linear" {   // transformers' _compute_linear_scaling_rope_parameters
            guard scaling.factor > 0 else { throw .unsupportedRopeScaling(type: "linear", detail: "factor \(scaling.factor)") }
            inverseFrequencies = base.map { $0 / scaling.factor }
            return
        }
        guard scaling.type == "llama3" else {
            throw .unsupportedRopeScaling(type: scaling.type, detail: "only linear and llama3 frequency scaling are implemented")
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

    /// cos and sin of the angles of positions P ..< P + T: [T, D/2] each (and the sliding
    /// layers' own in `local`).
    public func tables(from P: Int, count T: Int) -> RotaryTables {
        let t = Self.tables(inverseFrequencies, from: P, count: T)
        t.local = localInverseFrequencies.map { Self.tables($0, from: P, count: T) }
        return t
    }

    private static func tables(_ frequencies: [Float], from P: Int, count T: Int) -> RotaryTables {
        let half = frequencies.count
        let t = RotaryTables(first: P, count: T, half: half)
        frequencies.withUnsafeBufferPointer { f in
            qk_rope_tables(t.cos.base, t.sin.base, f.baseAddress, Int64(half), Int64(P), Int64(T))
        }
        return t
    }
}

/// cos and sin [T, D/2] for positions first ..< first + T, shared by q and k of every layer.
public final class RotaryTables {
    public let first: Int
    public let count: Int
    public let cos: FloatBuffer
    public let sin: FloatBuffer
    /// The sliding layers' tables when their base differs.
    public fileprivate(set) var local: RotaryTables?

    /// The tables layer `l` of a `c` model rotates with.
    func layer(_ l: Int, config c: ModelConfig) -> RotaryTables {
        guard let local, c.isSliding(layer: l) else { return self }
        return local
    }

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
