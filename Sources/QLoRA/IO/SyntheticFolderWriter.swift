import Foundation
import Quant
import QuantKernels

/// `qlora quantize --shape`: a synthetic model (`SyntheticModel.make`'s weights, same seed,
/// same values) written to disk as a bitsandbytes 4-bit folder, streamed tensor by tensor, so
/// a model this machine could never hold in fp32 still gets a file to load, train and export.
/// Legend: L layers, C hidden, V vocab.
///
///   model.layers.{l}.{q,k,v,o,gate,up,down}_proj  NF4, blocks of 64, double-quantized, drawn
///                                                 and quantized a layer at a time (two at once)
///   model.layers.{l}.*_layernorm.weight [C], model.norm.weight [C]   ones
///   model.embed_tokens.weight [V, C], lm_head.weight [V, C]         the Q8_0 values `make`
///       holds, dequantized into `dtype` (F32 keeps them exact), written in pieces of rows
///   config.json                                   transformers' LlamaForCausalLM + bitsandbytes
///
/// No tokenizer is written: the folder has none to give. Memory stays near two fp32 linears,
/// one layer's 4-bit bytes and a 16 MB piece of a token matrix. The folder is written as
/// `<output>.tmp-<pid>` (StagedOutput: the CLI removes it on Ctrl-C, a later run after a kill)
/// and renamed into place when complete.
public enum SyntheticFolderWriter {
    /// Rows of a token matrix drawn, rounded through Q8_0 and written at once: about 4 M values.
    static let pieceValues = 1 << 22

    public static func write(config c: ModelConfig, seed: UInt64, output: String, dtype: SafetensorsDType = .F32,
                             progress: (Quantizer.Progress) -> Void) throws -> Quantizer.Report {
        let start = Date()
        let fm = FileManager.default
        guard !fm.fileExists(atPath: output) else { throw SyntheticFolderError.outputExists(path: output) }
        guard [.F32, .F16, .BF16].contains(dtype) else { throw SyntheticFolderError.unsupportedDType(dtype.rawValue) }
        let tmp = StagedOutput.path(for: output)
        try? fm.removeItem(atPath: tmp)
        try fm.createDirectory(atPath: tmp, withIntermediateDirectories: true)
        do {
            let bytes = try writeTensors(config: c, seed: seed, folder: tmp, dtype: dtype, start: start, progress: progress)
            let options = Quantizer.Options(format: .nf4, blockSize: 64, doubleQuant: true, embeddings: .f32)
            try Quantizer.writeConfig(Quantizer.huggingFaceConfig(c, bos: nil, eos: nil), output: tmp, options: options,
                                      blockSize: 64, dtype: dtype)
            guard rename(tmp, output) == 0 else { throw FileError.cannotOpen(path: output, reason: String(cString: strerror(errno))) }
            return Quantizer.Report(output: output, tensors: c.numLayers * 9 + (c.tieWordEmbeddings ? 2 : 3), outputBytes: bytes,
                                    seconds: Date().timeIntervalSince(start), peakRSSBytes: Quantizer.peakRSS())
        } catch {
            try? fm.removeItem(atPath: tmp)
            throw error
        }
    }

    /// What one tensor of the file is, in the file's order.
    private enum Entry {
        /// Spec `part` of linear `i` (q…down) of layer `layer`.
        case linear(layer: Int, i: Int, part: Int)
        case norm(size: Int)
        case tokens(rows: Int, index: UInt64)
    }

    private static func writeTensors(config c: ModelConfig, seed: UInt64, folder: String, dtype: SafetensorsDType, start: Date,
                                     progress: (Quantizer.Progress) -> Void) throws -> Int {
        let shapes = c.family.linears.map { $0.shape(in: c) }
        var specs: [SafetensorsWriter.TensorSpec] = [], entries: [Entry] = []
        for l in 0..<c.numLayers {
            for (i, m) in c.family.linears.enumerated() {
                let parts = BitsandbytesWeights.specs(name: ModelWeights.Name.layer(l, m.path + ".weight"), rows: shapes[i].rows,
                                                      cols: shapes[i].cols, format: .nf4, blockSize: 64, doubleQuant: true,
                                                      dtype: dtype.torchName)
                specs += parts
                entries += parts.indices.map { Entry.linear(layer: l, i: i, part: $0) }
            }
            for norm in c.family.norms {
                specs.append(.init(name: ModelWeights.Name.layer(l, norm.path + ".weight"), dtype: dtype, shape: [norm.size.size(in: c)]))
                entries.append(.norm(size: norm.size.size(in: c)))
            }
        }
        specs.append(.init(name: ModelWeights.Name.embedding, dtype: dtype, shape: [c.vocabSize, c.hiddenSize]))
        entries.append(.tokens(rows: c.vocabSize, index: SyntheticModel.tokenIndex(c, head: false)))
        if !c.tieWordEmbeddings {
            specs.append(.init(name: ModelWeights.Name.lmHead, dtype: dtype, shape: [c.vocabSize, c.hiddenSize]))
            entries.append(.tokens(rows: c.vocabSize, index: SyntheticModel.tokenIndex(c, head: true)))
        }
        specs.append(.init(name: ModelWeights.Name.finalNorm, dtype: dtype, shape: [c.hiddenSize]))
        entries.append(.norm(size: c.hiddenSize))

        let steps = c.numLayers + (c.tieWordEmbeddings ? 1 : 2)
        var step = 0
        func report(_ name: String, _ to: String) {
            progress(.tensor(index: step, count: steps, name: name, from: "seeded random", to: to, elapsed: Date().timeIntervalSince(start)))
            step += 1
        }
        var layer: (index: Int, parts: [[[UInt8]]])? = nil   // the current layer's linears, as their specs' bytes
        // Norms that compute with weight one (Gemma's files store w of x̂·(1 + w): zero).
        func ones(_ n: Int) -> [UInt8] { Quantizer.encode(c.family.huggingFaceNorm(fromEffective: [Float](repeating: 1, count: n)), as: dtype) }
        var writer = SafetensorsWriter()
        writer.tensors = specs
        let path = (folder as NSString).appendingPathComponent("model.safetensors")
        try writer.write(to: path) { n, write in
            switch entries[n] {
            case let .linear(l, i, part):
                if layer?.index != l {
                    layer = nil
                    report("model.layers.\(l) (7 linears)", "nf4+dq")
                    layer = (l, try quantizeLayer(l, shapes: shapes, seed: seed, dtype: dtype))
                }
                try layer!.parts[i][part].withUnsafeBytes { try write($0) }
            case let .norm(size):
                try ones(size).withUnsafeBytes { try write($0) }
            case let .tokens(rows, index):
                layer = nil
                report(specs[n].name, "q8_0 values as \(dtype.rawValue)")
                let C = c.hiddenSize, pieceRows = max(1, pieceValues / C), seed = SyntheticModel.tensorSeed(seed, index: index)
                for first in stride(from: 0, to: rows, by: pieceRows) {
                    let n = min(pieceRows, rows - first)
                    let values = SyntheticModel.randomValues((first * C)..<((first + n) * C), seed: seed)
                    // Q8_0 blocks lie within a row: rounding a piece of rows rounds them as the whole matrix would.
                    let rounded = try QuantizedMatrix(quantizing: values, rows: n, cols: C, format: .q8_0).dequantize()
                    if dtype == .F32 {
                        try rounded.withUnsafeBytes { try write($0) }
                    } else {
                        try Quantizer.encode(rounded, as: dtype).withUnsafeBytes { try write($0) }
                    }
                }
                qk_release_free_memory()
            }
        }
        return try FileManager.default.attributesOfItem(atPath: path)[.size] as? Int ?? 0
    }

    /// Layer `l`'s seven linears as `SyntheticModel.make` draws them, two at a time (one per
    /// core), each as the bytes of its bitsandbytes entries.
    private static func quantizeLayer(_ l: Int, shapes: [(rows: Int, cols: Int)], seed: UInt64,
                                      dtype: SafetensorsDType) throws -> [[[UInt8]]] {
        let results = ConcurrentResults<[[UInt8]]>(count: shapes.count)
        DispatchQueue.concurrentPerform(iterations: shapes.count) { i in
            results.set(i, Result {
                let m = try SyntheticModel.quantized(shapes[i].rows, shapes[i].cols, .nf4, seed: seed,
                                                     index: SyntheticModel.linearIndex(layer: l, i))
                return BitsandbytesWeights.entries(name: "", matrix: m, dtype: dtype.torchName).map(\.1)
            })
        }
        // The fp32 tensors were freed on the worker threads' malloc arenas: give the pages back.
        qk_release_free_memory()
        return try results.values()
    }
}

public enum SyntheticFolderError: Error, Equatable, CustomStringConvertible {
    case outputExists(path: String)
    case unsupportedDType(String)

    public var description: String {
        switch self {
        case let .outputExists(path): "\(path) exists: remove it or choose another -o (a synthetic folder is written whole, never merged)"
        case let .unsupportedDType(d): "a synthetic folder stores its embeddings and norms as F32, F16 or BF16, not \(d)"
        }
    }
}
