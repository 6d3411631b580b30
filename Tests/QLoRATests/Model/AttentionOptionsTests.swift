import QuantKernels
import XCTest
@testable import QLoRA

/// The attention's family options — a sliding window (Mistral, Gemma's local layers) and a
/// score scale other than 1/√D (Gemma's query_pre_attn_scalar) — against a float64 attention
/// that applies the same rule: query at absolute position i sees keys i − window < j ≤ i.
final class AttentionOptionsTests: XCTestCase {
    /// Float64 forward: out [T, H·D] and probabilities [H, T, S].
    static func reference(_ q: [Double], _ k: [Double], _ v: [Double], T: Int, P: Int, H: Int, Hkv: Int, D: Int, scale: Double,
                          window: Int, softcap: Double = 0) -> (out: [Double], probs: [Double]) {
        let S = P + T
        var out = [Double](repeating: 0, count: T * H * D), probs = [Double](repeating: 0, count: H * T * S)
        for h in 0..<H {
            let g = h / (H / Hkv)
            for t in 0..<T {
                let i = P + t, lo = window > 0 ? max(0, i - window + 1) : 0
                let scores = (lo...i).map { j in
                    let u = (0..<D).reduce(0.0) { $0 + q[t * H * D + h * D + $1] * k[j * Hkv * D + g * D + $1] } * scale
                    return softcap > 0 ? softcap * tanh(u / softcap) : u
                }
                let m = scores.max()!, e = scores.map { exp($0 - m) }, z = e.reduce(0, +)
                for (n, j) in (lo...i).enumerated() {
                    let p = e[n] / z
                    probs[(h * T + t) * S + j] = p
                    for d in 0..<D { out[t * H * D + h * D + d] += p * v[j * Hkv * D + g * D + d] }
                }
            }
        }
        return (out, probs)
    }

    func options(D: Int, scale: Float? = nil, window: Int, softcap: Float = 0) -> qk_attention_options {
        var o = qk_attention_defaults(Int64(D))
        if let scale { o.scale = scale }
        o.window = Int64(window)
        o.softcap = softcap
        return o
    }

    func testWindowAndScaleMatchFloat64WithAndWithoutCache() {
        let H = 4, Hkv = 2, D = 16
        let isa = qk_isa_get()
        defer { _ = qk_isa_set(isa) }
        for (T, P, window) in [(12, 0, 4), (70, 9, 5), (1, 300, 7), (9, 3, 1)] {
            let S = P + T
            var rng = SplitMix64(seed: UInt64(40 + T))
            let q = rng.normals(T * H * D, scale: 1.5), k = rng.normals(S * Hkv * D, scale: 1.5), v = rng.normals(S * Hkv * D)
            let (refOut, refProbs) = Self.reference(q.map(Double.init), k.map(Double.init), v.map(Double.init), T: T, P: P, H: H,
                                                    Hkv: Hkv, D: D, scale: 0.3, window: window)
            for level in isa == QK_ISA_SCALAR ? [isa] : [isa, QK_ISA_SCALAR] {
                XCTAssertEqual(qk_isa_set(level), 0)
                var out = [Float](repeating: 0, count: T * H * D), probs = [Float](repeating: -1, count: H * T * S)
                XCTAssertEqual(qk_attention_forward_with(&out, &probs, q, k, v, Int64(T), Int64(P), Int64(H), Int64(Hkv), Int64(D),
                                                         options(D: D, scale: 0.3, window: window), 2), 0)
                XCTAssertLessThan(LlamaReference.maxAbsDiff(out, refOut), 1e-5, "T \(T) P \(P) window \(window) isa \(level)")
                XCTAssertLessThan(LlamaReference.maxAbsDiff(probs, refProbs), 1e-6, "T \(T) P \(P) window \(window) isa \(level)")
                var again = [Float](repeating: 0, count: out.count)
                XCTAssertEqual(qk_attention_forward_with(&again, nil, q, k, v, Int64(T), Int64(P), Int64(H), Int64(Hkv), Int64(D),
                                                         options(D: D, scale: 0.3, window: window), 1), 0)
                XCTAssertEqual(again, out, "without kept probabilities, 1 thread")
            }
        }
    }

    /// A window at least as wide as the keys changes nothing, bit for bit.
    func testWideWindowIsNoWindow() {
        let T = 20, P = 5, H = 4, Hkv = 1, D = 8, S = P + T
        var rng = SplitMix64(seed: 9)
        let q = rng.normals(T * H * D), k = rng.normals(S * Hkv * D), v = rng.normals(S * Hkv * D)
        var plain = [Float](repeating: 0, count: T * H * D), windowed = plain
        XCTAssertEqual(qk_attention_forward(&plain, nil, q, k, v, Int64(T), Int64(P), Int64(H), Int64(Hkv), Int64(D), 2), 0)
        for window in [S, S + 1, 4096] {
            XCTAssertEqual(qk_attention_forward_with(&windowed, nil, q, k, v, Int64(T), Int64(P), Int64(H), Int64(Hkv), Int64(D),
                                                     options(D: D, window: window), 2), 0)
            XCTAssertEqual(windowed, plain, "window \(window)")
        }
    }

    /// The backward with a window and a scale: dq, dk, dv against central differences of the
    /// float64 forward, with kept and with recomputed probabilities.
    func testWindowBackwardMatchesFiniteDifferences() { backwardMatchesFiniteDifferences(softcap: 0) }

    /// Gemma 2's soft-capped scores (cap 2 here, so that scores of a few units are bent well
    /// away from linear): forward and backward against float64 and finite differences.
    func testSoftcappedAttentionMatchesFloat64AndFiniteDifferences() {
        let T = 70, P = 9, H = 4, Hkv = 2, D = 16, S = P + T
        var rng = SplitMix64(seed: 61)
        let q = rng.normals(T * H * D, scale: 1.5), k = rng.normals(S * Hkv * D, scale: 1.5), v = rng.normals(S * Hkv * D)
        let (refOut, refProbs) = Self.reference(q.map(Double.init), k.map(Double.init), v.map(Double.init), T: T, P: P, H: H,
                                                Hkv: Hkv, D: D, scale: 0.3, window: 5, softcap: 2)
        let (plainOut, _) = Self.reference(q.map(Double.init), k.map(Double.init), v.map(Double.init), T: T, P: P, H: H,
                                           Hkv: Hkv, D: D, scale: 0.3, window: 5)
        XCTAssertGreaterThan(zip(refOut, plainOut).map { abs($0 - $1) }.max()!, 1e-2, "the cap must matter here")
        var out = [Float](repeating: 0, count: T * H * D), probs = [Float](repeating: -1, count: H * T * S)
        XCTAssertEqual(qk_attention_forward_with(&out, &probs, q, k, v, Int64(T), Int64(P), Int64(H), Int64(Hkv), Int64(D),
                                                 options(D: D, scale: 0.3, window: 5, softcap: 2), 2), 0)
        XCTAssertLessThan(LlamaReference.maxAbsDiff(out, refOut), 1e-5)
        XCTAssertLessThan(LlamaReference.maxAbsDiff(probs, refProbs), 1e-6)
        backwardMatchesFiniteDifferences(softcap: 2)
    }

    func backwardMatchesFiniteDifferences(softcap: Float) {
        let B = 2, T = 9, H = 4, Hkv = 2, D = 8, window = 3, scale = 0.4
        let qw = H * D, kw = Hkv * D
        var rng = SplitMix64(seed: 17)
        let q = rng.normals(B * T * qw, scale: 1.5), k = rng.normals(B * T * kw, scale: 1.5), v = rng.normals(B * T * kw)
        let dout = rng.normals(B * T * qw)
        let o = options(D: D, scale: Float(scale), window: window, softcap: softcap)
        var probs = [Float](repeating: -1, count: B * H * T * T), out = [Float](repeating: 0, count: B * T * qw)
        for b in 0..<B {
            let rc = out.withUnsafeMutableBufferPointer { op in
                probs.withUnsafeMutableBufferPointer { pp in
                    qk_attention_forward_with(op.baseAddress! + b * T * qw, pp.baseAddress! + b * H * T * T, Array(q[(b * T * qw)...]),
                                              Array(k[(b * T * kw)...]), Array(v[(b * T * kw)...]), Int64(T), 0, Int64(H), Int64(Hkv),
                                              Int64(D), o, 1)
                }
            }
            XCTAssertEqual(rc, 0)
        }
        func forward64(_ q: [Double], _ k: [Double], _ v: [Double]) -> [Double] {
            (0..<B).flatMap { b in
                Self.reference(Array(q[(b * T * qw)..<((b + 1) * T * qw)]), Array(k[(b * T * kw)..<((b + 1) * T * kw)]),
                               Array(v[(b * T * kw)..<((b + 1) * T * kw)]), T: T, P: 0, H: H, Hkv: Hkv, D: D, scale: scale,
                               window: window, softcap: Double(softcap)).out
            }
        }
        let q64 = q.map(Double.init), k64 = k.map(Double.init), v64 = v.map(Double.init), dy = dout.map(Double.init)
        func differences(_ x: [Double], _ f: ([Double]) -> [Double]) -> [Double] {
            func L(_ x: [Double]) -> Double { zip(dy, f(x)).reduce(0) { $0 + $1.0 * $1.1 } }
            return x.indices.map { i in
                var plus = x, minus = x
                plus[i] += 1e-4
                minus[i] -= 1e-4
                return (L(plus) - L(minus)) / 2e-4
            }
        }
        let fd = (differences(q64) { forward64($0, k64, v64) }, differences(k64) { forward64(q64, $0, v64) },
                  differences(v64) { forward64(q64, k64, $0) })
        for kept in [true, false] {
            var dq = [Float](repeating: .nan, count: q.count), dk = [Float](repeating: .nan, count: k.count), dv = dk
            XCTAssertEqual(qk_attention_backward_with(&dq, &dk, &dv, dout, q, k, v, kept ? probs : nil, Int64(B), Int64(T), Int64(H),
                                                      Int64(Hkv), Int64(D), o, 2), 0)
            for (name, got, want) in [("dq", dq, fd.0), ("dk", dk, fd.1), ("dv", dv, fd.2)] {
                let err = zip(got, want).map { abs(Double($0) - $1) }.max()!, size = want.map(abs).max()!
                XCTAssertLessThan(err / size, 1e-4, "\(name), probabilities \(kept ? "kept" : "recomputed"), softcap \(softcap)")
            }
        }
    }
}
