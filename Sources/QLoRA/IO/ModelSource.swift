import Foundation
import Quant

/// A model to read tensor by tensor, whatever its container, in Hugging Face naming and
/// layout: GGUF files (names mapped, q/k rows put back in Hugging Face order) and Hugging Face
/// folders.
public final class ModelSource: @unchecked Sendable {
    public struct Tensor: Sendable {
        /// Hugging Face name.
        public let name: String
        /// PyTorch order: [out, in] for a weight.
        public let shape: [Int]
        public let role: TensorRole
        /// How the source stores it: "Q4_1", "BF16", ...
        public let storage: String
        /// The GGUF tensor, when the source is a GGUF file.
        public let gguf: GGUFTensor?
        public var count: Int { shape.reduce(1, *) }
    }

    public let path: String
    public let config: ModelConfig
    public let tensors: [Tensor]
    public let gguf: GGUFFile?
    public let folder: HuggingFaceFolder?

    public init(path: String) throws {
        self.path = path
        var isDir: ObjCBool = false
        guard FileManager.default.fileExists(atPath: path, isDirectory: &isDir) else {
            throw FileError.cannotOpen(path: path, reason: "no such file or folder")
        }
        if isDir.boolValue {
            let f = try HuggingFaceFolder(path: path)
            folder = f
            gguf = nil
            config = f.config
            tensors = f.tensors.filter { !$0.tensor.name.contains(".weight.") }.map { _, t in
                Tensor(name: t.name, shape: t.shape, role: TensorNames.role(of: t.name, family: f.config.family), storage: t.dtype.rawValue, gguf: nil)
            }
        } else {
            let g = try GGUFFile(path: path)
            gguf = g
            folder = nil
            let config = try ModelConfig(gguf: g)
            self.config = config
            tensors = try g.tensors.map { t in
                guard let name = TensorNames.huggingFace(fromGGUF: t.name, family: config.family) else {
                    throw ModelSourceError.unknownTensor(path: path, name: t.name, family: config.family.name)
                }
                return Tensor(name: name, shape: t.shape, role: TensorNames.role(of: name, family: config.family), storage: t.type.name,
                              gguf: t)
            }
        }
    }

    /// A tensor in fp32, Hugging Face layout.
    public func load(_ t: Tensor) throws -> [Float] {
        if let g = gguf, let gt = t.gguf {
            let values = try g.dequantize(gt)
            g.file.release(offset: gt.offset, count: gt.byteCount)
            if let heads = ropeHeads(of: t.name) { return Self.unpermuteRows(values, rows: t.shape[0], heads: heads) }
            return values
        }
        guard let folder, let (file, st) = folder.tensor(t.name) else { throw ModelSourceError.unknownTensor(path: path, name: t.name, family: config.family.name) }
        if let m = try BitsandbytesWeights.read(folder, name: t.name) { return m.dequantize() }
        let values = try file.floats(st)
        file.file.release(offset: st.offset, count: st.byteCount)
        return values
    }

    /// llama.cpp's converter permutes q and k rows of some families (Llama, Mistral) for its
    /// rotary layout; the heads to undo it with, or nil when `name` was not permuted.
    func ropeHeads(of name: String) -> Int? {
        guard gguf != nil else { return nil }
        return Self.ropeHeads(of: name, config: config)
    }

    /// The heads a GGUF of `config`'s family permutes `name`'s rows by (Hugging Face name), or nil.
    static func ropeHeads(of name: String, config: ModelConfig) -> Int? {
        guard config.family.ggufPermutesQK else { return nil }
        if name.hasSuffix("self_attn.q_proj.weight") || name.hasSuffix("self_attn.q_proj.bias") { return config.numHeads }
        if name.hasSuffix("self_attn.k_proj.weight") || name.hasSuffix("self_attn.k_proj.bias") { return config.numKVHeads }
        return nil
    }

    /// Rows of a Hugging Face q/k tensor in GGUF order (the inverse of `unpermuteRows`): fp32
    /// values, or the raw bytes of whole-row blocks.
    static func permuteRows<T: BitwiseCopyable & Numeric>(_ values: [T], rows: Int, heads: Int) -> [T] {
        reorderRows(values, rows: rows, heads: heads, toGGUF: true)
    }

    /// Rows of a GGUF q/k tensor back in Hugging Face order: fp32 values, or the raw bytes of
    /// whole-row ggml blocks.
    static func unpermuteRows<T: BitwiseCopyable & Numeric>(_ values: some RandomAccessCollection<T>, rows: Int, heads: Int) -> [T] {
        reorderRows(Array(values), rows: rows, heads: heads, toGGUF: false)
    }

    /// GGUF row g holds Hugging Face row `ropePermutation[g]`; moves whole rows one way or the other.
    private static func reorderRows<T: BitwiseCopyable & Numeric>(_ values: [T], rows: Int, heads: Int, toGGUF: Bool) -> [T] {
        let cols = values.count / rows
        var out = [T](repeating: 0, count: values.count)
        for (ggufRow, hfRow) in TensorNames.ropePermutation(rows: rows, heads: heads).enumerated() {
            let (to, from) = toGGUF ? (ggufRow, hfRow) : (hfRow, ggufRow)
            out.replaceSubrange((to * cols)..<((to + 1) * cols), with: values[(from * cols)..<((from + 1) * cols)])
        }
        return out
    }
}

public enum ModelSourceError: Error, Equatable, CustomStringConvertible {
    case unknownTensor(path: String, name: String, family: String)

    public var description: String {
        switch self {
        case let .unknownTensor(path, name, family): "\(path): tensor '\(name)' is not part of the \(family) layout qlora knows"
        }
    }
}
