import Foundation
import QuantKernels
import XCTest
@testable import QLoRA

/// Gemma's GeGLU, gelu_tanh(gate) ⊙ up, and its backward against float64 (the same formula and
/// central differences of it).
final class GeGLUTests: XCTestCase {
    static func geluTanh(_ g: Double) -> Double { 0.5 * g * (1 + tanh((2 / Double.pi).squareRoot() * (g + 0.044715 * g * g * g))) }

    func testForwardAndBackwardMatchFloat64() {
        let n = 400
        var rng = SplitMix64(seed: 31)
        let gate = rng.normals(n, scale: 3), up = rng.normals(n), dh = rng.normals(n)
        var h = [Float](repeating: 0, count: n)
        qk_geglu_forward(&h, gate, up, Int64(n))
        let ref = (0..<n).map { Self.geluTanh(Double(gate[$0])) * Double(up[$0]) }
        XCTAssertLessThan(LlamaReference.maxAbsDiff(h, ref), 2e-6)

        var dgate = [Float](repeating: .nan, count: n), dup = dgate
        qk_geglu_backward(&dgate, &dup, dh, gate, up, Int64(n))
        let eps = 1e-5
        for i in 0..<n {
            let g = Double(gate[i]), u = Double(up[i]), d = Double(dh[i])
            let fd = (Self.geluTanh(g + eps) - Self.geluTanh(g - eps)) / (2 * eps) * u * d
            XCTAssertEqual(Double(dgate[i]), fd, accuracy: 2e-5 * max(1, abs(fd)), "dgate \(i)")
            XCTAssertEqual(Double(dup[i]), Self.geluTanh(g) * d, accuracy: 2e-6 * max(1, abs(d)), "dup \(i)")
        }
    }
}
