import Foundation
@testable import QLoRA
import Quant
import XCTest

/// `qlora quantize --shape`: the folder holds `SyntheticModel.make`'s weights, so training it
/// gives `--shape`'s losses.
final class SyntheticFolderTests: XCTestCase {
    let dir = TempDir()

    /// A tiny Llama layout, untied so the LM head is written too.
    static let tiny = ModelConfig(architecture: "llama", hiddenSize: 64, intermediateSize: 128, numLayers: 2, numHeads: 4, numKVHeads: 2,
                                  headDim: 16, vocabSize: 96, rmsNormEps: 1e-5, ropeTheta: 10000, ropeScaling: nil,
                                  maxPositionEmbeddings: 256, tieWordEmbeddings: false, attentionBias: false)

    func testFolderHoldsTheSyntheticWeightsAndTrainsTheSame() throws {
        let out = dir.path + "/tiny-nf4"
        var steps = 0
        let report = try SyntheticFolderWriter.write(config: Self.tiny, seed: 7, output: out) { _ in steps += 1 }
        XCTAssertEqual(steps, 2 + 2)   // two layers, embedding, head
        XCTAssertEqual(report.tensors, 2 * 9 + 3)
        XCTAssertFalse(FileManager.default.fileExists(atPath: out + ".tmp-\(getpid())"))
        let folder = try HuggingFaceFolder(path: out)
        XCTAssertTrue(folder.isBitsandbytes4Bit)
        XCTAssertEqual(folder.config, Self.tiny)
        XCTAssertNil(folder.tokenizerJSON)

        let made = try SyntheticModel.make(config: Self.tiny, seed: 7), loaded = try DecoderModel(path: out)
        for l in 0..<2 {
            for m in LinearSpec.llamaBlock {
                let a = made.weights.layers[l].matrix(m), b = loaded.weights.layers[l].matrix(m)
                XCTAssertEqual(b.format, .nf4)
                XCTAssertEqual(a.dequantize(), b.dequantize(), "layer \(l) \(m)")
            }
            XCTAssertEqual(loaded.weights.layers[l][.postAttention].weight, [Float](repeating: 1, count: 64))
        }
        for (a, b) in [(made.weights.embedding, loaded.weights.embedding), (made.weights.lmHead, loaded.weights.lmHead)] {
            guard case let .quantized(q) = a, case let .dense(d) = b else { return XCTFail("embedding Q8_0 in make, F32 in the folder") }
            XCTAssertEqual(q.dequantize(), d)
        }

        var rng = SplitMix64(seed: 3)
        let ids = (0..<32).map { _ in Int32(rng.next() % 96) }
        let batch = TokenBatch(inputIds: ids, labels: ids, sequences: 2, length: 16)
        func loss(_ model: DecoderModel) throws -> Double {
            let lora = try ModelAdapters(model: model, config: LoRAConfig(rank: 4, alpha: 8), seed: 1)
            return try Trainer(model: model, lora: lora).loss(batch).mean
        }
        // The same values; only the LM head's product runs on another path (dense vs Q8_0 tiles).
        XCTAssertEqual(try loss(loaded), try loss(made), accuracy: 1e-5)
    }

    func testRefusesAnExistingOutput() throws {
        XCTAssertThrowsError(try SyntheticFolderWriter.write(config: Self.tiny, seed: 1, output: dir.path) { _ in }) {
            XCTAssertEqual($0 as? SyntheticFolderError, .outputExists(path: dir.path))
        }
    }

    /// Any piece of the seeded stream equals the same values of the whole, across chunk edges.
    func testRandomValuesOfARangeMatchTheWhole() {
        let count = (1 << 20) * 2 + 1000
        let whole = SyntheticModel.randomValues(count, seed: 11)
        for range in [0..<10, 1_048_000..<1_049_000, 5..<(count - 3), (count - 1)..<count] {
            XCTAssertEqual(SyntheticModel.randomValues(range, seed: 11), Array(whole[range]), "\(range)")
        }
    }
}
