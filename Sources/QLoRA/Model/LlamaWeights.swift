import Foundation
import Quant

/// The weights of one decoder layer, by role. Linears are 4-bit (or 8-bit) in Hugging Face
/// layout [out, in]; norms and biases fp32. Legend: C hidden, F intermediate, H/Hkv heads,
/// D head dim.
public struct LlamaLayerWeights: Sendable {
    public let q: QuantizedMatrix          // [H·D, C]
    public let k: QuantizedMatrix          // [Hkv·D, C]
    public let v: QuantizedMatrix          // [Hkv·D, C]
    public let o: QuantizedMatrix          // [C, H·D]
    public let gate: QuantizedMatrix       // [F, C]
    public let up: QuantizedMatrix         // [F, C]
    public let down: QuantizedMatrix       // [C, F]
    public let attentionNorm: [Float]      // [C] input_layernorm
    public let mlpNorm: [Float]            // [C] post_attention_layernorm
    /// q/k/v biases (Qwen2): [H·D], [Hkv·D], [Hkv·D]; nil when the model has none.
    public let qBias: [Float]?
    public let kBias: [Float]?
    public let vBias: [Float]?
}

/// A Llama-layout decoder's weights taken from a `QuantizedModel` (no copies: the arrays and
/// matrices are shared with it). Legend: V vocab, C hidden.
public struct LlamaWeights: Sendable {
    public let embedding: LlamaTokenMatrix // [V, C] embed_tokens
    public let layers: [LlamaLayerWeights]
    public let finalNorm: [Float]          // [C]
    /// [V, C]: lm_head, or the embedding when the model ties them.
    public let lmHead: LlamaTokenMatrix

    /// Hugging Face checkpoint names, in one place.
    enum Name {
        static let embedding = "model.embed_tokens.weight"
        static let finalNorm = "model.norm.weight"
        static let lmHead = "lm_head.weight"
        static func layer(_ l: Int, _ suffix: String) -> String { "model.layers.\(l).\(suffix)" }
        static let q = "self_attn.q_proj.weight", k = "self_attn.k_proj.weight", v = "self_attn.v_proj.weight"
        static let o = "self_attn.o_proj.weight"
        static let gate = "mlp.gate_proj.weight", up = "mlp.up_proj.weight", down = "mlp.down_proj.weight"
        static let attentionNorm = "input_layernorm.weight", mlpNorm = "post_attention_layernorm.weight"
        static let qBias = "self_attn.q_proj.bias", kBias = "self_attn.k_proj.bias", vBias = "self_attn.v_proj.bias"
    }

    /// Weights made elsewhere (synthetic shapes).
    public init(embedding: LlamaTokenMatrix, layers: [LlamaLayerWeights], finalNorm: [Float], lmHead: LlamaTokenMatrix) {
        self.embedding = embedding
        self.layers = layers
        self.finalNorm = finalNorm
        self.lmHead = lmHead
    }

    public init(_ model: QuantizedModel) throws(LlamaModelError) {
        let c = model.config
        let qDim = c.numHeads * c.headDim, kvDim = c.numKVHeads * c.headDim
        func linear(_ name: String, rows: Int, cols: Int) throws(LlamaModelError) -> QuantizedMatrix {
            guard let m = model.linears[name] else { throw .missingTensor(name) }
            guard m.rows == rows, m.cols == cols else { throw .wrongShape(name, expected: [rows, cols], found: [m.rows, m.cols]) }
            return m
        }
        func dense(_ name: String, count: Int) throws(LlamaModelError) -> [Float] {
            guard let d = model.dense[name] else { throw .missingTensor(name) }
            guard d.count == count else { throw .wrongShape(name, expected: [count], found: [d.count]) }
            return d
        }
        func bias(_ name: String, count: Int) throws(LlamaModelError) -> [Float]? {
            model.dense[name] == nil ? nil : try dense(name, count: count)
        }
        var layers: [LlamaLayerWeights] = []
        for l in 0..<c.numLayers {
            func n(_ suffix: String) -> String { Name.layer(l, suffix) }
            layers.append(LlamaLayerWeights(
                q: try linear(n(Name.q), rows: qDim, cols: c.hiddenSize),
                k: try linear(n(Name.k), rows: kvDim, cols: c.hiddenSize),
                v: try linear(n(Name.v), rows: kvDim, cols: c.hiddenSize),
                o: try linear(n(Name.o), rows: c.hiddenSize, cols: qDim),
                gate: try linear(n(Name.gate), rows: c.intermediateSize, cols: c.hiddenSize),
                up: try linear(n(Name.up), rows: c.intermediateSize, cols: c.hiddenSize),
                down: try linear(n(Name.down), rows: c.hiddenSize, cols: c.intermediateSize),
                attentionNorm: try dense(n(Name.attentionNorm), count: c.hiddenSize),
                mlpNorm: try dense(n(Name.mlpNorm), count: c.hiddenSize),
                qBias: try bias(n(Name.qBias), count: qDim),
                kBias: try bias(n(Name.kBias), count: kvDim),
                vBias: try bias(n(Name.vBias), count: kvDim)))
        }
        self.layers = layers
        func tokens(_ name: String) throws(LlamaModelError) -> LlamaTokenMatrix {
            if let m = model.tokenMatrices[name] {
                guard m.rows == c.vocabSize, m.cols == c.hiddenSize else {
                    throw .wrongShape(name, expected: [c.vocabSize, c.hiddenSize], found: [m.rows, m.cols])
                }
                return .quantized(m)
            }
            return .dense(try dense(name, count: c.vocabSize * c.hiddenSize))
        }
        embedding = try tokens(Name.embedding)
        finalNorm = try dense(Name.finalNorm, count: c.hiddenSize)
        lmHead = try c.tieWordEmbeddings ? embedding : tokens(Name.lmHead)
    }
}

/// A [V, C] token matrix — the embedding, or the LM head — in fp32 or in the block format
/// the GGUF stores it in (Q8_0 usually), then read row by row and multiplied by the GEMMs.
public enum LlamaTokenMatrix: Sendable {
    case dense([Float])
    case quantized(QuantizedMatrix)

    /// Bytes held: fp32, or the blocks.
    public var byteCount: Int {
        switch self {
        case let .dense(w): w.count * MemoryLayout<Float>.stride
        case let .quantized(m): m.byteCount
        }
    }

    /// out[C] = row `id`.
    func row(_ id: Int, width C: Int, into out: UnsafeMutablePointer<Float>) {
        switch self {
        case let .dense(w):
            w.withUnsafeBufferPointer { e in out.update(from: e.baseAddress! + id * C, count: C) }
        case let .quantized(m):
            var r = [Float](repeating: 0, count: C)
            m.dequantize(rows: id..<(id + 1), into: &r)
            r.withUnsafeBufferPointer { out.update(from: $0.baseAddress!, count: C) }
        }
    }

    /// logits[n, V] = x[n, C] · Wᵀ.
    func forward(_ x: UnsafePointer<Float>, rows n: Int, width C: Int, vocab V: Int,
                 into logits: UnsafeMutablePointer<Float>) throws {
        switch self {
        case let .dense(w):
            try w.withUnsafeBufferPointer { (w) throws in
                try ComputeRuntime.parallelSgemm(transposeB: true, m: n, n: V, k: C, a: x, lda: C, b: w.baseAddress!, ldb: C,
                                         beta: 0, c: logits, ldc: V)
            }
        case let .quantized(m):
            try m.forward(UnsafeBufferPointer(start: x, count: n * C), into: UnsafeMutableBufferPointer(start: logits, count: n * V),
                          tokens: n)
        }
    }

    /// dx[n, C] (+)= dlogits[n, V] · W.
    func backward(_ dLogits: UnsafePointer<Float>, rows n: Int, width C: Int, vocab V: Int,
                  into dx: UnsafeMutablePointer<Float>, accumulate: Bool) throws {
        switch self {
        case let .dense(w):
            try w.withUnsafeBufferPointer { (w) throws in
                try ComputeRuntime.parallelSgemm(transposeB: false, m: n, n: C, k: V, a: dLogits, lda: V, b: w.baseAddress!, ldb: C,
                                         beta: accumulate ? 1 : 0, c: dx, ldc: C)
            }
        case let .quantized(m):
            try m.backward(UnsafeBufferPointer(start: dLogits, count: n * V), into: UnsafeMutableBufferPointer(start: dx, count: n * C),
                           tokens: n, accumulate: accumulate)
        }
    }
}

public enum LlamaModelError: Error, Equatable, CustomStringConvertible {
    case missingTensor(String)
    case wrongShape(String, expected: [Int], found: [Int])
    case unsupportedRopeScaling(type: String, detail: String)
    case tokenOutOfRange(token: Int, position: Int, vocab: Int)
    case labelOutOfRange(label: Int, position: Int, vocab: Int)
    case emptyInput
    case cacheFull(capacity: Int, needed: Int)
    case outOfMemory(String)

    public var description: String {
        switch self {
        case let .missingTensor(name): "tensor '\(name)' is missing"
        case let .wrongShape(name, expected, found): "tensor '\(name)' has shape \(found), expected \(expected)"
        case let .unsupportedRopeScaling(type, detail): "rope_scaling '\(type)' is not supported: \(detail)"
        case let .tokenOutOfRange(token, position, vocab): "token \(token) at position \(position) is outside the vocabulary 0..<\(vocab)"
        case let .labelOutOfRange(label, position, vocab): "label \(label) at position \(position) is neither −100 nor in the vocabulary 0..<\(vocab)"
        case .emptyInput: "no tokens to run"
        case let .cacheFull(capacity, needed): "the KV cache holds \(capacity) positions, \(needed) needed"
        case let .outOfMemory(what): "out of memory: \(what)"
        }
    }
}
