import Foundation
import QLoRA
import XCTest

/// llama.cpp's perplexity on SmolLM2: the evaluator's NLLs against a recomputation from the
/// same logits, done another way (probabilities, not log-sum-exp), and its ± by hand.
final class PerplexityEvaluatorTests: XCTestCase {
    static let modelPath = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
        .appendingPathComponent("../../../models/SmolLM2-135M-Instruct.Q4_1.gguf").standardized.path
    static let fixtures = Bundle.module.url(forResource: "Fixtures", withExtension: nil)!

    struct Reference: Decodable {
        struct Perplexity: Decodable { let text: String; let ids: [Int] }
        let perplexity: Perplexity
    }

    /// NLLs 1, 2, 3: mean 2, variance 2/3, standard error sqrt(2/3 / 2); ± = e² · 0.57735.
    func testErrorIsStandardErrorOfMeanThroughExp() {
        var e = PerplexityEvaluator.Estimate()
        [1.0, 2, 3].forEach { e.add($0) }
        XCTAssertEqual(e.perplexity, exp(2), accuracy: 1e-12)
        XCTAssertEqual(e.error, exp(2) * (1.0 / 3).squareRoot(), accuracy: 1e-12)
    }

    /// Two windows of 32 from the fixture text: 15 targets each (positions 17 ... 31).
    func testWindowNLLsMatchRecomputationFromLogits() throws {
        guard FileManager.default.fileExists(atPath: Self.modelPath) else { throw XCTSkip("\(Self.modelPath) missing: run tools/setup.sh") }
        let ref = try JSONDecoder().decode(Reference.self, from: Data(contentsOf: Self.fixtures.appendingPathComponent("smollm2-reference.json")))
        let lm = try LanguageModel(path: Self.modelPath)
        XCTAssertFalse(lm.addsBOS)   // tokenizer.ggml.add_bos_token false
        let tokens = lm.tokenizer.encode(ref.perplexity.text, addSpecialTokens: lm.addsBOS)
        XCTAssertEqual(tokens, ref.perplexity.ids)
        let n = 32, V = lm.model.config.vocabSize
        let evaluator = PerplexityEvaluator(model: lm.model, context: n, bos: nil)
        var seen: [Int] = []
        let result = try evaluator.run(tokens: tokens) { seen.append($0.window) }
        XCTAssertEqual(seen, [1, 2])
        XCTAssertEqual(result.estimate.count, 2 * (n - 1 - n / 2))

        var nlls: [Double] = []
        for k in 0..<2 {
            let window = Array(tokens[(k * n)..<((k + 1) * n)])
            let logits = try lm.model.forward(tokens: window, logits: .all)
            for t in (n / 2)..<(n - 1) {
                let row = logits[(t * V)..<((t + 1) * V)].map(Double.init)
                let z = row.reduce(0) { $0 + exp($1) }
                nlls.append(-log(exp(row[row.startIndex + window[t + 1]]) / z))
            }
        }
        let mean = nlls.reduce(0, +) / Double(nlls.count)
        XCTAssertEqual(result.estimate.meanNLL, mean, accuracy: 1e-9)
        XCTAssertEqual(result.estimate.perplexity, exp(mean), accuracy: 1e-8)
    }

    func testTooShortTextThrows() throws {
        guard FileManager.default.fileExists(atPath: Self.modelPath) else { throw XCTSkip("\(Self.modelPath) missing: run tools/setup.sh") }
        let lm = try LanguageModel(path: Self.modelPath)
        XCTAssertThrowsError(try PerplexityEvaluator(model: lm.model, context: 64, bos: nil).run(tokens: Array(repeating: 1, count: 100)) { _ in })
    }
}
