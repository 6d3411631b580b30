import Foundation
@testable import QLoRA
import XCTest

/// 8-bit AdamW against bitsandbytes' AdamW8bit on its CPU backend (Fixtures/optim-adamw8bit.json,
/// made by tools/make_adamw8bit_fixtures.py): the dynamic maps, the values after each of four
/// steps, and the final 8-bit states (codes and block absmax) of a tensor of whole blocks and
/// of one with a short last block, and the fp32 states of a tensor under min_8bit_size.
final class AdamW8bitTests: XCTestCase {
    static let fixture = Bundle.module.url(forResource: "Fixtures", withExtension: nil)!.appendingPathComponent("optim-adamw8bit.json")
    let hex = RopePermutationTests.floats(hex:)

    func bytes(_ s: String) -> [UInt8] {
        var out: [UInt8] = []
        var i = s.startIndex
        while i < s.endIndex {
            let j = s.index(i, offsetBy: 2)
            out.append(UInt8(s[i..<j], radix: 16)!)
            i = j
        }
        return out
    }

    func testDynamicMapsAreBitsandbytes() throws {
        let doc = try JSONSerialization.jsonObject(with: Data(contentsOf: Self.fixture)) as! [String: Any]
        XCTAssertEqual(Blockwise8Moments.map1.map(\.bitPattern), hex(doc["qmap1"] as! String).map(\.bitPattern))
        XCTAssertEqual(Blockwise8Moments.map2.map(\.bitPattern), hex(doc["qmap2"] as! String).map(\.bitPattern))
    }

    func testStepsAndStatesMatchBitsandbytes() throws {
        let doc = try JSONSerialization.jsonObject(with: Data(contentsOf: Self.fixture)) as! [String: Any]
        let betas = doc["betas"] as! [Double]
        let params = (doc["params"] as! [[String: Any]]).map {
            Parameter(name: $0["name"] as! String, shape: $0["shape"] as! [Int], values: hex($0["init"] as! String))
        }
        let opt = AdamW(parameters: params, .init(beta1: betas[0], beta2: betas[1], eps: doc["eps"] as! Double,
                                                  weightDecay: doc["weight_decay"] as! Double), kind: .adamw8bit)
        XCTAssertEqual(opt.blockwise.map { $0 != nil }, [true, true, false])
        let grads = doc["grads"] as! [[String: String]], after = doc["after"] as! [[String: String]]
        for (k, lr) in (doc["lr"] as! [Double]).enumerated() {
            for p in params { p.grad.base.update(from: hex(grads[k][p.name]!), count: p.count) }
            opt.update(lr: lr)
            for p in params {
                let expected = hex(after[k][p.name]!)
                let scale = expected.map(\.magnitude).max()!.ulp
                let worst = zip(p.values, expected).map { ($0 - $1).magnitude / scale }.max()!
                XCTAssertLessThanOrEqual(worst, 2, "step \(k + 1) \(p.name)")
            }
        }
        let states = doc["states"] as! [String: [String: String]]
        for (i, p) in params.enumerated() {
            let s = states[p.name]!
            if let b = opt.blockwise[i] {
                XCTAssertEqual(b.codes1, bytes(s["codes1"]!), "\(p.name) m codes")
                XCTAssertEqual(b.codes2, bytes(s["codes2"]!), "\(p.name) v codes")
                XCTAssertEqual(b.absmax1, hex(s["absmax1"]!), "\(p.name) m absmax")
                XCTAssertEqual(b.absmax2, hex(s["absmax2"]!), "\(p.name) v absmax")
            } else {
                XCTAssertLessThanOrEqual(AdamWTests.maxUlps(opt.expAvg[i].array, hex(s["exp_avg"]!)), 2, "\(p.name) exp_avg")
                XCTAssertLessThanOrEqual(AdamWTests.maxUlps(opt.expAvgSq[i].array, hex(s["exp_avg_sq"]!)), 2, "\(p.name) exp_avg_sq")
            }
        }
        // 8-bit: 2 bytes per value and 8 per block; fp32 below min_8bit_size.
        XCTAssertEqual(opt.stateBytes, 2 * 5120 + 8 * 20 + 2 * 4100 + 8 * 17 + 8 * 128)
    }

    /// A checkpoint holds the 8-bit states as they are (U8 codes, F32 absmax): restored into a
    /// fresh optimizer, training goes on bit for bit.
    func testCheckpointRoundTripIsExact() throws {
        func run(_ seed: UInt64) -> (AdamW, [Parameter]) {
            var rng = SplitMix64(seed: seed)
            let params = [Parameter(name: "model.layers.0.mlp.up_proj.lora_A.weight", shape: [16, 300]),
                          Parameter(name: "model.layers.0.mlp.up_proj.lora_B.weight", shape: [40, 16])]
            for p in params { for i in 0..<p.count { p.value.base[i] = Float(rng.nextUnitDouble() - 0.5) } }
            return (AdamW(parameters: params, .init(weightDecay: 0.01), kind: .adamw8bit), params)
        }
        func train(_ opt: AdamW, _ params: [Parameter], _ rng: inout SplitMix64, _ n: Int) {
            for _ in 0..<n {
                for p in params { for i in 0..<p.count { p.grad.base[i] = Float(rng.nextUnitDouble() - 0.5) * 0.1 } }
                opt.update(lr: 1e-3)
            }
        }
        func bits(_ opt: AdamW, _ params: [Parameter]) -> [[UInt32]] {
            params.map { $0.values.map(\.bitPattern) } + opt.expAvg.map { $0.array.map(\.bitPattern) }
                + opt.blockwise.compactMap { $0.map { ($0.codes1 + $0.codes2).map(UInt32.init) + ($0.absmax1 + $0.absmax2).map(\.bitPattern) } }
        }
        let dir = TempDir()
        let (a, pa) = run(1), (b, pb) = run(2)
        XCTAssertEqual(a.blockwise.map { $0 != nil }, [true, false])
        var rng = SplitMix64(seed: 9)
        train(a, pa, &rng, 3)
        let path = try Checkpoint.save(try TrainingState(step: 3, schedulerStep: 3, rngStates: [:], dataState: [0]), optimizer: a, ema: nil,
                                       in: dir.path, keepLast: 1)
        _ = try Checkpoint.restore(from: path, optimizer: b, ema: nil)
        XCTAssertEqual(bits(b, pb), bits(a, pa))
        var rngB = rng
        train(a, pa, &rng, 2)
        train(b, pb, &rngB, 2)
        XCTAssertEqual(bits(b, pb), bits(a, pa))
        // An fp32 optimizer cannot restore it: the tensors are the 8-bit ones.
        let (c, _) = run(3)
        let plain = AdamW(parameters: c.parameters, .init())
        XCTAssertThrowsError(try Checkpoint.restore(from: path, optimizer: plain, ema: nil))
    }
}
