import Foundation
import Quant

/// `qlora merge --requantize`: folds a LoRA adapter into a new 4-bit base for a further round
/// of QLoRA. Legend: out/in a linear's rows/columns, s the adapter's scale.
///
///   W'[out, in] = dequant(W) + s·B·A      (MergedExport's values, fp32)
///   nf4    → Q(W') in a bitsandbytes folder, as `qlora quantize --format nf4` writes one
///            (block size, double quant and embedding dtype as its options)
///   q4_0   → Q(W') in a GGUF file, as `qlora export --format gguf` writes one (llama.cpp's
///            names and q/k order; embeddings as `embeddings` says, norms F32)
///
/// Requantizing rounds W' again, which may undo part of what the adapter added. Each linear
/// reports, against ‖W'‖ (Frobenius):
///   rounding   ‖Q(W') − W'‖ / ‖W'‖     what the new base loses
///   adapter    ‖s·B·A‖ / ‖W'‖           the change the adapter made (W' − dequant(W))
/// and the totals over all linears take the sums of squares first. Rounding near or above the
/// adapter's size means the new base keeps little of the adapter.
/// Streamed tensor by tensor into `OUT.tmp-<pid>`, renamed when complete.
public enum MergedRequantize {
    public enum Target: String, CaseIterable, Sendable {
        case nf4, q4_0
    }

    public struct Options: Sendable {
        public var adapter: String
        public var target: Target
        /// nf4 only: weights per absmax block.
        public var blockSize: Int
        /// nf4 only: bitsandbytes' compress_statistics.
        public var doubleQuant: Bool
        public var embeddings: Quantizer.EmbeddingStorage
        public var overwrite: Bool

        public init(adapter: String, target: Target, blockSize: Int = 64, doubleQuant: Bool = true,
                    embeddings: Quantizer.EmbeddingStorage = .keep, overwrite: Bool = false) {
            self.adapter = adapter
            self.target = target
            self.blockSize = blockSize
            self.doubleQuant = doubleQuant
            self.embeddings = embeddings
            self.overwrite = overwrite
        }
    }

    /// Sums of squares over one linear, or over all of them.
    public struct Rounding: Sendable, Equatable {
        public var errorSquares = 0.0   // Σ (Q(W') − W')²
        public var weightSquares = 0.0  // Σ W'²
        public var deltaSquares = 0.0   // Σ (W' − dequant(W))²

        public init() {}

        /// ‖Q(W') − W'‖ / ‖W'‖.
        public var relativeError: Double { weightSquares > 0 ? (errorSquares / weightSquares).squareRoot() : 0 }
        /// ‖s·B·A‖ / ‖W'‖.
        public var relativeDelta: Double { weightSquares > 0 ? (deltaSquares / weightSquares).squareRoot() : 0 }

        /// `merged` W', `requantized` Q(W') dequantized, `base` dequant(W), all in one order.
        public init(merged: [Float], requantized: [Float], base: [Float]) {
            add(merged[...], requantized[...], base[...])
        }

        /// The same for W' [rows, cols] against the matrices themselves, dequantized a band of
        /// rows at a time (the sums run in the same order): no full-size copy of Q(W') or W.
        init(merged: [Float], requantized: QuantizedMatrix, base: QuantizedMatrix) {
            let cols = base.cols, band = max(1, (1 << 20) / cols)
            var q = [Float](repeating: 0, count: min(band, base.rows) * cols), w = q
            for first in stride(from: 0, to: base.rows, by: band) {
                let rows = first..<min(first + band, base.rows), n = rows.count * cols
                requantized.dequantize(rows: rows, into: &q)
                base.dequantize(rows: rows, into: &w)
                add(merged[(first * cols)..<(first * cols + n)], q[..<n], w[..<n])
            }
        }

        private mutating func add(_ merged: ArraySlice<Float>, _ requantized: ArraySlice<Float>, _ base: ArraySlice<Float>) {
            for (i, (j, k)) in zip(merged.indices, zip(requantized.indices, base.indices)) {
                let w = Double(merged[i])
                weightSquares += w * w
                errorSquares += (Double(requantized[j]) - w) * (Double(requantized[j]) - w)
                deltaSquares += (w - Double(base[k])) * (w - Double(base[k]))
            }
        }

        static func += (a: inout Rounding, b: Rounding) {
            a.errorSquares += b.errorSquares
            a.weightSquares += b.weightSquares
            a.deltaSquares += b.deltaSquares
        }
    }

    public enum Progress: Sendable {
        /// Tensor `index` of `count` written; `rounding` for the requantized linears.
        case tensor(index: Int, count: Int, name: String, from: String, to: String, merged: Bool, rounding: Rounding?, elapsed: Double)
        case note(String)
    }

    public struct Report: Sendable {
        public var output: String
        public var tensors: Int
        public var merged: Int
        /// Over all linears.
        public var rounding: Rounding
        /// Per linear, by Hugging Face name.
        public var perTensor: [String: Rounding]
        public var outputBytes: Int
        public var seconds: Double
        public var peakRSSBytes: Int
    }

    public static func run(model path: String, output: String, options: Options, progress: (Progress) -> Void) throws -> Report {
        let start = Date()
        StagedOutput.removeStale(for: output).forEach { progress(.note($0)) }
        if !options.overwrite, !MergedExport.isEmptyOrAbsent(output) { throw MergedExportError.outputExists(path: output) }
        let model = try QuantizedModel(path: path)
        let adapter = try AdapterTensors(directory: options.adapter, model: model)
        if adapter.score != nil { throw MergedExportError.rewardModelFormat(adapter: options.adapter, format: "a requantized 4-bit model") }
        var perTensor: [String: Rounding] = [:]
        /// Measures one linear: W' against Q(W') and dequant(W).
        func measure(_ name: String, merged: [Float], requantized: QuantizedMatrix) -> Rounding {
            let r = Rounding(merged: merged, requantized: requantized, base: model.linears[name]!)
            perTensor[name] = r
            return r
        }
        let tensors: Int
        switch options.target {
        case .nf4:
            let plan = MergedExport.tensorPlan(model)
            tensors = plan.count
            try writeBitsandbytes(plan, model: model, adapter: adapter, output: output, options: options, start: start,
                                  measure: measure, progress: progress)
        case .q4_0:
            let tokenType: GGMLType? = switch options.embeddings {
            case .keep: nil
            case .f32: .f32
            case .f16: .f16
            case .bf16: .bf16
            }
            let plan = try GGUFExport.tensorPlan(model, linearType: .q4_0, tokenType: tokenType)
            tensors = plan.count
            try GGUFExport.write(plan, model: model, adapter: adapter, fileType: GGUFExport.fileType(.q4_0), output: output,
                                 note: { progress(.note($0)) },
                                 encodeLinear: { i, values in
                                     let t = plan[i]
                                     let m = try QuantizedMatrix(quantizing: values, rows: t.rows, cols: t.cols, format: .q4_0)
                                     let r = measure(t.hf.name, merged: values, requantized: m)
                                     progress(.tensor(index: i, count: plan.count, name: t.gguf, from: t.storage, to: "Q4_0",
                                                      merged: adapter.touches(t.hf.name), rounding: r, elapsed: Date().timeIntervalSince(start)))
                                     return m.data.array(of: UInt8.self)
                                 },
                                 starting: { i in
                                     let t = plan[i]
                                     guard !t.isLinear else { return }
                                     progress(.tensor(index: i, count: plan.count, name: t.gguf, from: t.storage,
                                                      to: t.kept == nil ? t.type.name : t.type.name + " (kept)",
                                                      merged: adapter.touches(t.hf.name), rounding: nil, elapsed: Date().timeIntervalSince(start)))
                                 })
        }
        var total = Rounding()
        for r in perTensor.values { total += r }
        let bytes = options.target == .q4_0 ? MergedExport.fileSize(output)
            : MergedExport.fileSize((output as NSString).appendingPathComponent("model.safetensors"))
        return Report(output: output, tensors: tensors, merged: adapter.mergedCount, rounding: total, perTensor: perTensor,
                      outputBytes: bytes, seconds: Date().timeIntervalSince(start), peakRSSBytes: Quantizer.peakRSS())
    }

    /// The bitsandbytes folder, through Quantizer's writer with the merged values.
    static func writeBitsandbytes(_ plan: [MergedExport.PlannedTensor], model: QuantizedModel, adapter: AdapterTensors, output: String,
                                  options: Options, start: Date, measure: (String, [Float], QuantizedMatrix) -> Rounding,
                                  progress: (Progress) -> Void) throws {
        let tensors = plan.map { ModelSource.Tensor(name: $0.name, shape: $0.shape, role: TensorNames.role(of: $0.name, family: model.config.family), storage: $0.storage, gguf: nil) }
        let byName = Dictionary(uniqueKeysWithValues: plan.map { ($0.name, $0) })
        let quantizer = Quantizer.Options(format: .nf4, blockSize: options.blockSize, doubleQuant: options.doubleQuant, embeddings: options.embeddings)
        let tmp = StagedOutput.path(for: output)
        try? FileManager.default.removeItem(atPath: tmp)
        var current = (index: 0, count: 0, from: "", to: "")
        do {
            _ = try Quantizer.writeBitsandbytesFolder(
                model.source, tensors: tensors, output: tmp, options: quantizer, start: start,
                load: { try MergedExport.fp32Values(of: byName[$0.name]!, model: model, adapter: adapter) },
                quantized: { t, values, m in
                    progress(.tensor(index: current.index, count: current.count, name: t.name, from: current.from, to: current.to,
                                     merged: adapter.touches(t.name), rounding: measure(t.name, values, m), elapsed: Date().timeIntervalSince(start)))
                },
                progress: { p in
                    guard case let .tensor(index, count, name, from, to, elapsed) = p else { return }
                    current = (index, count, from, to)
                    if !TensorNames.role(of: name, family: model.config.family).isLinear {
                        progress(.tensor(index: index, count: count, name: name, from: from, to: to, merged: adapter.touches(name),
                                         rounding: nil, elapsed: elapsed))
                    }
                })
            try MergedExport.swapIn(tmp, as: output)
        } catch {
            try? FileManager.default.removeItem(atPath: tmp)
            throw error
        }
    }
}
