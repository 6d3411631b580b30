import Foundation
import Quant

/// A frozen base ready to train on: every linear weight 4-bit (or 8-bit) as a
/// `QuantizedMatrix`, everything else fp32, all in Hugging Face naming and layout.
///
/// Opens what `qlora quantize` writes, and what users already hold:
/// - bitsandbytes 4-bit folders (nf4/fp4): packed codes stay in the memory map.
/// - GGUF files: linears in any block type — Q4_0, Q4_1, Q5_0, Q5_1, Q8_0 and the K-quants
///   Q2_K … Q6_K of the Q4_K_M files users hold — stay in the memory map, bytes as the file
///   has them (q/k rows are copied back into Hugging Face order, as llama.cpp reorders them);
///   F16/BF16/F32 linears are quantized to Q8_0 at load. `KQuantTarget` keeps the older
///   choice of requantizing the K-quants (`loadFormat(for:kQuants:)`).
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

    /// What the K-quants (and Q5_0, Q5_1) of a GGUF become at load.
    public enum KQuantTarget: String, Codable, Sendable, CaseIterable {
        /// Trained on as the file stores them: no second rounding, no growth (Gemma 3 270M's
        /// Q4_K_M linears: 68.1 MB, 5.43 bits per weight, against 96.2 MB with `q4_1`).
        case asIs = "as-is"
        /// Q2_K, Q3_K, Q4_K requantized to Q4_1 (the same memory, one more rounding: Gemma 3
        /// 270M's GPL-3 perplexity 2.0% above transformers on the exact weights); Q5_0, Q5_1,
        /// Q5_K, Q6_K to Q8_0. What runs that stored no choice were trained on.
        case q4_1
        /// Every K-quant, Q5_0 and Q5_1 requantized to Q8_0 (0.2% there).
        case q8_0
    }

    /// The K-quant target this model was loaded with.
    public let kQuants: KQuantTarget

    public init(path: String, kQuants: KQuantTarget = .asIs) throws {
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
                      let format = QuantFormat(ggml: gt.type), Self.tokenFormats.contains(format), gt.columns % 32 == 0 {
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

    /// Block formats an embedding or LM head is kept in (borrowed from the map); a token
    /// matrix of another type (Q5_0 or a K-quant: Qwen2.5-Coder-0.5B's Q4_K_M has a Q5_0
    /// token_embd) is loaded into `dense` as fp32, as before.
    static let tokenFormats: Set<QuantFormat> = [.q4_0, .q4_1, .q8_0]

    /// The format a GGUF linear weight of `type` is trained on, and whether it is requantized
    /// at load. `asIs`: every block type as it is; F16, BF16 and F32 become Q8_0. `q4_1` (runs
    /// that stored no choice): Q4_0, Q4_1, Q8_0 as they are, the types of up to 4.5 bits
    /// (Q2_K, Q3_K, Q4_K) Q4_1, whose per-block minimum they share, and wider ones (Q5_*,
    /// Q6_K, floats) Q8_0, which loses less than they hold. `q8_0`: all but Q4_0, Q4_1 and
    /// Q8_0 become Q8_0.
    public static func loadFormat(for type: GGMLType, kQuants: KQuantTarget = .asIs) -> (format: QuantFormat, requantized: Bool) {
        guard let stored = QuantFormat(ggml: type) else { return (.q8_0, true) }
        if kQuants == .asIs || [.q4_0, .q4_1, .q8_0].contains(stored) { return (stored, false) }
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
            "\(path): '\(tensor)' is stored as \(storage), not a format qlora trains on (\(QuantFormat.allCases.map(\.rawValue).joined(separator: ", ")))\n"
                + "---> HINT: qlora quantize \(path) --format nf4 -o <folder>"
        }
    }
}
