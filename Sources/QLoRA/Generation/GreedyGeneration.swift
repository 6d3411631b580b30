import Foundation

extension DecoderModel {
    /// Greedy decoding with a KV cache: the prompt runs once, then one token per step, each the
    /// arg max of the last logits (the lowest id on ties, as torch.argmax). Stops after
    /// `maxNewTokens` or at a token of `stopAt`, which is included. Returns the new ids.
    public func generate(prompt: [Int], maxNewTokens: Int, stopAt: Set<Int> = []) throws -> [Int] {
        guard maxNewTokens > 0 else { return [] }
        let cache = KVCache(config: config, capacity: prompt.count + maxNewTokens)
        var logits = try forward(tokens: prompt, cache: cache)
        var generated: [Int] = []
        while true {
            let next = Self.argmax(logits)
            generated.append(next)
            if stopAt.contains(next) || generated.count == maxNewTokens { return generated }
            logits = try forward(tokens: [next], cache: cache)
        }
    }

    /// The index of the largest value, the first one on ties.
    static func argmax(_ v: [Float]) -> Int {
        var best = 0
        for i in v.indices where v[i] > v[best] { best = i }
        return best
    }
}
