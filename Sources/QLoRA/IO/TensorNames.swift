import Foundation

/// Checkpoint names, Hugging Face (`model.layers.3.self_attn.q_proj.weight`) ↔ GGUF
/// (`blk.3.attn_q.weight`), from each family's table (`ModelFamily.blockTensors`), and what each tensor is.
public enum TensorRole: String, Codable, Sendable {
    case embedding, lmHead, norm, attentionProjection, mlpProjection, bias, other

    /// A linear layer's weight, which qlora keeps frozen in 4 bits.
    public var isLinear: Bool { self == .attentionProjection || self == .mlpProjection }
}

public enum TensorNames {
    /// The Hugging Face name of a GGUF tensor of a `family` model, or nil for names outside its layout.
    public static func huggingFace(fromGGUF name: String, family: ModelFamily) -> String? {
        if let g = globalTensors.first(where: { $0.gguf == name }) { return g.hf }
        guard let (layer, rest) = splitBlock(name, prefix: "blk."),
              let pair = family.blockTensors.first(where: { $0.gguf == rest }) else { return nil }
        return "model.layers.\(layer).\(pair.hf)"
    }

    /// The GGUF name of a Hugging Face tensor of a `family` model, or nil.
    public static func gguf(fromHuggingFace name: String, family: ModelFamily) -> String? {
        if let g = globalTensors.first(where: { $0.hf == name }) { return g.gguf }
        guard let (layer, rest) = splitBlock(name, prefix: "model.layers."),
              let pair = family.blockTensors.first(where: { $0.hf == rest }) else { return nil }
        return "blk.\(layer).\(pair.gguf)"
    }

    /// What a tensor (either naming) of a `family` model is.
    public static func role(of name: String, family: ModelFamily) -> TensorRole {
        if let g = globalTensors.first(where: { $0.gguf == name || $0.hf == name }) { return g.role }
        for prefix in ["blk.", "model.layers."] {
            if let (_, rest) = splitBlock(name, prefix: prefix),
               let pair = family.blockTensors.first(where: { $0.gguf == rest || $0.hf == rest }) {
                return pair.role
            }
        }
        return .other
    }

    private static func splitBlock(_ name: String, prefix: String) -> (Int, String)? {
        guard name.hasPrefix(prefix) else { return nil }
        let rest = name.dropFirst(prefix.count)
        guard let dot = rest.firstIndex(of: "."), let layer = Int(rest[..<dot]) else { return nil }
        return (layer, String(rest[rest.index(after: dot)...]))
    }

    /// llama.cpp's converter reorders the rows of q_proj and k_proj within each head (rotary
    /// pairs interleaved instead of split in halves). For head h with D rows, GGUF row
    /// h·D + 2i + j holds Hugging Face row h·D + j·D/2 + i (i < D/2, j ∈ {0, 1}).
    /// Returns, for each GGUF row, the Hugging Face row it came from.
    public static func ropePermutation(rows: Int, heads: Int) -> [Int] {
        let d = rows / heads, half = d / 2
        var perm = [Int](repeating: 0, count: rows)
        for h in 0..<heads {
            for i in 0..<half {
                for j in 0..<2 { perm[h * d + 2 * i + j] = h * d + j * half + i }
            }
        }
        return perm
    }
}
