import Foundation
import Quant

/// A PEFT-layout adapter directory (see AdapterFiles) read whole into memory for merging, each
/// tensor checked against the base it merges into and keyed by the base's Hugging Face name:
///
///   model.layers.N.<path>.weight   A [r, in], B [out, r] from `….lora_A.weight`, `….lora_B.weight`
///   model.layers.N.*_layernorm.weight, model.norm.weight   trained norms [C] that replace the base's:
///                                  those modules_to_save selects (qlora --train-norms: all)
///
/// Read through ModelAdapters and AdapterFiles, so that an adapter merges exactly when it loads.
struct AdapterTensors {
    /// One adapted linear: ΔW[out, in] = s·B·A; with DoRA's magnitude m the merged row j is
    /// m_j·(W_j + ΔW_j)/‖W_j + ΔW_j‖ (PEFT's DoRA merge).
    struct Factors {
        let a: [Float]   // [r, in]
        let b: [Float]   // [out, r]
        let rank: Int
        let scale: Float
        let magnitude: [Float]?

        /// w[rows, in] = W + s·B[rows, r]·A[r, in] (rescaled per row with DoRA), `w` holding
        /// W's `rows` from its start.
        func apply(rows: Range<Int>, into w: inout [Float], cols: Int) throws {
            try addProduct(rows: rows, into: &w, cols: cols)
            guard let magnitude else { return }
            w.withUnsafeMutableBufferPointer { w in
                for (i, j) in rows.enumerated() {
                    let row = w.baseAddress! + i * cols
                    let factor = magnitude[j] / Float(LoRAAdapter.squaredNorm(row, count: cols).squareRoot())
                    for k in 0..<cols { row[k] *= factor }
                }
            }
        }

        /// w[rows, in] += s·B[rows, r]·A[r, in], `w` holding `rows` from its start.
        func addProduct(rows: Range<Int>, into w: inout [Float], cols: Int) throws {
            let r = rank
            try b.withUnsafeBufferPointer { b in
                try a.withUnsafeBufferPointer { a in
                    try w.withUnsafeMutableBufferPointer { w in
                        try ComputeRuntime.parallelSgemm(transposeB: false, m: rows.count, n: cols, k: r, alpha: scale,
                                                         a: b.baseAddress! + rows.lowerBound * r, lda: r, b: a.baseAddress!, ldb: cols,
                                                         beta: 1, c: w.baseAddress!, ldc: cols)
                    }
                }
            }
        }
    }

    let factors: [String: Factors]
    let norms: [String: [Float]]
    /// A reward model's score head, score.weight [1, hidden] (a SEQ_CLS adapter's).
    let score: [Float]?

    /// Base tensors the adapter changes.
    var mergedCount: Int { factors.count + norms.count }

    func touches(_ name: String) -> Bool { factors[name] != nil || norms[name] != nil }

    /// Reads and checks the directory as training and generation do (AdapterFiles: PEFT's
    /// names, the config's targets and layers, every shape and rank, finite values), then keeps
    /// only what the merge needs.
    init(directory: String, model: QuantizedModel) throws {
        let (config, trainsNorms) = try AdapterFiles.config(in: directory)
        let lora = try ModelAdapters(model: try DecoderModel(model), config: config, trainNorms: trainsNorms,
                                     scoreHead: try AdapterFiles.hasScoreHead(in: directory), seed: 0)
        try AdapterFiles.load(into: lora, from: directory)
        score = lora.scoreHead?.values
        factors = Dictionary(uniqueKeysWithValues: lora.adapters.map { l, m, a in
            (m.moduleName(layer: l) + ".weight", Factors(a: a.a.values, b: a.b.values, rank: a.rank, scale: a.scale,
                                                         magnitude: a.magnitude?.values))
        })
        // As the Hugging Face model holds them (the parameters hold what the model computes with).
        norms = Dictionary(uniqueKeysWithValues: try AdapterFiles.savedNorms(of: lora, in: directory).map { p in
            (p.name, lora.family.huggingFaceNorm(fromEffective: p.values))
        })
    }
}
