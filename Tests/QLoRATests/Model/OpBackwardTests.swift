import Foundation
import QLoRA
import QuantKernels
import XCTest

/// The backward kernels (model_ops_backward.c, attention.c) on small random cases, each against two float64
/// references written out here: central differences of the forward in float64 (h = 1e-4) and
/// the analytic gradient. The scalar differentiated is L = Σ dy ⊙ f(x) with a random dy.
/// Legend: B sequences, T tokens, C hidden, H/Hkv heads, D head dim, V vocab.
final class OpBackwardTests: XCTestCase {
    /// Both accumulate modes, with and without dw: dx and dw land on what was there before.
    func testRMSNormBackwardMatchesFiniteDifferences() {
        let T = 3, C = 32, eps: Float = 1e-5
        var rng = SplitMix64(seed: 11)
        let x = rng.normals(T * C, scale: 2), w = rng.normals(C), dy = rng.normals(T * C)
        var y = [Float](repeating: 0, count: T * C), rstd = [Float](repeating: 0, count: T)
        qk_rmsnorm_forward(&y, &rstd, x, w, Int64(T), Int64(C), eps)

        let x64 = x.map(Double.init), w64 = w.map(Double.init), dy64 = dy.map(Double.init)
        let forward = { (x: [Double], w: [Double]) in BackwardReference.rmsNorm(x, w, T: T, C: C, eps: Double(eps)) }
        let fdX = BackwardReference.centralDifferences(at: x64, dy: dy64) { forward($0, w64) }
        let fdW = BackwardReference.centralDifferences(at: w64, dy: dy64) { forward(x64, $0) }
        let (refX, refW) = BackwardReference.rmsNormBackward(dy64, x64, w64, T: T, C: C, eps: Double(eps))
        XCTAssertLessThan(BackwardReference.relativeError(refX, fdX), 1e-8, "float64 analytic vs differences")
        XCTAssertLessThan(BackwardReference.relativeError(refW, fdW), 1e-8, "float64 analytic vs differences")

        let dx0 = rng.normals(T * C), dw0 = rng.normals(C)
        for accumulate: Int32 in [0, 1] {
            for withDW in [false, true] {
                var dx = accumulate == 1 ? dx0 : [Float](repeating: .nan, count: T * C), dw = dw0
                if withDW {
                    qk_rmsnorm_backward(&dx, &dw, dy, x, w, rstd, Int64(T), Int64(C), accumulate)
                } else {
                    qk_rmsnorm_backward(&dx, nil, dy, x, w, rstd, Int64(T), Int64(C), accumulate)
                }
                let gotX = zip(dx, accumulate == 1 ? dx0 : [Float](repeating: 0, count: T * C)).map { Double($0) - Double($1) }
                let label = "accumulate \(accumulate), dw \(withDW ? "given" : "NULL")"
                XCTAssertLessThan(BackwardReference.relativeError(gotX, fdX), 1e-4, "dx vs differences, \(label)")
                XCTAssertLessThan(BackwardReference.relativeError(gotX, refX), 1e-5, "dx vs float64, \(label)")
                if withDW {
                    let gotW = zip(dw, dw0).map { Double($0) - Double($1) }
                    XCTAssertLessThan(BackwardReference.relativeError(gotW, fdW), 1e-4, "dw vs differences, \(label)")
                    XCTAssertLessThan(BackwardReference.relativeError(gotW, refW), 1e-5, "dw vs float64, \(label)")
                } else {
                    XCTAssertEqual(dw, dw0, "dw untouched when NULL")
                }
            }
        }
    }

    /// Tables from qk_rope_tables with random frequencies; the forward is a rotation, so its
    /// backward is the inverse rotation up to fp32 rounding.
    func testRoPEBackwardMatchesFiniteDifferences() {
        let T = 4, P = 5, heads = 3, D = 8, half = D / 2
        var rng = SplitMix64(seed: 12)
        let invFreq = (0..<half).map { _ in Float(rng.nextUnitDouble() * 2) }
        var cos = [Float](repeating: 0, count: T * half), sin = cos
        qk_rope_tables(&cos, &sin, invFreq, Int64(half), Int64(P), Int64(T))
        let dy = rng.normals(T * heads * D), x = rng.normals(T * heads * D)

        let cos64 = cos.map(Double.init), sin64 = sin.map(Double.init), dy64 = dy.map(Double.init)
        let fd = BackwardReference.centralDifferences(at: x.map(Double.init), dy: dy64) {
            BackwardReference.rope($0, cos: cos64, sin: sin64, T: T, heads: heads, D: D, inverse: false)
        }
        let ref = BackwardReference.rope(dy64, cos: cos64, sin: sin64, T: T, heads: heads, D: D, inverse: true)
        var dx = dy
        qk_rope_backward(&dx, cos, sin, Int64(T), Int64(heads), Int64(D))
        let got = dx.map(Double.init)
        XCTAssertLessThan(BackwardReference.relativeError(got, fd), 1e-4)
        XCTAssertLessThan(BackwardReference.relativeError(got, ref), 1e-6)
        var back = dx   // forward ∘ backward = identity
        qk_rope_forward(&back, cos, sin, Int64(T), Int64(heads), Int64(D))
        XCTAssertLessThan(BackwardReference.relativeError(back.map(Double.init), dy64), 1e-6)
    }

    /// Includes gates of ±30, ±100 and ±1000, where exp(−g) under- or overflows in fp32.
    func testSwiGLUBackwardMatchesFiniteDifferences() {
        var rng = SplitMix64(seed: 13)
        let gate = rng.normals(40, scale: 4) + [30, -30, 100, -100, 1000, -1000]
        let n = gate.count
        let up = rng.normals(n), dh = rng.normals(n)
        let gate64 = gate.map(Double.init), up64 = up.map(Double.init), dh64 = dh.map(Double.init)
        let fdGate = BackwardReference.centralDifferences(at: gate64, dy: dh64) { BackwardReference.swiglu($0, up64) }
        let fdUp = BackwardReference.centralDifferences(at: up64, dy: dh64) { BackwardReference.swiglu(gate64, $0) }
        let refGate = (0..<n).map { i in
            let g = gate64[i], s = 1 / (1 + exp(-g))
            return dh64[i] * up64[i] * s * (1 + g * (1 - s))
        }
        let refUp = (0..<n).map { i in dh64[i] * gate64[i] / (1 + exp(-gate64[i])) }

        var dgate = [Float](repeating: .nan, count: n), dup = dgate
        qk_swiglu_backward(&dgate, &dup, dh, gate, up, Int64(n))
        XCTAssert(dgate.allSatisfy(\.isFinite) && dup.allSatisfy(\.isFinite), "finite for large |gate|")
        let gotGate = dgate.map(Double.init), gotUp = dup.map(Double.init)
        XCTAssertLessThan(BackwardReference.relativeError(gotGate, fdGate), 1e-4)
        XCTAssertLessThan(BackwardReference.relativeError(gotUp, fdUp), 1e-4)
        XCTAssertLessThan(BackwardReference.relativeError(gotGate, refGate), 1e-6)
        XCTAssertLessThan(BackwardReference.relativeError(gotUp, refUp), 1e-6)
    }

    /// Probabilities kept by qk_attention_forward (one call per sequence, [B, H, T, T]).
    func testAttentionBackwardMatchesFiniteDifferences() {
        let c = AttentionCase(seed: 14)
        let (dq, dk, dv) = c.backward(probs: c.forwardProbabilities(), threads: 2)

        let q64 = c.q.map(Double.init), k64 = c.k.map(Double.init), v64 = c.v.map(Double.init), dy64 = c.dout.map(Double.init)
        let attention = { (q: [Double], k: [Double], v: [Double]) in
            BackwardReference.attention(q, k, v, B: c.B, T: c.T, H: c.H, Hkv: c.Hkv, D: c.D)
        }
        let fdQ = BackwardReference.centralDifferences(at: q64, dy: dy64) { attention($0, k64, v64) }
        let fdK = BackwardReference.centralDifferences(at: k64, dy: dy64) { attention(q64, $0, v64) }
        let fdV = BackwardReference.centralDifferences(at: v64, dy: dy64) { attention(q64, k64, $0) }
        let ref = BackwardReference.attentionBackward(dy64, q64, k64, v64, B: c.B, T: c.T, H: c.H, Hkv: c.Hkv, D: c.D)
        for (name, got, fd, analytic) in [("dq", dq, fdQ, ref.dq), ("dk", dk, fdK, ref.dk), ("dv", dv, fdV, ref.dv)] {
            XCTAssertLessThan(BackwardReference.relativeError(analytic, fd), 1e-7, "\(name): float64 analytic vs differences")
            XCTAssertLessThan(BackwardReference.relativeError(got.map(Double.init), fd), 1e-4, "\(name) vs differences")
            XCTAssertLessThan(BackwardReference.relativeError(got.map(Double.init), analytic), 1e-5, "\(name) vs float64")
        }
    }

    /// Recomputed probabilities give the gradients of kept ones; 1 and 2 threads agree bit for bit.
    func testAttentionBackwardWithoutProbabilitiesAndOnAnyThreadCount() {
        let c = AttentionCase(seed: 15)
        let probs = c.forwardProbabilities()
        let kept = c.backward(probs: probs, threads: 1)
        let recomputed = c.backward(probs: nil, threads: 1)
        for (name, a, b) in [("dq", kept.dq, recomputed.dq), ("dk", kept.dk, recomputed.dk), ("dv", kept.dv, recomputed.dv)] {
            XCTAssertLessThan(zip(a, b).map { abs($0 - $1) }.max()!, 1e-6, "\(name) with and without probabilities")
        }
        for p in [probs, nil] {
            let one = c.backward(probs: p, threads: 1), two = c.backward(probs: p, threads: 2)
            XCTAssertEqual(one.dq, two.dq)
            XCTAssertEqual(one.dk, two.dk)
            XCTAssertEqual(one.dv, two.dv)
        }
    }

    /// The shape of a model's heads (D = 64) with T = 75: several query blocks, partial register
    /// tiles and a causal limit inside them, on the SIMD kernels and on the scalar fallback,
    /// against float64; kept and recomputed probabilities; 1 and 2 threads agree bit for bit.
    func testAttentionBackwardOnBlocksMatchesFloat64() {
        let c = AttentionCase(seed: 18, B: 2, T: 75, H: 6, Hkv: 2, D: 64)
        let ref = BackwardReference.attentionBackward(c.dout.map(Double.init), c.q.map(Double.init), c.k.map(Double.init),
                                                      c.v.map(Double.init), B: c.B, T: c.T, H: c.H, Hkv: c.Hkv, D: c.D)
        let isa = qk_isa_get()
        defer { _ = qk_isa_set(isa) }
        for level in isa == QK_ISA_SCALAR ? [isa] : [isa, QK_ISA_SCALAR] {
            XCTAssertEqual(qk_isa_set(level), 0)
            let probs = c.forwardProbabilities()
            let kept = c.backward(probs: probs, threads: 2), recomputed = c.backward(probs: nil, threads: 2)
            for (name, got, want) in [("dq", kept.dq, ref.dq), ("dk", kept.dk, ref.dk), ("dv", kept.dv, ref.dv),
                                      ("dq recomputed", recomputed.dq, ref.dq), ("dk recomputed", recomputed.dk, ref.dk),
                                      ("dv recomputed", recomputed.dv, ref.dv)] {
                XCTAssertLessThan(BackwardReference.relativeError(got.map(Double.init), want), 1e-5, "\(name), isa \(level)")
            }
            let one = c.backward(probs: probs, threads: 1)
            XCTAssertEqual(one.dq, kept.dq)
            XCTAssertEqual(one.dk, kept.dk)
            XCTAssertEqual(one.dv, kept.dv)
        }
    }

    /// Rows labelled −100 are not counted and get zero gradients; the loss is the float64
    /// log-softmax's, dlogits grad_scale times its differences; 1 and 2 threads agree bit for bit.
    func testCrossEntropyMatchesFloat64() {
        let rows = 7, V = 11, gradScale: Float = 0.25
        var rng = SplitMix64(seed: 16)
        let logits = rng.normals(rows * V, scale: 3)
        let labels: [Int32] = [3, -100, 0, 10, -100, 7, 7]
        let logits64 = logits.map(Double.init)
        let loss64 = { (x: [Double]) in [BackwardReference.crossEntropy(x, labels, V: V)] }
        let refLoss = loss64(logits64)[0]
        let fd = BackwardReference.centralDifferences(at: logits64, dy: [Double(gradScale)], loss64)
        var ref = [Double](repeating: 0, count: rows * V)
        for r in 0..<rows where labels[r] != -100 {
            let p = LlamaReference.softmax(Array(logits64[(r * V)..<((r + 1) * V)]))
            for i in 0..<V { ref[r * V + i] = Double(gradScale) * (p[i] - (i == Int(labels[r]) ? 1 : 0)) }
        }
        XCTAssertLessThan(BackwardReference.relativeError(ref, fd), 1e-8, "float64 analytic vs differences")

        var results = [(loss: Double, dlogits: [Float])]()
        for threads: Int32 in [1, 2] {
            var d = logits, counted: Int64 = -1
            let loss = qk_cross_entropy(&d, labels, Int64(rows), Int64(V), gradScale, &counted, threads)
            XCTAssertEqual(counted, 5)
            XCTAssertEqual(loss, refLoss, accuracy: 1e-6 * abs(refLoss))
            let got = d.map(Double.init)
            XCTAssertLessThan(BackwardReference.relativeError(got, fd), 1e-4)
            XCTAssertLessThan(BackwardReference.relativeError(got, ref), 1e-5)
            XCTAssert(d[V..<(2 * V)].allSatisfy { $0 == 0 } && d[(4 * V)..<(5 * V)].allSatisfy { $0 == 0 }, "ignored rows")
            results.append((loss, d))
        }
        XCTAssertEqual(results[0].loss, results[1].loss)
        XCTAssertEqual(results[0].dlogits, results[1].dlogits)
    }

    func testCrossEntropyLabelOutOfRangeIsNaN() {
        let rows = 3, V = 5
        var rng = SplitMix64(seed: 17)
        let logits = rng.normals(rows * V)
        for bad: Int32 in [5, -1, 1000] {
            var d = logits, counted: Int64 = 0
            XCTAssert(qk_cross_entropy(&d, [0, bad, 4], Int64(rows), Int64(V), 1, &counted, 2).isNaN, "label \(bad)")
        }
        var d = logits, counted: Int64 = 0
        XCTAssertEqual(qk_cross_entropy(&d, [-100, -100, -100], Int64(rows), Int64(V), 1, &counted, 2), 0)
        XCTAssertEqual(counted, 0)
        XCTAssert(d.allSatisfy { $0 == 0 })
    }
}

/// One random attention problem: B sequences of T tokens, H heads over Hkv KV heads of D
/// (by default 2, 5, 4, 2, 8); q, dout [B·T, H·D], k, v [B·T, Hkv·D].
private struct AttentionCase {
    let B: Int, T: Int, H: Int, Hkv: Int, D: Int
    let q: [Float], k: [Float], v: [Float], dout: [Float]

    init(seed: UInt64, B: Int = 2, T: Int = 5, H: Int = 4, Hkv: Int = 2, D: Int = 8) {
        (self.B, self.T, self.H, self.Hkv, self.D) = (B, T, H, Hkv, D)
        var rng = SplitMix64(seed: seed)
        q = rng.normals(B * T * H * D, scale: 1.5)
        k = rng.normals(B * T * Hkv * D, scale: 1.5)
        v = rng.normals(B * T * Hkv * D)
        dout = rng.normals(B * T * H * D)
    }

    /// [B, H, T, T] from qk_attention_forward, called once per sequence.
    func forwardProbabilities() -> [Float] {
        let qw = H * D, kw = Hkv * D
        var out = [Float](repeating: 0, count: B * T * qw), probs = [Float](repeating: -1, count: B * H * T * T)
        for b in 0..<B {
            let rc = out.withUnsafeMutableBufferPointer { o in
                probs.withUnsafeMutableBufferPointer { p in
                    qk_attention_forward(o.baseAddress! + b * T * qw, p.baseAddress! + b * H * T * T, Array(q[(b * T * qw)...]),
                                         Array(k[(b * T * kw)...]), Array(v[(b * T * kw)...]),
                                         Int64(T), 0, Int64(H), Int64(Hkv), Int64(D), 1)
                }
            }
            precondition(rc == 0, "qk_attention_forward failed")
        }
        return probs
    }

    func backward(probs: [Float]?, threads: Int32) -> (dq: [Float], dk: [Float], dv: [Float]) {
        var dq = [Float](repeating: .nan, count: q.count), dk = [Float](repeating: .nan, count: k.count), dv = dk
        let rc = qk_attention_backward(&dq, &dk, &dv, dout, q, k, v, probs, Int64(B), Int64(T), Int64(H), Int64(Hkv),
                                       Int64(D), threads)
        XCTAssertEqual(rc, 0)
        return (dq, dk, dv)
    }
}

/// Float64 forwards, their analytic backwards and central differences.
private enum BackwardReference {
    /// ∂/∂x of Σ dy ⊙ f(x), coordinate by coordinate.
    static func centralDifferences(at x: [Double], dy: [Double], h: Double = 1e-4,
                                   _ f: ([Double]) -> [Double]) -> [Double] {
        func L(_ x: [Double]) -> Double { zip(dy, f(x)).reduce(0) { $0 + $1.0 * $1.1 } }
        return x.indices.map { i in
            var plus = x, minus = x
            plus[i] += h
            minus[i] -= h
            return (L(plus) - L(minus)) / (2 * h)
        }
    }

    /// max |a − b| / max |b|.
    static func relativeError(_ a: [Double], _ b: [Double]) -> Double {
        precondition(a.count == b.count, "\(a.count) vs \(b.count) values")
        let scale = b.map(abs).max() ?? 0
        return (zip(a, b).map { abs($0 - $1) }.max() ?? 0) / max(scale, .leastNormalMagnitude)
    }

    static func rmsNorm(_ x: [Double], _ w: [Double], T: Int, C: Int, eps: Double) -> [Double] {
        (0..<T).flatMap { t in
            let row = x[(t * C)..<((t + 1) * C)]
            let r = 1 / (row.reduce(0) { $0 + $1 * $1 } / Double(C) + eps).squareRoot()
            return row.indices.map { w[$0 - t * C] * x[$0] * r }
        }
    }

    static func rmsNormBackward(_ dy: [Double], _ x: [Double], _ w: [Double], T: Int, C: Int,
                                eps: Double) -> (dx: [Double], dw: [Double]) {
        var dx = [Double](repeating: 0, count: T * C), dw = [Double](repeating: 0, count: C)
        for t in 0..<T {
            let o = t * C
            let r = 1 / ((0..<C).reduce(0) { $0 + x[o + $1] * x[o + $1] } / Double(C) + eps).squareRoot()
            let mean = (0..<C).reduce(0) { $0 + w[$1] * dy[o + $1] * x[o + $1] * r } / Double(C)
            for i in 0..<C {
                dx[o + i] = r * (w[i] * dy[o + i] - x[o + i] * r * mean)
                dw[i] += dy[o + i] * x[o + i] * r
            }
        }
        return (dx, dw)
    }

    /// Rotate-half RoPE with given tables; `inverse` rotates by the negated angles.
    static func rope(_ x: [Double], cos: [Double], sin: [Double], T: Int, heads: Int, D: Int, inverse: Bool) -> [Double] {
        let half = D / 2, sign: Double = inverse ? -1 : 1
        var y = x
        for t in 0..<T {
            for h in 0..<heads {
                let o = (t * heads + h) * D
                for i in 0..<half {
                    let c = cos[t * half + i], s = sign * sin[t * half + i], a = x[o + i], b = x[o + i + half]
                    y[o + i] = a * c - b * s
                    y[o + i + half] = b * c + a * s
                }
            }
        }
        return y
    }

    static func swiglu(_ gate: [Double], _ up: [Double]) -> [Double] {
        zip(gate, up).map { g, u in g / (1 + exp(-g)) * u }
    }

    /// Causal softmax rows of sequence b, head h: p[t][j] for j ≤ t.
    static func probabilities(_ q: [Double], _ k: [Double], b: Int, h: Int, T: Int, H: Int, Hkv: Int, D: Int) -> [[Double]] {
        let g = h / (H / Hkv)
        return (0..<T).map { t in
            let qo = (b * T + t) * H * D + h * D
            let scores = (0...t).map { j in
                let ko = (b * T + j) * Hkv * D + g * D
                return (0..<D).reduce(0) { $0 + q[qo + $1] * k[ko + $1] } / Double(D).squareRoot()
            }
            return LlamaReference.softmax(scores)
        }
    }

    static func attention(_ q: [Double], _ k: [Double], _ v: [Double], B: Int, T: Int, H: Int, Hkv: Int, D: Int) -> [Double] {
        var out = [Double](repeating: 0, count: q.count)
        for b in 0..<B {
            for h in 0..<H {
                let p = probabilities(q, k, b: b, h: h, T: T, H: H, Hkv: Hkv, D: D), g = h / (H / Hkv)
                for t in 0..<T {
                    for j in 0...t {
                        for d in 0..<D { out[(b * T + t) * H * D + h * D + d] += p[t][j] * v[(b * T + j) * Hkv * D + g * D + d] }
                    }
                }
            }
        }
        return out
    }

    /// dV = Pᵀ·dO, dP = dO·Vᵀ, dS = P ⊙ (dP − rowsum(dP ⊙ P)), dQ = dS·K/√D, dK = dSᵀ·Q/√D.
    static func attentionBackward(_ dout: [Double], _ q: [Double], _ k: [Double], _ v: [Double], B: Int, T: Int, H: Int,
                                  Hkv: Int, D: Int) -> (dq: [Double], dk: [Double], dv: [Double]) {
        var dq = [Double](repeating: 0, count: q.count), dk = [Double](repeating: 0, count: k.count), dv = dk
        let scale = 1 / Double(D).squareRoot()
        for b in 0..<B {
            for h in 0..<H {
                let p = probabilities(q, k, b: b, h: h, T: T, H: H, Hkv: Hkv, D: D), g = h / (H / Hkv)
                let qo = { (t: Int) in (b * T + t) * H * D + h * D }, ko = { (j: Int) in (b * T + j) * Hkv * D + g * D }
                for t in 0..<T {
                    let dp = (0...t).map { j in (0..<D).reduce(0) { $0 + dout[qo(t) + $1] * v[ko(j) + $1] } }
                    let c = (0...t).reduce(0) { $0 + dp[$1] * p[t][$1] }
                    for j in 0...t {
                        let ds = p[t][j] * (dp[j] - c) * scale
                        for d in 0..<D {
                            dv[ko(j) + d] += p[t][j] * dout[qo(t) + d]
                            dq[qo(t) + d] += ds * k[ko(j) + d]
                            dk[ko(j) + d] += ds * q[qo(t) + d]
                        }
                    }
                }
            }
        }
        return (dq, dk, dv)
    }

    /// Σ over rows not labelled −100 of −log softmax(x)[label].
    static func crossEntropy(_ x: [Double], _ labels: [Int32], V: Int) -> Double {
        labels.indices.filter { labels[$0] != -100 }.reduce(0) { total, r in
            let row = x[(r * V)..<((r + 1) * V)], m = row.max()!
            return total + log(row.reduce(0) { $0 + exp($1 - m) }) + m - x[r * V + Int(labels[r])]
        }
    }
}

/// SwiGLU's AVX-512 path (activations_avx512.c: its own exp, 16 lanes, OpenMP) against float64
/// over a long row with every tail length's worth of elements, arguments out to ±100 (exp's
/// overflow and underflow), and NaN; and against the scalar path it replaces.
final class SwiGLUSIMDTests: XCTestCase {
    func testSIMDMatchesFloat64AndTheScalarPath() {
        var rng = SplitMix64(seed: 31)
        let n = 3 * 8192 + 37
        var gate = rng.normals(n, scale: 6), up = rng.normals(n), dh = rng.normals(n)
        for (i, v) in [Float(100), -100, 89, -89, 88.5, -88.5, 0, -0.0, 1e-30, .nan].enumerated() { gate[1000 + i] = v }
        up[1009] = 1
        dh[1009] = 1
        func run() -> (h: [Float], dgate: [Float], dup: [Float]) {
            var h = [Float](repeating: -7, count: n), dgate = h, dup = h
            qk_swiglu_forward(&h, gate, up, Int64(n))
            qk_swiglu_backward(&dgate, &dup, dh, gate, up, Int64(n))
            return (h, dgate, dup)
        }
        let saved = qk_isa_get()
        defer { qk_isa_set(saved) }
        let simd = run()
        qk_isa_set(QK_ISA_SCALAR)
        let scalar = run()
        for i in 0..<n {
            let g = Double(gate[i]), u = Double(up[i]), d = Double(dh[i])
            guard !g.isNaN else {
                XCTAssertTrue(simd.h[i].isNaN && simd.dgate[i].isNaN && simd.dup[i].isNaN, "NaN gate stays NaN at \(i)")
                continue
            }
            let s = 1 / (1 + exp(-g))
            // (value, float64, scalar path, magnitude of its terms): dgate's 1 + g(1 − σ) cancels
            // near g ≈ −1.28, and 1 − σ carries σ's rounding (ε/2 absolute) times |g|, so its
            // error scales with 1 + |g|(1 − σ) + |g|/8, not with the result.
            let refs = [(simd.h[i], g * s * u, scalar.h[i], abs(g * s * u)), (simd.dup[i], d * g * s, scalar.dup[i], abs(d * g * s)),
                        (simd.dgate[i], d * u * s * (1 + g * (1 - s)), scalar.dgate[i], abs(d * u) * s * (1 + abs(g) * (1 - s) + abs(g) / 8))]
            for (k, (got, ref, old, size)) in refs.enumerated() {
                // A handful of fp32 roundings plus exp's 2 ulp; absolute where fp32 underflows
                // (exp(89) is +inf in fp32: silu(−89) comes out −0 on both paths, 3e-37 in float64).
                let tol = 8 * Double(Float.ulpOfOne) * size + 1e-36
                XCTAssertLessThanOrEqual(abs(Double(got) - ref), tol, "output \(k) at \(i): gate \(g), got \(got), float64 \(ref), scalar \(old)")
                XCTAssertLessThanOrEqual(abs(Double(got) - Double(old)), 2 * tol,
                                         "output \(k) at \(i) against the scalar path")
            }
        }
    }
}

/// The softmax's exp (attention rows, the head's cross-entropy rows) runs 16 lanes at a time
/// on AVX-512: softmax and cross-entropy against float64 on both paths, with rows whose
/// length is not a multiple of 16, a masked −∞ entry, and a spread of logits wide enough to
/// underflow exp.
final class SoftmaxExpSIMDTests: XCTestCase {
    func testSoftmaxAndCrossEntropyMatchFloat64OnBothPaths() {
        var rng = SplitMix64(seed: 47)
        let rows = 5, N = 1000 + 13
        var logits = rng.normals(rows * N, scale: 8)
        logits[3] = -.infinity            // a masked score, as a sliding window leaves
        logits[N + 7] = 120; logits[N + 8] = -120
        let labels: [Int32] = [4, 7, -100, Int32(N - 1), 0]
        let saved = qk_isa_get()
        defer { qk_isa_set(saved) }
        for isa in [QK_ISA_AVX512, QK_ISA_SCALAR] {
            qk_isa_set(isa)
            guard qk_isa_get() == isa else { continue }   // a CPU without AVX-512 runs the scalar path only
            var soft = logits
            qk_softmax_forward(&soft, Int64(rows), Int64(N))
            var grads = logits, rowLoss = [Double](repeating: 0, count: rows)
            let total = qk_cross_entropy_rows(&grads, labels, Int64(rows), Int64(N), 0.5, &rowLoss, 1)
            var want = 0.0
            for r in 0..<rows {
                let row = logits[(r * N)..<((r + 1) * N)].map(Double.init), m = row.max()!
                let z = row.reduce(0) { $0 + exp($1 - m) }
                for j in 0..<N {
                    let p = exp(row[j] - m) / z
                    // a few fp32 roundings of p, exp's 2 ulp, the fp32 sum's rounding, and x − m
                    // rounded in fp32 (|x − m|·ε/2 absolute in exp's argument, relative in p)
                    let rel = (16 + (m - row[j]).magnitude) * Double(Float.ulpOfOne)
                    XCTAssertEqual(Double(soft[r * N + j]), p, accuracy: rel * p + 1e-44, "softmax \(isa) [\(r), \(j)]")
                    guard labels[r] != -100 else { XCTAssertEqual(grads[r * N + j], 0); continue }
                    let g = 0.5 * (p - (j == Int(labels[r]) ? 1 : 0))
                    XCTAssertEqual(Double(grads[r * N + j]), g, accuracy: rel * (0.5 * p) + 1e-44 + (j == Int(labels[r]) ? 1e-7 : 0),
                                   "dlogits \(isa) [\(r), \(j)]")
                }
                let loss = labels[r] == -100 ? 0 : log(z) + m - row[Int(labels[r])]
                XCTAssertEqual(rowLoss[r], loss, accuracy: 1e-5 * max(1, loss), "row \(r) loss (\(isa))")
                want += loss
            }
            XCTAssertEqual(total, want, accuracy: 1e-5 * want, "total (\(isa))")
        }
    }
}
