import Foundation
import QLoRA
import XCTest

/// LoRA+ against PEFT's create_loraplus_optimizer driving torch.optim.AdamW
/// (Fixtures/optim-loraplus.json, made by tools/make_loraplus_fixtures.py): the same
/// parameters in the ratio's group (lora_B and the trained norms), and the same values after
/// three AdamW steps with a scheduled learning rate.
final class LoRAPlusTests: XCTestCase {
    static let fixture = Bundle.module.url(forResource: "Fixtures", withExtension: nil)!.appendingPathComponent("optim-loraplus.json")

    func load() throws -> (doc: [String: Any], params: [Parameter], factors: [Double]) {
        let doc = try JSONSerialization.jsonObject(with: Data(contentsOf: Self.fixture)) as! [String: Any]
        let specs = doc["params"] as! [[String: Any]]
        let params = specs.map {
            Parameter(name: $0["name"] as! String, shape: $0["shape"] as! [Int], values: RopePermutationTests.floats(hex: $0["init"] as! String))
        }
        return (doc, params, specs.map { $0["lr_factor"] as! Double })
    }

    func testGroupsAsPEFT() throws {
        let (doc, params, factors) = try load()
        let ratio = doc["loraplus_lr_ratio"] as! Double
        XCTAssertEqual(LoRAPlus.scales(for: params, ratio: ratio), factors)
        XCTAssertEqual(factors.filter { $0 == ratio }.count, 10)   // 7 lora_B + 3 norms
    }

    /// Runs the fixture's three steps; returns the largest difference from torch's values in
    /// ulps of each tensor's largest magnitude (elements that cross zero are compared on the
    /// tensor's scale: torch's vector sqrt and a different order of the lr products move them
    /// by a few ulps of that).
    func run(scaled: Bool) throws -> Float {
        let (doc, params, _) = try load()
        let betas = doc["betas"] as! [Double], lr = doc["lr"] as! Double
        let opt = AdamW(parameters: params, .init(beta1: betas[0], beta2: betas[1], eps: doc["eps"] as! Double,
                                                  weightDecay: doc["weight_decay"] as! Double))
        if scaled { opt.lrScales = LoRAPlus.scales(for: params, ratio: doc["loraplus_lr_ratio"] as! Double) }
        let grads = doc["grads"] as! [[String: String]], after = doc["after"] as! [[String: String]]
        var worst: Float = 0
        for (k, f) in (doc["lr_factors"] as! [Double]).enumerated() {
            for p in params { p.grad.base.update(from: RopePermutationTests.floats(hex: grads[k][p.name]!), count: p.count) }
            opt.update(lr: lr * f)
            for p in params {
                let expected = RopePermutationTests.floats(hex: after[k][p.name]!)
                let scale = expected.map(\.magnitude).max()!.ulp
                worst = max(worst, zip(p.values, expected).map { ($0 - $1).magnitude / scale }.max()!)
            }
        }
        return worst
    }

    func testStepsMatchTorchWithPEFTsGroups() throws {
        XCTAssertLessThanOrEqual(try run(scaled: true), 4)
        // Without the groups' learning rates, lora_B and the norms land elsewhere.
        XCTAssertGreaterThan(try run(scaled: false), 1000)
    }
}
