import Foundation
import Quant

/// A frozen base ready to train on: every linear weight 4-bit (or 8-bit) as a
/// `QuantizedMatrix`, everything else fp32, all in Hugging Face naming and layout.
///
/// Opens what `qlora quantize` writes, and what users already hold:
/// - bitsandbytes 4-bit folders (nf4/fp4): packed codes stay in the memory map.
/// - GGUF files: Q4_0, Q4_1 and Q8_0 blocks stay in the memory map (q/k rows are copied back
///   into Hugging Face order, as llama.cpp reorders them); other types — the K-quants of the
///   Q4_K_M files users hold, Q5_0/Q5_1, F16/BF16/F32 — are dequantized at load and
///   requantized to the nearest format the GEMMs take (`loadFormat(for:)`).
/// Plain fp16/bf16 folders are refused with the command that quantizes them.
public final class QuantizedModel: @unchecked Sendable {
    public let path: String
    public let config: ModelConfig
    /// Linear weights by Hugging Face name (`model.layers.0.self_attn.q_proj.weight`).
    public let linears: [String: QuantizedMatrix]
    /// Norms, embeddings, LM head and biases in fp32, by Hugging Face name.
    public let dense: [String: [Float]]
    /// Embedding and LM head matrices a GGUF stores in a block format the GEMMs take
    /// (Q8_0 in the usual files): kept as they are, borrowed from the map, and not in `dense`.
    public let tokenMatrices: [String: QuantizedMatrix]
    /// The opened file or folder (its tokenizer metadata, and the mapping the weights borrow).
    public let source: ModelSource

    /// What the K-quants of a GGUF (Q2_K … Q4_K) are requantized to at load.
    public enum KQuantTarget: String, Codable, Sendable, CaseIterable {
        /// Q4_1: the same memory (4.5–5 bits), one more rounding (Gemma 3 270M: GPL-3
        /// perplexity 2.0% above transformers on the exact weights).
        case q4_1
        /// Q8_0: about twice the memory of those tensors, closest to the file (0.2% there).
        case q8_0
    }

    /// The K-quant target this model was loaded with.
    public let kQuants: KQuantTarget

    public init(path: String, kQuants: KQuantTarget = .q4_1) throws {
        self.kQuants = kQuants
        self.path = path
        let source = try ModelSource(path: path)
        config = source.config
        var linears: [String: QuantizedMatrix] = [:]
        var dense: [String: [Float]] = [:]
        var tokenMatrices: [String: QuantizedMatrix] = [:]
        for t in source.tensors {
            if t.role.isLinear, t.shape.count == 2 {
                linears[t.name] = try Self.linear(t, source: source, kQuants: kQuants)
            } else if t.role == .embedding || t.role == .lmHead, let g = source.gguf, let gt = t.gguf,
                      let format = QuantFormat(ggml: gt.type), gt.columns % 32 == 0 {
                tokenMatrices[t.name] = try QuantizedMatrix(rows: gt.rows, cols: gt.columns, format: format,
                                                            data: ByteStorage(borrowing: g.data(of: gt), owner: g.file),
                                                            scales: .inBlocks)
            } else {
                dense[t.name] = try source.load(t)
            }
        }
        self.linears = linears
        self.dense = dense
        self.tokenMatrices = tokenMatrices
        self.source = source
    }

    private static func linear(_ t: ModelSource.Tensor, source: ModelSource, kQuants: KQuantTarget) throws -> QuantizedMatrix {
        if let folder = source.folder {
            guard let m = try BitsandbytesWeights.read(folder, name: t.name) else {
                throw QuantizedModelError.notQuantized(path: source.path, tensor: t.name, storage: t.storage)
            }
            return m
        }
        guard let g = source.gguf, let gt = t.gguf else {
            throw QuantizedModelError.notQuantized(path: source.path, tensor: t.name, storage: t.storage)
        }
        let (format, requantized) = loadFormat(for: gt.type, kQuants: kQuants)
        if requantized {
            return try QuantizedMatrix(quantizing: try source.load(t), rows: gt.rows, cols: gt.columns, format: format)
        }
        let data = g.data(of: gt)
        let storage: ByteStorage
        if let heads = source.ropeHeads(of: t.name) {
            storage = ByteStorage(copying: ModelSource.unpermuteRows(data, rows: gt.rows, heads: heads))
        } else {
            storage = ByteStorage(borrowing: data, owner: g.file)
        }
        return try QuantizedMatrix(rows: gt.rows, cols: gt.columns, format: format, data: storage, scales: .inBlocks)
    }

    /// The format a GGUF linear weight of `type` is trained on, and whether it is requantized
    /// at load: types of up to 4.5 bits (Q2_K, Q3_K, Q4_K) become `kQuants` (Q4_1 by default,
    /// whose per-block minimum they share); wider ones (Q5_*, Q6_K, 16- and 32-bit floats)
    /// become Q8_0, which loses less than they hold.
    public static func loadFormat(for type: GGMLType, kQuants: KQuantTarget = .q4_1) -> (format: QuantFormat, requantized: Bool) {
        if let kept = QuantFormat(ggml: type) { return (kept, false) }
        switch type {
        case .q2_K, .q3_K, .q4_K: return (kQuants == .q8_0 ? .q8_0 : .q4_1, true)
        default: return (.q8_0, true)
        }
    }

    /// Bytes of the frozen linear weights (codes, blocks and statistics).
    public var linearBytes: Int { linears.values.reduce(0) { $0 + $1.byteCount } }
}

public enum QuantizedModelError: Error, Equatable, CustomStringConvertible {
    case notQuantized(path: String, tensor: String, storage: String)

    public var description: String {
        switch self {
        case let .notQuantized(path, tensor, storage):
            "\(path): '\(tensor)' is stored as \(storage), not a format qlora trains on (nf4, fp4, q4_0, q4_1, q8_0)\n"
                + "---> HINT: qlora quantize \(path) --format nf4 -o <folder>"
        }
    }
}
