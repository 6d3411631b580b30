import Foundation
@testable import QLoRA
import QuantKernels
import XCTest

/// LoRA dropout's C kernel (lora_ops.c) against `DropoutStream.drops`, the Swift statement of
/// the mask: the same elements dropped, the kept ones scaled by 1/(1 − p) with one rounding,
/// on the AVX-512 and the scalar paths, any count, thread count and accumulate mode.
final class DropoutKernelTests: XCTestCase {
    func expected(_ x: [Float], base: [Float]?, p: Float, seed: UInt64) -> [Float] {
        let keep = 1 / (1 - p), threshold = UInt64(Double(p) * 0x1p53)
        return x.indices.map { i in
            let v: Float = DropoutStream.drops(seed, i, threshold: threshold) ? 0 : x[i] * keep
            return base.map { $0[i] + v } ?? v
        }
    }

    func testKernelMatchesTheSwiftMaskOnEveryPath() throws {
        var rng = SplitMix64(seed: 4)
        let saved = qk_isa_get()
        defer { qk_isa_set(saved) }
        for isa in [QK_ISA_AVX512, QK_ISA_SCALAR] {
            guard qk_isa_set(isa) == 0 || isa == QK_ISA_SCALAR else { continue }  // no AVX-512 here: the scalar path only
            for count in [1, 15, 16, 17, 4096 + 33, 3 * 4096, 20_000] {
                for (p, seed) in [(Float(0.05), UInt64(0x0123_4567_89AB_CDEF)), (0.5, .max), (0.1, 7)] {
                    let x = (0..<count).map { _ in Float(rng.nextUnitDouble() * 4 - 2) }
                    let base = (0..<count).map { _ in Float(rng.nextUnitDouble() - 0.5) }
                    for threads in [1, 2] {
                        var out = [Float](repeating: .nan, count: count), acc = base
                        let keep = 1 / (1 - p), threshold = UInt64(Double(p) * 0x1p53)
                        qk_lora_dropout(&out, x, Int64(count), seed, threshold, keep, 0, Int32(threads))
                        qk_lora_dropout(&acc, x, Int64(count), seed, threshold, keep, 1, Int32(threads))
                        let at = "isa \(isa.rawValue) count \(count) p \(p) threads \(threads)"
                        XCTAssertEqual(out, expected(x, base: nil, p: p, seed: seed), at)
                        XCTAssertEqual(acc, expected(x, base: base, p: p, seed: seed), at)
                    }
                    var inPlace = x
                    inPlace.withUnsafeMutableBufferPointer {
                        LoRAAdapter.applyDropout(into: $0.baseAddress!, from: $0.baseAddress!, count: count, p: p, seed: seed)
                    }
                    XCTAssertEqual(inPlace, expected(x, base: nil, p: p, seed: seed), "in place, count \(count)")
                }
            }
        }
    }

    /// The mask drops a fraction p of a long row (binomial: within 5σ).
    func testDropsTheAskedFraction() {
        let n = 1 << 20, p: Float = 0.05
        var out = [Float](repeating: 0, count: n)
        let ones = [Float](repeating: 1, count: n)
        qk_lora_dropout(&out, ones, Int64(n), 99, UInt64(Double(p) * 0x1p53), 1, 0, 0)
        let dropped = Double(out.filter { $0 == 0 }.count) / Double(n)
        XCTAssertEqual(dropped, Double(p), accuracy: 5 * (Double(p) * (1 - Double(p)) / Double(n)).squareRoot())
    }
}
