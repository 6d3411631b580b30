import Foundation
import QLoRA
import QuantKernels
import XCTest

/// The decoder's C kernels (model_ops.c, attention.c) against float64 references written out here, on
/// small random cases. Legend: T tokens, P cached positions, S = P + T, C hidden, H/Hkv heads,
/// D head dim.
final class LlamaOpsTests: XCTestCase {
    func testRMSNormMatchesFloat64() {
        let T = 3, C = 64, eps: Float = 1e-5
        var rng = SplitMix64(seed: 1)
        let x = rng.normals(T * C, scale: 3), w = rng.normals(C)
        var y = [Float](repeating: 0, count: T * C), rstd = [Float](repeating: 0, count: T)
        qk_rmsnorm_forward(&y, &rstd, x, w, Int64(T), Int64(C), eps)
        var refY = [Double](), refR = [Double]()
        for t in 0..<T {
            let row = x[(t * C)..<((t + 1) * C)].map(Double.init)
            let r = 1 / (row.reduce(0) { $0 + $1 * $1 } / Double(C) + Double(eps)).squareRoot()
            refR.append(r)
            refY += row.enumerated().map { Double(w[$0.offset]) * $0.element * r }
        }
        XCTAssertLessThan(LlamaReference.maxAbsDiff(y, refY), 1e-5)
        XCTAssertLessThan(LlamaReference.maxAbsDiff(rstd, refR), 1e-6)
    }

    /// Rotate-half layout at positions P ..< P + T; the angle is the fp32 product position ·
    /// inv_freq, as transformers rounds it, then cos and sin in float64.
    func testRoPEMatchesFloat64() {
        let T = 4, P = 7, heads = 3, D = 16, half = D / 2, theta: Float = 10_000
        var rng = SplitMix64(seed: 2)
        let x = rng.normals(T * heads * D)
        let invFreq = (0..<half).map { 1 / pow(theta, Float(2 * $0) / Float(D)) }
        var cos = [Float](repeating: 0, count: T * half), sin = cos
        qk_rope_tables(&cos, &sin, invFreq, Int64(half), Int64(P), Int64(T))
        var y = x
        qk_rope_forward(&y, cos, sin, Int64(T), Int64(heads), Int64(D))
        var ref = [Double](repeating: 0, count: x.count)
        for t in 0..<T {
            for h in 0..<heads {
                let o = (t * heads + h) * D
                for i in 0..<half {
                    let angle = Double(Float(P + t) * invFreq[i])
                    let a = Double(x[o + i]), b = Double(x[o + i + half])
                    ref[o + i] = a * Foundation.cos(angle) - b * Foundation.sin(angle)
                    ref[o + i + half] = b * Foundation.cos(angle) + a * Foundation.sin(angle)
                }
            }
        }
        XCTAssertLessThan(LlamaReference.maxAbsDiff(y, ref), 1e-6)
    }

    func testSoftmaxMatchesFloat64() {
        let rows = 3, N = 50
        var rng = SplitMix64(seed: 3)
        var x = rng.normals(rows * N, scale: 20)
        let ref = (0..<rows).flatMap { r in LlamaReference.softmax(x[(r * N)..<((r + 1) * N)].map(Double.init)) }
        qk_softmax_forward(&x, Int64(rows), Int64(N))
        XCTAssertLessThan(LlamaReference.maxAbsDiff(x, ref), 1e-6)
    }

    func testSwiGLUAndBiasMatchFloat64() {
        let T = 3, N = 40
        var rng = SplitMix64(seed: 4)
        let gate = rng.normals(T * N, scale: 4), up = rng.normals(T * N), b = rng.normals(N)
        var h = [Float](repeating: 0, count: T * N)
        qk_swiglu_forward(&h, gate, up, Int64(T * N))
        let ref = (0..<(T * N)).map { i in Double(gate[i]) / (1 + exp(-Double(gate[i]))) * Double(up[i]) }
        XCTAssertLessThan(LlamaReference.maxAbsDiff(h, ref), 1e-5)
        var y = up
        qk_add_bias(&y, b, Int64(T), Int64(N))
        XCTAssertEqual(y, (0..<(T * N)).map { up[$0] + b[$0 % N] })
    }

    /// Grouped-query causal attention with cached positions: outputs and probabilities against
    /// float64; the same outputs without kept probabilities and on 1 or 2 threads.
    func testCausalAttentionMatchesFloat64() {
        let T = 5, P = 3, S = P + T, H = 4, Hkv = 2, D = 8
        var rng = SplitMix64(seed: 5)
        let q = rng.normals(T * H * D), k = rng.normals(S * Hkv * D), v = rng.normals(S * Hkv * D)
        var out = [Float](repeating: 0, count: T * H * D), probs = [Float](repeating: -1, count: H * T * S)
        XCTAssertEqual(qk_attention_forward(&out, &probs, q, k, v, Int64(T), Int64(P), Int64(H), Int64(Hkv), Int64(D), 2), 0)

        let (refOut, refProbs) = LlamaReference.attention(q, k, v, T: T, P: P, H: H, Hkv: Hkv, D: D)
        XCTAssertLessThan(LlamaReference.maxAbsDiff(out, refOut), 1e-6)
        XCTAssertLessThan(LlamaReference.maxAbsDiff(probs, refProbs), 1e-6)

        for threads: Int32 in [1, 2] {
            var again = [Float](repeating: 0, count: out.count)
            XCTAssertEqual(qk_attention_forward(&again, nil, q, k, v, Int64(T), Int64(P), Int64(H), Int64(Hkv), Int64(D), threads), 0)
            XCTAssertEqual(again, out)
        }
    }

    /// The shape of a model's heads (D = 64): training and prompt shapes (T = 75, several query
    /// blocks, partial register tiles, with and without cached positions) and decoding (T = 1
    /// over 300 cached keys), on the SIMD kernels and on the scalar fallback, against float64;
    /// the same outputs without kept probabilities and on 1 or 2 threads, bit for bit.
    func testCausalAttentionOnBlocksMatchesFloat64() {
        let H = 6, Hkv = 2, D = 64
        let isa = qk_isa_get()
        defer { _ = qk_isa_set(isa) }
        for (T, P) in [(75, 0), (70, 9), (1, 300)] {
            let S = P + T
            var rng = SplitMix64(seed: UInt64(20 + T))
            let q = rng.normals(T * H * D, scale: 1.5), k = rng.normals(S * Hkv * D, scale: 1.5), v = rng.normals(S * Hkv * D)
            let (refOut, refProbs) = LlamaReference.attention(q, k, v, T: T, P: P, H: H, Hkv: Hkv, D: D)
            for level in isa == QK_ISA_SCALAR ? [isa] : [isa, QK_ISA_SCALAR] {
                XCTAssertEqual(qk_isa_set(level), 0)
                var out = [Float](repeating: 0, count: T * H * D), probs = [Float](repeating: -1, count: H * T * S)
                XCTAssertEqual(qk_attention_forward(&out, &probs, q, k, v, Int64(T), Int64(P), Int64(H), Int64(Hkv), Int64(D), 2), 0)
                XCTAssertLessThan(LlamaReference.maxAbsDiff(out, refOut), 1e-5, "T \(T), P \(P), isa \(level)")
                XCTAssertLessThan(LlamaReference.maxAbsDiff(probs, refProbs), 1e-6, "T \(T), P \(P), isa \(level)")
                for threads: Int32 in [1, 2] {
                    var again = [Float](repeating: 0, count: out.count)
                    XCTAssertEqual(qk_attention_forward(&again, nil, q, k, v, Int64(T), Int64(P), Int64(H), Int64(Hkv), Int64(D), threads), 0)
                    XCTAssertEqual(again, out, "T \(T), P \(P), isa \(level), \(threads) threads")
                }
            }
        }
    }

    /// llama3 frequency scaling (transformers' _compute_llama3_parameters) on Llama 3.1's
    /// numbers, against the same rule in float64.
    func testLlama3RoPEScaling() throws {
        let json = """
        {"model_type": "llama", "hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
         "num_attention_heads": 32, "num_key_value_heads": 8, "vocab_size": 128256, "rope_theta": 500000.0,
         "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                          "original_max_position_embeddings": 8192}}
        """
        let config = try ModelConfig(huggingFaceConfig: Data(json.utf8), source: "llama3.1")
        let f = try RotaryEmbedding(config: config).inverseFrequencies
        XCTAssertEqual(f.count, 64)
        var kept = 0, slowed = 0, smoothed = 0
        for (i, got) in f.enumerated() {
            let base = 1 / pow(500_000.0, Double(2 * i) / 128), wavelen = 2 * Double.pi / base
            let want: Double
            if wavelen < 8192 / 4 {
                want = base
                kept += 1
            } else if wavelen > 8192 / 1 {
                want = base / 8
                slowed += 1
            } else {
                let s = (8192 / wavelen - 1) / (4 - 1)
                want = (1 - s) * base / 8 + s * base
                smoothed += 1
            }
            XCTAssertEqual(Double(got), want, accuracy: want * 1e-5, "inv_freq[\(i)]")
        }
        XCTAssertEqual([kept, smoothed, slowed], [29, 6, 29])
    }
}

/// Float64 helpers of the decoder tests.
enum LlamaReference {
    static func softmax(_ x: [Double]) -> [Double] {
        let m = x.max() ?? 0
        let e = x.map { exp($0 - m) }
        let s = e.reduce(0, +)
        return e.map { $0 / s }
    }

    /// Causal grouped-query attention in float64: out [T, H·D] and probabilities [H, T, S].
    static func attention(_ q: [Float], _ k: [Float], _ v: [Float], T: Int, P: Int, H: Int, Hkv: Int,
                          D: Int) -> (out: [Double], probs: [Double]) {
        let S = P + T
        var out = [Double](repeating: 0, count: T * H * D), probs = [Double](repeating: 0, count: H * T * S)
        for h in 0..<H {
            let g = h / (H / Hkv)
            for t in 0..<T {
                let n = P + t + 1
                let scores = (0..<n).map { j in
                    (0..<D).reduce(0.0) { $0 + Double(q[t * H * D + h * D + $1]) * Double(k[j * Hkv * D + g * D + $1]) } / Double(D).squareRoot()
                }
                let p = softmax(scores)
                for j in 0..<n {
                    probs[(h * T + t) * S + j] = p[j]
                    for d in 0..<D { out[t * H * D + h * D + d] += p[j] * Double(v[j * Hkv * D + g * D + d]) }
                }
            }
        }
        return (out, probs)
    }

    static func maxAbsDiff(_ a: [Float], _ b: [Double]) -> Double {
        precondition(a.count == b.count, "\(a.count) vs \(b.count) values")
        return zip(a, b).map { abs(Double($0) - $1) }.max() ?? 0
    }
}

/// Deterministic normals (the library's SplitMix64 + Box–Muller) for the tests.
extension SplitMix64 {
    mutating func uniform() -> Double { (Double(next() >> 11) + 0.5) / Double(1 << 53) }
    mutating func normals(_ n: Int, scale: Double = 1) -> [Float] {
        (0..<n).map { _ in Float(scale * (-2 * log(uniform())).squareRoot() * cos(2 * .pi * uniform())) }
    }
}
