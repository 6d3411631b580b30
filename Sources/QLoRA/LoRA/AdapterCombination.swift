import Foundation

/// A weighted combination of LoRA adapters over one base, re-factored into one plain LoRA
/// adapter (what `qlora adapters combine` writes). Per target linear W [out, in]:
///
///   ΔW = Σ_i w_i·s_i·B_i·A_i          A_i [r_i, in], B_i [out, r_i], s_i the adapter's scale;
///                                     an adapter without this linear adds nothing
///   Bs = [w_1·s_1·B_1 | … ] [out, R],  As = [A_1; …] [R, in],  R = Σ r_i,  ΔW = Bs·As
///
/// `.concat`: B' = Bs, A' = As, exact, rank R (every adapter's block, zero where it has no
/// such linear). `.svd(rank: r)`: truncated SVD without forming ΔW: Bs = Qb·Rb and Asᵀ = Qa·Ra
/// (thin QR), the core Rb·Raᵀ [≤R, ≤R] = U·Σ·Vᵀ (Jacobi, Float64), then
///
///   B' = Qb·U_r·√Σ_r [out, r],   A' = √Σ_r·V_rᵀ·Qaᵀ [r, in]
///
/// so ‖ΔW‖² = Σ σ² and ‖ΔW − B'·A'‖² = the dropped σ², exactly. Either way the output has
/// lora_alpha = its rank and no rsLoRA, so its scale is 1 (PEFT's add_weighted_adapter writes
/// the same alpha); its dropout is the first adapter's, its targets the union of all.
public enum AdapterCombination {
    public enum Method: Equatable, Sendable {
        case concat
        case svd(rank: Int)
    }

    /// One linear of the output: ‖ΔW‖_F and ‖ΔW − B'·A'‖_F / ‖ΔW‖_F (0 where ΔW = 0).
    public struct Module: Sendable {
        public let layer: Int
        public let linear: LinearSpec
        public let norm: Double
        public let droppedNorm: Double
        public var relativeError: Double { norm > 0 ? droppedNorm / norm : 0 }
    }

    public struct Result {
        public let adapters: ModelAdapters
        public let modules: [Module]
        /// Over every module together: √(Σ dropped²) / √(Σ ‖ΔW‖²).
        public var relativeError: Double {
            let total = modules.reduce(0) { $0 + $1.norm * $1.norm }, dropped = modules.reduce(0) { $0 + $1.droppedNorm * $1.droppedNorm }
            return total > 0 ? (dropped / total).squareRoot() : 0
        }
    }

    /// Combines `inputs` (named, for messages; all loaded over `base`) with their weights.
    public static func combine(_ inputs: [(name: String, adapters: ModelAdapters, weight: Double)], base: DecoderModel,
                               method: Method) throws -> Result {
        precondition(!inputs.isEmpty, "nothing to combine")
        for input in inputs {
            guard input.adapters.layers.count == base.config.numLayers else {
                throw AdapterStackError.differentBase(name: input.name, blocks: input.adapters.layers.count, expected: base.config.numLayers)
            }
            guard !input.adapters.trainsNorms else { throw AdapterCombinationError.trainedNorms(name: input.name) }
            guard !input.adapters.config.useDoRA else { throw AdapterCombinationError.dora(name: input.name) }
        }
        let rank: Int
        switch method {
        case .concat: rank = inputs.reduce(0) { $0 + $1.adapters.config.rank }
        case let .svd(r):
            guard r > 0 else { throw AdapterCombinationError.badRank(r) }
            rank = r
        }
        let modules = Set(inputs.flatMap { $0.adapters.adapters.map { ModuleKey(layer: $0.layer, linear: $0.linear) } })
        let union = targets(of: modules, layers: base.config.numLayers, order: base.config.family.linears)
        let config = LoRAConfig(rank: rank, alpha: Float(rank), dropout: inputs[0].adapters.config.dropout,
                                targets: union.targets, layerIndices: union.layers)
        let out = try ModelAdapters(model: base, config: config, seed: 0)
        precondition(out.adapters.count == modules.count, "the union of targets selects \(out.adapters.count) linears, not \(modules.count)")
        var reports: [Module] = []
        for (l, m, target) in out.adapters {
            let parts = inputs.compactMap { i in i.adapters.layers[l].adapters[m].map { (adapter: $0, weight: i.weight) } }
            let (b, a, norm, dropped) = switch method {
            case .concat: concatenated(parts, out: target.outFeatures, in: target.inFeatures, inputs: inputs.map(\.adapters), layer: l, linear: m)
            case let .svd(r): truncated(parts, rank: r, out: target.outFeatures, in: target.inFeatures)
            }
            target.b.setValues(b.values.map(Float.init))
            target.a.setValues(a.values.map(Float.init))
            reports.append(Module(layer: l, linear: m, norm: norm, droppedNorm: dropped))
        }
        return Result(adapters: out, modules: reports)
    }

    /// ‖ΔW‖_F = ‖s·B·A‖_F of every adapted linear of `lora`, what `adapters info` prints;
    /// trained norms, which combine refuses, are left aside.
    public static func deltaNorms(of lora: ModelAdapters) -> [Module] {
        lora.adapters.map { l, m, a in
            let norm = concatenated([(a, 1)], out: a.outFeatures, in: a.inFeatures, inputs: [lora], layer: l, linear: m).2
            return Module(layer: l, linear: m, norm: norm, droppedNorm: 0)
        }
    }

    struct ModuleKey: Hashable { let layer: Int; let linear: LinearSpec }

    /// Bs [out, R] = [w_i·s_i·B_i | …] and As [R, in] = [A_i; …] over `parts`, in Float64.
    static func stacked(_ parts: [(adapter: LoRAAdapter, weight: Double)], out: Int, in n: Int) -> (b: Matrix64, a: Matrix64) {
        let R = parts.reduce(0) { $0 + $1.adapter.rank }
        var b = Matrix64(rows: out, cols: R), a = Matrix64(rows: R, cols: n)
        var c0 = 0
        for (adapter, w) in parts {
            let r = adapter.rank, s = w * Double(adapter.scale), bv = adapter.b.values, av = adapter.a.values
            for i in 0..<out { for j in 0..<r { b[i, c0 + j] = s * Double(bv[i * r + j]) } }
            for j in 0..<r { for k in 0..<n { a[c0 + j, k] = Double(av[j * n + k]) } }
            c0 += r
        }
        return (b, a)
    }

    /// Every input's block in input order (zero for inputs without this linear): the output's
    /// layout is the same in every linear. ‖ΔW‖ from the QR core; nothing is dropped.
    static func concatenated(_ parts: [(adapter: LoRAAdapter, weight: Double)], out: Int, in n: Int, inputs: [ModelAdapters],
                             layer l: Int, linear m: LinearSpec) -> (Matrix64, Matrix64, Double, Double) {
        let R = inputs.reduce(0) { $0 + $1.config.rank }
        var b = Matrix64(rows: out, cols: R), a = Matrix64(rows: R, cols: n)
        var c0 = 0
        for input in inputs {
            let r = input.config.rank
            if let adapter = input.layers[l].adapters[m], let w = parts.first(where: { $0.adapter === adapter })?.weight {
                let (bi, ai) = stacked([(adapter, w)], out: out, in: n)
                for i in 0..<out { for j in 0..<r { b[i, c0 + j] = bi[i, j] } }
                for j in 0..<r { for k in 0..<n { a[c0 + j, k] = ai[j, k] } }
            }
            c0 += r
        }
        let core = b.householderQR().r.multiplied(by: a.transposed.householderQR().r.transposed)
        return (b, a, core.frobeniusNorm, 0)   // ‖Qb·core·Qaᵀ‖ = ‖core‖
    }

    /// The rank-r truncated SVD of Bs·As, split √σ to each side, zero-padded to r columns/rows.
    static func truncated(_ parts: [(adapter: LoRAAdapter, weight: Double)], rank r: Int, out: Int, in n: Int)
        -> (Matrix64, Matrix64, Double, Double) {
        let (bs, as_) = stacked(parts, out: out, in: n)
        let (qb, rb) = bs.householderQR(), (qa, ra) = as_.transposed.householderQR()
        let (u, sigma, v) = rb.multiplied(by: ra.transposed).jacobiSVD()
        let kept = min(r, sigma.count)
        var left = Matrix64(rows: u.rows, cols: r), right = Matrix64(rows: v.rows, cols: r)   // U_r·√Σ_r, V_r·√Σ_r
        for j in 0..<kept {
            let root = sigma[j].squareRoot()
            for i in 0..<u.rows { left[i, j] = u[i, j] * root }
            for i in 0..<v.rows { right[i, j] = v[i, j] * root }
        }
        let norm = sigma.reduce(0) { $0 + $1 * $1 }.squareRoot()
        let dropped = sigma.dropFirst(kept).reduce(0) { $0 + $1 * $1 }.squareRoot()
        return (qb.multiplied(by: left), qa.multiplied(by: right).transposed, norm, dropped)
    }

    /// The output's targets for a set of linears: plain names when every block has the same
    /// linears, else a pattern of the full module names restricted to their blocks (written as
    /// the list of module names, which PEFT loads).
    static func targets(of modules: Set<ModuleKey>, layers: Int, order: [LinearSpec]) -> (targets: LoRATargets, layers: [Int]?) {
        let linears = order.filter { m in modules.contains { $0.linear == m } }
        if modules.count == linears.count * layers { return (.names(linears.map(\.name)), nil) }
        let sorted = modules.sorted { ($0.layer, order.firstIndex(of: $0.linear)!) < ($1.layer, order.firstIndex(of: $1.linear)!) }
        let pattern = sorted.map { NSRegularExpression.escapedPattern(for: $0.linear.moduleName(layer: $0.layer)) }.joined(separator: "|")
        return (.regex(pattern), Array(Set(modules.map(\.layer))).sorted())
    }
}

public enum AdapterCombinationError: Error, Equatable, CustomStringConvertible {
    case trainedNorms(name: String)
    case dora(name: String)
    case badRank(Int)

    public var description: String {
        switch self {
        case let .trainedNorms(name): "adapter '\(name)' trains RMSNorm weights (modules_to_save): norms replace the base's "
            + "rather than add to it, so they have no weighted sum; combine adapters without trained norms"
        case let .dora(name): "adapter '\(name)' is a DoRA adapter: its rows are rescaled by a magnitude over the norm of the "
            + "adapted weight, which is not a sum of low-rank terms (PEFT's add_weighted_adapter combines A and B and starts the magnitude afresh, dropping the trained one); merge it instead (qlora merge)"
        case let .badRank(r): "--rank must be positive, got \(r)"
        }
    }
}
