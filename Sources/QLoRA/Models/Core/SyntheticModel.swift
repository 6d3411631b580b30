import Foundation
import Quant
import QuantKernels

/// Models with the public layer dimensions of the families qlora runs and seeded random
/// weights, written straight into the 4-bit format tensor by tensor (one fp32 tensor exists at
/// a time, never the whole model): what memory and speed of bigger models are measured on, on
/// a machine that could not hold their fp32 (or even fp16) weights.
public enum SyntheticShape: String, CaseIterable, Sendable {
    case llama1b = "llama-1b", llama3b = "llama-3b", llama7b = "llama-7b", llama8b = "llama-8b"
    case llama13b = "llama-13b", llama33b = "llama-33b", llama70b = "llama-70b"
    case mistral7b = "mistral-7b", qwen25_7b = "qwen2.5-7b", qwen3_8b = "qwen3-8b"
    case gemma3_4b = "gemma3-4b", gemma3_12b = "gemma3-12b", gemma3_27b = "gemma3-27b", phi3mini = "phi3-mini"

    /// Hidden, intermediate, layers, heads, KV heads, head dim, vocab, tied — from the models'
    /// config.json: Llama 3.2 1B/3B, Llama 2 7B/13B/70B, Llama 3.1 8B, LLaMA 33B, Mistral 7B v0.3,
    /// Qwen2.5 7B, Qwen3 8B, Gemma 3 4B/12B/27B (text), Phi-3-mini-4k.
    public var config: ModelConfig {
        let (arch, C, F, L, H, Hkv, D, V, tied): (String, Int, Int, Int, Int, Int, Int?, Int, Bool) = switch self {
        case .llama1b: ("llama", 2048, 8192, 16, 32, 8, nil, 128_256, true)
        case .llama3b: ("llama", 3072, 8192, 28, 24, 8, nil, 128_256, true)
        case .llama7b: ("llama", 4096, 11008, 32, 32, 32, nil, 32000, false)
        case .llama8b: ("llama", 4096, 14336, 32, 32, 8, nil, 128_256, false)
        case .llama13b: ("llama", 5120, 13824, 40, 40, 40, nil, 32000, false)
        case .llama33b: ("llama", 6656, 17920, 60, 52, 52, nil, 32000, false)
        case .llama70b: ("llama", 8192, 28672, 80, 64, 8, nil, 32000, false)
        case .mistral7b: ("mistral", 4096, 14336, 32, 32, 8, nil, 32768, false)
        case .qwen25_7b: ("qwen2", 3584, 18944, 28, 28, 4, nil, 152_064, false)
        case .qwen3_8b: ("qwen3", 4096, 12288, 36, 32, 8, 128, 151_936, false)
        case .gemma3_4b: ("gemma3_text", 2560, 10240, 34, 8, 4, 256, 262_208, true)
        case .gemma3_12b: ("gemma3_text", 3840, 15360, 48, 16, 8, 256, 262_208, true)
        case .gemma3_27b: ("gemma3_text", 5376, 21504, 62, 32, 16, 128, 262_208, true)
        case .phi3mini: ("phi3", 3072, 8192, 32, 32, 32, nil, 32064, false)
        }
        var c = ModelConfig(architecture: arch, hiddenSize: C, intermediateSize: F, numLayers: L, numHeads: H, numKVHeads: Hkv,
                            headDim: D ?? C / H, vocabSize: V, rmsNormEps: 1e-5, ropeTheta: 10000, ropeScaling: nil,
                            maxPositionEmbeddings: 4096, tieWordEmbeddings: tied, attentionBias: false)
        if arch == "gemma3_text" {   // 5 local layers (window 1024, base 10,000) : 1 global; Gemma 3 27B scales by 168^−½
            c.slidingWindow = 1024
            c.slidingLayers = ModelFamily.gemmaPattern(layers: L, every: 6)
            c.localRopeTheta = 10000
            c.ropeTheta = 1_000_000
            c.attentionScale = Float(1 / (self == .gemma3_27b ? 168.0 : 256.0).squareRoot())
            c.embeddingScale = Float(Double(C).squareRoot())
        }
        if self == .phi3mini { c.slidingWindow = 2047 }
        return c
    }
}

extension SyntheticShape {
    /// The shape cut to its first `layers` blocks (all when nil).
    public func config(layers: Int?) throws(SyntheticModelError) -> ModelConfig {
        var c = config
        if let layers {
            guard layers > 0, layers <= c.numLayers else { throw .badLayers(shape: rawValue, layers: layers, available: c.numLayers) }
            c.numLayers = layers
        }
        return c
    }

    /// Bytes `SyntheticModel.make` holds for this shape without building it: NF4 linears with
    /// double quantization (4 bits, one 8-bit code per 64, one fp32 per 256 codes), Q8_0 token
    /// matrices (34 bytes per 32), fp32 norms.
    public func frozenBytes(layers: Int? = nil) throws(SyntheticModelError) -> Int {
        let c = try config(layers: layers)
        func nf4(_ n: Int) -> Int { n / 2 + (n + 63) / 64 + ((n + 63) / 64 + 255) / 256 * 4 + 256 * 4 + 16 }
        let perLayer = c.family.linears.reduce(0) { n, m in
            let (rows, cols) = m.shape(in: c)
            return n + nf4(rows * cols)
        } + c.family.norms.reduce(0) { $0 + $1.size.size(in: c) * 4 }
        let tokens = c.vocabSize * c.hiddenSize / 32 * 34
        return c.numLayers * perLayer + tokens * (c.tieWordEmbeddings ? 1 : 2) + c.hiddenSize * 4
    }
}

public enum SyntheticModelError: Error, Equatable, CustomStringConvertible {
    case badLayers(shape: String, layers: Int, available: Int)

    public var description: String {
        switch self {
        case let .badLayers(shape, layers, available): "--layers \(layers): \(shape) has \(available) blocks (1…\(available))"
        }
    }
}

public enum SyntheticModel {
    /// What `make` reports as it goes.
    public struct Progress: Sendable {
        public var tensor: String
        public var done: Int
        public var total: Int
    }

    /// A `shape` model (cut to `layers` blocks when given) whose linears are `format`
    /// (double-quantized NF4 by default, as QLoRA stores them), embedding and LM head Q8_0,
    /// norms one. Weights ~ uniform with standard deviation 0.02, from `seed`.
    public static func make(_ shape: SyntheticShape, layers: Int? = nil, format: QuantFormat = .nf4, seed: UInt64 = 1,
                            progress: (Progress) -> Void = { _ in }) throws -> DecoderModel {
        try make(config: shape.config(layers: layers), format: format, seed: seed, progress: progress)
    }

    /// The same for any Llama-layout `config` (tests use tiny ones).
    public static func make(config c: ModelConfig, format: QuantFormat = .nf4, seed: UInt64 = 1,
                            progress: (Progress) -> Void = { _ in }) throws -> DecoderModel {
        let total = c.numLayers * c.family.linears.count + (c.tieWordEmbeddings ? 1 : 2)
        var done = 0
        func matrix(_ name: String, _ rows: Int, _ cols: Int, _ f: QuantFormat, _ index: UInt64) throws -> QuantizedMatrix {
            let m = try quantized(rows, cols, f, seed: seed, index: index)
            done += 1
            progress(Progress(tensor: name, done: done, total: total))
            return m
        }
        let ones = [Float](repeating: 1, count: c.hiddenSize)
        var layerWeights: [LayerWeights] = []
        let linears = c.family.linears, shapes = linears.map { $0.shape(in: c) }   // q, k, v, o, gate, up, down
        for l in 0..<c.numLayers {
            // The layer's seven tensors two at a time (one per core): one fp32 tensor per core exists at once.
            let results = ConcurrentResults<QuantizedMatrix>(count: shapes.count)
            DispatchQueue.concurrentPerform(iterations: shapes.count) { i in
                results.set(i, Result { try quantized(shapes[i].rows, shapes[i].cols, format, seed: seed, index: linearIndex(layer: l, i)) })
            }
            let m = try results.values()
            done += shapes.count
            progress(Progress(tensor: "model.layers.\(l)", done: done, total: total))
            layerWeights.append(LayerWeights(linears: zip(linears, m).map { Linear($0, weight: $1) },
                                             norms: c.family.norms.map { Norm(spec: $0, weight: [Float](repeating: 1, count: $0.size.size(in: c))) }))
        }
        let embedding = TokenMatrix.quantized(try matrix("model.embed_tokens", c.vocabSize, c.hiddenSize, .q8_0,
                                                              tokenIndex(c, head: false)))
        let head = c.tieWordEmbeddings ? embedding
            : .quantized(try matrix("lm_head", c.vocabSize, c.hiddenSize, .q8_0, tokenIndex(c, head: true)))
        let weights = ModelWeights(embedding: embedding, layers: layerWeights, finalNorm: ones, lmHead: head)
        // The fp32 tensors were freed on the worker threads' malloc arenas: give the pages back.
        qk_release_free_memory()
        return try DecoderModel(config: c, weights: weights)
    }

    /// Tensor numbers, from which each tensor's values are drawn (seed + number): layer l's
    /// linears (q, k, v, o, gate, up, down) are 7·l + 1 … 7·l + 7, then the embedding, then the
    /// LM head. `SyntheticFolderWriter` draws the same.
    static func linearIndex(layer l: Int, _ i: Int) -> UInt64 { UInt64(7 * l + i + 1) }
    static func tokenIndex(_ c: ModelConfig, head: Bool) -> UInt64 { UInt64(7 * c.numLayers + (head ? 2 : 1)) }

    /// The seed tensor `index` draws its values from.
    static func tensorSeed(_ seed: UInt64, index: UInt64) -> UInt64 { seed &+ index &* 0x9E37_79B9_7F4A_7C15 }

    /// Tensor `index`'s seeded values quantized to `f` (NF4 and FP4 double-quantized): one fp32
    /// tensor at a time per calling thread.
    static func quantized(_ rows: Int, _ cols: Int, _ f: QuantFormat, seed: UInt64, index: UInt64) throws -> QuantizedMatrix {
        let values = randomValues(rows * cols, seed: tensorSeed(seed, index: index))
        return try QuantizedMatrix(quantizing: values, rows: rows, cols: cols, format: f, doubleQuant: f == .nf4 || f == .fp4)
    }

    /// `count` values uniform in ±0.02·√3 (standard deviation 0.02), drawn in parallel
    /// chunks whose seeds derive from `seed`: the same for any thread count.
    static func randomValues(_ count: Int, seed: UInt64) -> [Float] { randomValues(0..<count, seed: seed) }

    /// Values `range` of the stream `randomValues(_:seed:)` draws, without drawing the rest
    /// (a tensor written piece by piece).
    static func randomValues(_ range: Range<Int>, seed: UInt64) -> [Float] {
        var out = [Float](repeating: 0, count: range.count)
        guard !range.isEmpty else { return out }
        let chunk = 1 << 20
        let chunks = (range.lowerBound / chunk)...((range.upperBound - 1) / chunk)
        let bound = 0.02 * 3.0.squareRoot()
        out.withUnsafeMutableBufferPointer { buf in
            let address = UInt(bitPattern: buf.baseAddress!)   // chunks write disjoint ranges
            DispatchQueue.concurrentPerform(iterations: chunks.count) { n in
                let i = chunks.lowerBound + n
                let base = UnsafeMutablePointer<Float>(bitPattern: address)!
                let first = max(range.lowerBound, i * chunk), end = min(range.upperBound, (i + 1) * chunk)
                // SplitMix64 counts by a constant: skipping k draws is one multiply.
                let skipped = UInt64(first - i * chunk) &* 0x9E37_79B9_7F4A_7C15
                var rng = SplitMix64(seed: (seed ^ (UInt64(i) &* 0xD1B5_4A32_D192_ED03)) &+ skipped)
                for j in first..<end {
                    base[j - range.lowerBound] = Float((rng.nextUnitDouble() * 2 - 1) * bound)
                }
            }
        }
        return out
    }
}

/// Slots filled from concurrent iterations, each once.
final class ConcurrentResults<T>: @unchecked Sendable {
    private var slots: [Result<T, any Error>?]
    private let lock = NSLock()

    init(count: Int) { slots = Array(repeating: nil, count: count) }

    func set(_ i: Int, _ r: Result<T, any Error>) {
        lock.lock()
        slots[i] = r
        lock.unlock()
    }

    func values() throws -> [T] { try slots.map { try $0!.get() } }
}
