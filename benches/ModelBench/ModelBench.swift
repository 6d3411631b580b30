import Foundation
import QLoRA
import Quant

/// `qlora bench model`: prompt processing and generation speed of a model as qlora runs it,
/// the way llama-bench reports pp512 / tg128 (prompt of N random tokens in one forward; N
/// tokens generated one at a time from an empty cache), medians of several runs, with the
/// peak RSS. Peers (llama.cpp, PyTorch) are measured beside it by hand, never in CI.
public enum ModelBench {
    public struct Result: Codable, Sendable {
        public var model: String
        public var loadSeconds: Double
        public var promptTokens: Int
        public var promptTokensPerSecond: Double
        public var generatedTokens: Int
        public var generationTokensPerSecond: Double
        public var peakRSSBytes: Int
        public var computeDType: String
    }

    /// `computeDType`: what the prompt's products compute in (decoding's single rows stay fp32).
    public static func run(path: String, promptTokens: Int, generatedTokens: Int, runs: Int, computeDType: ComputeDType = .fp32,
                           progress: (String) -> Void) throws -> Result {
        let start = Date()
        let model = try DecoderModel(path: path)
        model.computeDType = computeDType
        let load = Date().timeIntervalSince(start)
        var rng = SplitMix64(seed: 512)
        let prompt = (0..<promptTokens).map { _ in Int(rng.next() % UInt64(model.config.vocabSize)) }
        var pp: [Double] = [], tg: [Double] = []
        for r in 0..<runs {
            progress("run \(r + 1)/\(runs): pp\(promptTokens)")
            var t = Date()
            _ = try model.forward(tokens: prompt)
            pp.append(Double(promptTokens) / Date().timeIntervalSince(t))
            progress("run \(r + 1)/\(runs): tg\(generatedTokens)")
            let cache = KVCache(config: model.config, capacity: generatedTokens)
            t = Date()
            for i in 0..<generatedTokens { _ = try model.forward(tokens: [prompt[i % promptTokens]], cache: cache) }
            tg.append(Double(generatedTokens) / Date().timeIntervalSince(t))
        }
        return Result(model: path, loadSeconds: load, promptTokens: promptTokens, promptTokensPerSecond: median(pp),
                      generatedTokens: generatedTokens, generationTokensPerSecond: median(tg), peakRSSBytes: RuntimeMemory.peakRSS(),
                      computeDType: computeDType.rawValue)
    }

    static func median(_ v: [Double]) -> Double {
        let s = v.sorted()
        return s.count % 2 == 1 ? s[s.count / 2] : (s[s.count / 2 - 1] + s[s.count / 2]) / 2
    }
}
