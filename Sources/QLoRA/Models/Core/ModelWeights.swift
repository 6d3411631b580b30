import Foundation
import Quant

/// A decoder's weights taken from a `QuantizedModel` (no copies: the arrays and matrices are
/// shared with it), each block's by its family's table. Legend: V vocab, C hidden.
public struct ModelWeights: Sendable {
    public let embedding: TokenMatrix // [V, C] embed_tokens
    public let layers: [LayerWeights]
    public let finalNorm: [Float]          // [C]
    /// [V, C]: lm_head, or the embedding when the model ties them.
    public let lmHead: TokenMatrix

    /// Hugging Face names of the tensors outside the blocks, and of a block's.
    enum Name {
        static let embedding = "model.embed_tokens.weight"
        static let finalNorm = "model.norm.weight"
        static let lmHead = "lm_head.weight"
        static func layer(_ l: Int, _ suffix: String) -> String { "model.layers.\(l).\(suffix)" }
    }

    /// Weights made elsewhere (synthetic shapes).
    public init(embedding: TokenMatrix, layers: [LayerWeights], finalNorm: [Float], lmHead: TokenMatrix) {
        self.embedding = embedding
        self.layers = layers
        self.finalNorm = finalNorm
        self.lmHead = lmHead
    }

    public init(_ model: QuantizedModel) throws(ModelError) {
        let c = model.config, family = c.family
        func linear(_ name: String, rows: Int, cols: Int) throws(ModelError) -> QuantizedMatrix {
            guard let m = model.linears[name] else { throw .missingTensor(name) }
            guard m.rows == rows, m.cols == cols else { throw .wrongShape(name, expected: [rows, cols], found: [m.rows, m.cols]) }
            return m
        }
        func dense(_ name: String, count: Int) throws(ModelError) -> [Float] {
            guard let d = model.dense[name] else { throw .missingTensor(name) }
            guard d.count == count else { throw .wrongShape(name, expected: [count], found: [d.count]) }
            return d
        }
        // Norms as the model computes with them (GGUF files store that; Gemma's HF files w of x̂·(1 + w)).
        func norm(_ name: String, count: Int) throws(ModelError) -> [Float] {
            let w = try dense(name, count: count)
            return model.source.gguf == nil ? family.effectiveNorm(fromHuggingFace: w) : w
        }
        var layers: [LayerWeights] = []
        for l in 0..<c.numLayers {
            func n(_ suffix: String) -> String { Name.layer(l, suffix) }
            let linears = try family.linears.map { (s) throws(ModelError) -> Linear in
                let (rows, cols) = s.shape(in: c)
                let biasName = n(s.path + ".bias")
                let bias = model.dense[biasName] == nil ? nil : try dense(biasName, count: rows)
                return Linear(s, weight: try linear(n(s.path + ".weight"), rows: rows, cols: cols), bias: bias)
            }
            let norms = try family.norms.map { (s) throws(ModelError) -> Norm in
                Norm(spec: s, weight: try norm(n(s.path + ".weight"), count: s.size.size(in: c)))
            }
            layers.append(LayerWeights(linears: linears, norms: norms))
        }
        self.layers = layers
        func tokens(_ name: String) throws(ModelError) -> TokenMatrix {
            if let m = model.tokenMatrices[name] {
                guard m.rows == c.vocabSize, m.cols == c.hiddenSize else {
                    throw .wrongShape(name, expected: [c.vocabSize, c.hiddenSize], found: [m.rows, m.cols])
                }
                return .quantized(m)
            }
            return .dense(try dense(name, count: c.vocabSize * c.hiddenSize))
        }
        embedding = try tokens(Name.embedding)
        finalNorm = try norm(Name.finalNorm, count: c.hiddenSize)
        lmHead = try c.tieWordEmbeddings ? embedding : tokens(Name.lmHead)
    }
}

/// A [V, C] token matrix — the embedding, or the LM head — in fp32 or in the block format
/// the GGUF stores it in (Q8_0 usually), then read row by row and multiplied by the GEMMs.
public enum TokenMatrix: Sendable {
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

    /// logits[n, V] = x[n, C] · Wᵀ, in `dtype` (the model's compute dtype: the head is the
    /// largest frozen product of a small model's step).
    func forward(_ x: UnsafePointer<Float>, rows n: Int, width C: Int, vocab V: Int,
                 into logits: UnsafeMutablePointer<Float>, dtype: ComputeDType = .fp32) throws {
        switch (self, dtype.effective(tokens: n)) {
        case let (.dense(w), .fp32), let (.dense(w), .int8):
            try w.withUnsafeBufferPointer { (w) throws in
                try ComputeRuntime.parallelSgemm(transposeB: true, m: n, n: V, k: C, a: x, lda: C, b: w.baseAddress!, ldb: C,
                                         beta: 0, c: logits, ldc: V)
            }
        case let (.dense(w), .bf16):
            try w.withUnsafeBufferPointer { (w) throws in
                try ComputeRuntime.bf16Product(weights: w.baseAddress!, rows: V, cols: C, transposeW: true, input: x, tokens: n, out: logits)
            }
        case let (.quantized(m), _):
            try m.forward(UnsafeBufferPointer(start: x, count: n * C), into: UnsafeMutableBufferPointer(start: logits, count: n * V),
                          tokens: n, dtype: dtype.effective(tokens: n))
        }
    }

    /// dx[n, C] (+)= dlogits[n, V] · W, in `dtype`.
    func backward(_ dLogits: UnsafePointer<Float>, rows n: Int, width C: Int, vocab V: Int,
                  into dx: UnsafeMutablePointer<Float>, accumulate: Bool, dtype: ComputeDType = .fp32) throws {
        switch (self, dtype.effective(tokens: n)) {
        case let (.dense(w), .fp32), let (.dense(w), .int8):
            try w.withUnsafeBufferPointer { (w) throws in
                try ComputeRuntime.parallelSgemm(transposeB: false, m: n, n: C, k: V, a: dLogits, lda: V, b: w.baseAddress!, ldb: C,
                                         beta: accumulate ? 1 : 0, c: dx, ldc: C)
            }
        case let (.dense(w), .bf16):
            try w.withUnsafeBufferPointer { (w) throws in
                try ComputeRuntime.bf16Product(weights: w.baseAddress!, rows: V, cols: C, transposeW: false, input: dLogits, tokens: n,
                                               out: dx, accumulate: accumulate)
            }
        case let (.quantized(m), _):
            try m.backward(UnsafeBufferPointer(start: dLogits, count: n * V), into: UnsafeMutableBufferPointer(start: dx, count: n * C),
                           tokens: n, accumulate: accumulate, dtype: dtype.effective(tokens: n))
        }
    }
}

public enum ModelError: Error, Equatable, CustomStringConvertible {
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
