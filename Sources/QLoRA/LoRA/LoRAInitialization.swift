import Foundation
import Quant
import QuantKernels

/// How adapters start, by PEFT's `init_lora_weights` names. Legend: W [out, in] a target
/// linear's weight, r the rank, s the scale, k = min(out, in).
///
///   default       A Kaiming-uniform (bound 1/√in), B = 0 (PEFT's `True`)
///   gaussian      A ~ N(0, 1/r²) (std 1/r, as PEFT draws it), B = 0
///   pissa         W = U·diag(σ)·Vᵀ (thin SVD, LAPACK's dgesdd in Float64): B = U_r·diag(√(σ_r/s)),
///                 A = diag(√(σ_r/s))·V_rᵀ, so s·B·A is W's best rank-r part; the base becomes
///                 W − s·B·A
///   pissa_niter_K the same from a randomized SVD (torch.svd_lowrank's algorithm: a Gaussian
///                 [in, r] sketch, K power iterations with QR between, an exact SVD of Qᵀ·W)
///   olora         W = Q·R (Householder QR): B = Q[:, :r], A = R[:r, :]; the base W − s·B·A
///   loftq         LoftQ (Li et al. 2023) as PEFT's loftq_init: Q₁ = NF4(W); (B, A) the rank-r
///                 SVD of W − Q₁; then, each further iteration, Q_t = NF4(W − s·B·A) and (B, A)
///                 from W − Q_t; the base is the last Q. Unlike PEFT's, whose L·R approximates
///                 W − Q and is then used times s, A and B carry √(1/s) each, so Q + s·B·A ≈ W
///                 for any lora_alpha (PEFT's is exact only when s = 1).
///
/// The three that change the base are prepared before a run (`prepare`): the new base is written
/// as a bitsandbytes NF4 folder (blocks of 64, double quantization, as `qlora quantize` writes one)
/// and the adapter that goes with it as a PEFT folder; the run then trains on them. From a 4-bit
/// base, W is its dequantized weight and the residual is requantized (QPiSSA); from a 16/32-bit
/// Hugging Face folder W is the weight itself (what LoftQ is for).
public enum LoRAInitialization: Equatable, Sendable, CustomStringConvertible {
    case kaiming
    case gaussian
    case pissa
    case pissaNiter(Int)
    case olora
    case loftq

    /// PEFT's names: true/default, gaussian, pissa, pissa_niter_K, olora, loftq.
    public init(parsing text: String) throws(LoRAInitializationError) {
        let t = text.trimmingCharacters(in: .whitespaces).lowercased()
        switch t {
        case "true", "default", "kaiming": self = .kaiming
        case "gaussian": self = .gaussian
        case "pissa": self = .pissa
        case "olora": self = .olora
        case "loftq": self = .loftq
        default:
            if t.hasPrefix("pissa_niter_"), let k = Int(t.dropFirst("pissa_niter_".count)), k >= 0 { self = .pissaNiter(k); return }
            throw .unknown(text)
        }
    }

    public var description: String {
        switch self {
        case .kaiming: "default"
        case .gaussian: "gaussian"
        case .pissa: "pissa"
        case let .pissaNiter(k): "pissa_niter_\(k)"
        case .olora: "olora"
        case .loftq: "loftq"
        }
    }

    /// Whether A and B come from W, leaving a new base to train on.
    public var changesBase: Bool {
        switch self {
        case .kaiming, .gaussian: false
        case .pissa, .pissaNiter, .olora, .loftq: true
        }
    }

    // MARK: factors of one weight

    /// A [r, in] and B [out, r] from W [out, in] (row-major), and the values the new base
    /// quantizes: W − s·B·A (PiSSA, OLoRA), or LoftQ's last residual. `quantize` gives what the
    /// base's quantizer makes of values (LoftQ only); `rng` draws PiSSA's random sketch.
    static func factors(_ method: LoRAInitialization, w: [Float], rows: Int, cols: Int, rank r: Int, scale s: Float,
                        loftqIterations: Int = 1, rng: inout SplitMix64,
                        quantize: ([Float]) throws -> [Float] = { $0 }) throws -> (a: [Float], b: [Float], base: [Float]) {
        guard r <= min(rows, cols) else { throw LoRAInitializationError.rankTooLarge(r, rows: rows, cols: cols) }
        let a: [Float], b: [Float]
        switch method {
        case .kaiming, .gaussian:
            preconditionFailure("\(method) takes nothing from W")
        case .pissa:
            (a, b) = split(try svd(w.map(Double.init), rows: rows, cols: cols, rank: r), rows: rows, cols: cols, rank: r, scale: s)
        case let .pissaNiter(k):
            (a, b) = split(try randomizedSVD(w.map(Double.init), rows: rows, cols: cols, rank: r, iterations: k, rng: &rng),
                           rows: rows, cols: cols, rank: r, scale: s)
        case .olora:
            let (q, rTop) = try qr(w.map(Double.init), rows: rows, cols: cols, rank: r)
            (a, b) = (rTop.map(Float.init), q.map(Float.init))
        case .loftq:
            var residualBase = w, factors: (a: [Float], b: [Float]) = ([], [])
            for t in 0..<max(loftqIterations, 1) {
                let q = try quantize(residualBase)
                factors = split(try svd(zip(w, q).map { Double($0) - Double($1) }, rows: rows, cols: cols, rank: r),
                                rows: rows, cols: cols, rank: r, scale: s)
                if t + 1 < max(loftqIterations, 1) {
                    residualBase = subtractProduct(w, a: factors.a, b: factors.b, rows: rows, cols: cols, rank: r, scale: s)
                }
            }
            return (factors.a, factors.b, residualBase)
        }
        return (a, b, subtractProduct(w, a: a, b: b, rows: rows, cols: cols, rank: r, scale: s))
    }

    /// A rank-r SVD split evenly between the factors, s taken out: B = U·diag(√(σ/s)) [rows, r],
    /// A = diag(√(σ/s))·Vᵀ [r, cols], so s·B·A = U·diag(σ)·Vᵀ.
    static func split(_ svd: (u: [Double], sigma: [Double], vt: [Double]), rows: Int, cols: Int, rank r: Int,
                      scale s: Float) -> (a: [Float], b: [Float]) {
        var a = [Float](repeating: 0, count: r * cols), b = [Float](repeating: 0, count: rows * r)
        for c in 0..<r {
            let g = (svd.sigma[c] / Double(s)).squareRoot()
            for j in 0..<rows { b[j * r + c] = Float(svd.u[j * r + c] * g) }
            for i in 0..<cols { a[c * cols + i] = Float(svd.vt[c * cols + i] * g) }
        }
        return (a, b)
    }

    /// W − s·B·A in fp32 (each sum in Float64, rounded once).
    static func subtractProduct(_ w: [Float], a: [Float], b: [Float], rows: Int, cols: Int, rank r: Int, scale s: Float) -> [Float] {
        var out = w
        out.withUnsafeMutableBufferPointer { o in
            for j in 0..<rows {
                for i in 0..<cols {
                    var d = 0.0
                    for c in 0..<r { d += Double(b[j * r + c]) * Double(a[c * cols + i]) }
                    o[j * cols + i] = Float(Double(w[j * cols + i]) - Double(s) * d)
                }
            }
        }
        return out
    }

    // MARK: linear algebra (Float64, row-major, LAPACK through OpenBLAS)

    /// The leading `rank` singular triplets of W [rows, cols]: u [rows, rank], σ [rank] descending,
    /// vt [rank, cols]. dgesdd on Wᵀ column-major, which is W row-major as it lies.
    static func svd(_ w: [Double], rows: Int, cols: Int, rank r: Int) throws -> (u: [Double], sigma: [Double], vt: [Double]) {
        _ = try ComputeRuntime.prepare()
        let k = min(rows, cols)
        var a = w, sigma = [Double](repeating: 0, count: k)
        var uT = [Double](repeating: 0, count: cols * k), vT = [Double](repeating: 0, count: k * rows)
        // Column-major: Wᵀ [cols, rows] = U' [cols, k]·diag(σ)·VT' [k, rows], so W = VT'ᵀ·diag(σ)·U'ᵀ:
        // VT' read row-major is [rows, k] = W's U, U' read row-major is [k, cols] = W's Vᵀ.
        ComputeRuntime.setBLASThreads(ComputeRuntime.defaultThreads)
        defer { ComputeRuntime.setBLASThreads(1) }
        let info = qk_lapack_dgesdd(Int32(cols), Int32(rows), &a, &sigma, &uT, &vT)
        guard info == 0 else { throw LoRAInitializationError.lapack("dgesdd", Int(info)) }
        var u = [Double](repeating: 0, count: rows * r)
        for j in 0..<rows { for c in 0..<r { u[j * r + c] = vT[j * k + c] } }
        return (u, Array(sigma[0..<r]), Array(uT[0..<(r * cols)]))
    }

    /// W [rows, cols] = Q·R: Q's first `rank` columns [rows, rank] and R's first rows [rank, cols],
    /// row-major (LAPACK's dgeqrf/dorgqr, so R's diagonal has LAPACK's signs, as torch.linalg.qr's).
    static func qr(_ w: [Double], rows: Int, cols: Int, rank r: Int) throws -> (q: [Double], r: [Double]) {
        _ = try ComputeRuntime.prepare()
        var a = [Double](repeating: 0, count: rows * cols)
        for j in 0..<rows { for i in 0..<cols { a[i * rows + j] = w[j * cols + i] } }   // column-major copy
        var q = [Double](repeating: 0, count: rows * r), rTop = [Double](repeating: 0, count: r * cols)
        ComputeRuntime.setBLASThreads(ComputeRuntime.defaultThreads)
        defer { ComputeRuntime.setBLASThreads(1) }
        let info = qk_lapack_qr(Int32(rows), Int32(cols), Int32(r), &a, &q, &rTop)
        guard info == 0 else { throw LoRAInitializationError.lapack("dgeqrf/dorgqr", Int(info)) }
        var qRow = [Double](repeating: 0, count: rows * r), rRow = [Double](repeating: 0, count: r * cols)
        for j in 0..<rows { for c in 0..<r { qRow[j * r + c] = q[c * rows + j] } }
        for c in 0..<r { for i in 0..<cols { rRow[c * cols + i] = rTop[i * r + c] } }
        return (qRow, rRow)
    }

    /// torch.svd_lowrank(W, q: rank, niter: iterations)'s algorithm: Ω [cols, rank] Gaussian,
    /// Q = orth(W·Ω), then `iterations` times Q = orth(W·orth(Wᵀ·Q)); Bm = Qᵀ·W [rank, cols] =
    /// Ub·diag(σ)·Vᵀ, U = Q·Ub.
    static func randomizedSVD(_ w: [Double], rows: Int, cols: Int, rank r: Int, iterations: Int,
                              rng: inout SplitMix64) throws -> (u: [Double], sigma: [Double], vt: [Double]) {
        let omega = Matrix64(rows: cols, cols: r, values: (0..<(cols * r)).map { _ in rng.nextNormal() })
        let W = Matrix64(rows: rows, cols: cols, values: w), Wt = W.transposed
        func orth(_ x: Matrix64) throws -> Matrix64 { Matrix64(rows: x.rows, cols: r, values: try qr(x.values, rows: x.rows, cols: r, rank: r).q) }
        var q = try orth(W.multiplied(by: omega))
        for _ in 0..<iterations { q = try orth(W.multiplied(by: try orth(Wt.multiplied(by: q)))) }
        let (ub, sigma, vt) = try svd(q.transposed.multiplied(by: W).values, rows: r, cols: cols, rank: r)
        return (q.multiplied(by: Matrix64(rows: r, cols: r, values: ub)).values, sigma, vt)
    }
}

public enum LoRAInitializationError: Error, Equatable, CustomStringConvertible {
    case unknown(String)
    case rankTooLarge(Int, rows: Int, cols: Int)
    case lapack(String, Int)
    case loftqIterations(Int)

    public var description: String {
        switch self {
        case let .unknown(t): "--init-lora-weights '\(t)': use default, gaussian, pissa, pissa_niter_K (K ≥ 0), olora or loftq"
        case let .rankTooLarge(r, rows, cols): "rank \(r) is larger than a [\(rows), \(cols)] weight's \(min(rows, cols)) singular values"
        case let .lapack(routine, info): info == Int(QK_LAPACK_MISSING)
            ? "the loaded OpenBLAS has no LAPACK (\(routine)), which SVD and QR initializations need"
            : "LAPACK's \(routine) failed (info \(info))"
        case let .loftqIterations(n): "--loftq-iter must be at least 1, got \(n)"
        }
    }
}

// MARK: a run's new base and starting adapter

extension LoRAInitialization {
    /// What `prepare` wrote, and how well each adapted linear starts.
    public struct Prepared: Sendable {
        /// The new base (a bitsandbytes NF4 folder) and the adapter that goes with it.
        public let base: String
        public let adapter: String
        /// Per adapted linear (Hugging Face name): ‖W − (Q + s·B·A)‖/‖W‖ with this initialization,
        /// and ‖W − Q(W)‖/‖W‖ of plain QLoRA (W quantized as it is, B = 0).
        public let errors: [String: (initialized: Double, plain: Double)]
        public let seconds: Double

        /// Over every adapted linear (sums of squares first).
        public var totals: (initialized: Double, plain: Double) {
            let w = weightSquares.values.reduce(0, +)
            let i = errors.reduce(0.0) { $0 + $1.value.initialized * $1.value.initialized * weightSquares[$1.key]! }
            let p = errors.reduce(0.0) { $0 + $1.value.plain * $1.value.plain * weightSquares[$1.key]! }
            return ((i / w).squareRoot(), (p / w).squareRoot())
        }
        let weightSquares: [String: Double]
    }

    /// The NF4 format the new base is written in (as `qlora quantize --format nf4`), which
    /// LoftQ's quantization steps use too, so that its last Q is exactly the written base.
    static let baseFormat = Quantizer.Options(format: .nf4, blockSize: 64, doubleQuant: true)

    /// For a method that takes A and B from W (`changesBase`): computes them for every linear
    /// `lora` adapts in the model at `path`, writes the new base to `<directory>/base` (NF4
    /// bitsandbytes folder: W − s·B·A, or LoftQ's last residual, quantized) and the adapter to
    /// `<directory>/adapter` (PEFT layout; its norms, with `trainNorms`, the base's; DoRA's
    /// magnitude ‖Q + s·B·A‖ per row as PEFT computes it after the initialization).
    public static func prepare(model path: String, lora: LoRAConfig, trainNorms: Bool, method: LoRAInitialization, loftqIterations: Int = 1,
                               seed: UInt64, directory: String, progress: @escaping (String) -> Void = { _ in }) throws -> Prepared {
        precondition(method.changesBase, "\(method) leaves the base as it is")
        guard loftqIterations >= 1 else { throw LoRAInitializationError.loftqIterations(loftqIterations) }
        let start = Date()
        let source = try ModelSource(path: path)
        let c = source.config, family = c.family
        try lora.validate(layers: c.numLayers)
        var adapted: Set<String> = []
        for l in lora.adaptedLayers(of: c.numLayers) {
            for m in family.linears where lora.targets.matches(m, layer: l) { adapted.insert(m.moduleName(layer: l) + ".weight") }
        }
        guard !adapted.isEmpty else { throw LoRAConfigError.nothingAdapted(lora.targets.description) }
        let fullPrecision: Set<String> = ["F32", "F16", "BF16", "F64"]
        if method == .loftq, source.tensors.contains(where: { t in adapted.contains(t.name) && !fullPrecision.contains(t.storage.uppercased()) }) {
            progress("note: LoftQ starts from 16/32-bit weights; \(path) is quantized, so W is its dequantized weights")
        }
        let base = directory + "/base", adapterDir = directory + "/adapter"
        try? FileManager.default.removeItem(atPath: base)
        let options = baseFormat, s = lora.scale
        var factors: [String: (a: [Float], b: [Float])] = [:], errors: [String: (initialized: Double, plain: Double)] = [:]
        var squares: [String: Double] = [:]
        var current: (name: String, w: [Float])? = nil
        var rng = SplitMix64(seed: seed ^ 0x5155_A000_0000_0001)
        var done = 0
        /// What the base's quantizer makes of an [rows, cols] weight's values.
        func quantized(_ v: [Float], rows: Int, cols: Int) throws -> [Float] {
            try QuantizedMatrix(quantizing: v, rows: rows, cols: cols, format: options.format, blockSize: options.blockSize,
                                doubleQuant: options.doubleQuant).dequantize()
        }
        _ = try Quantizer.writeBitsandbytesFolder(
            source, output: base, options: options, start: start,
            load: { t in
                let w = try source.load(t)
                guard adapted.contains(t.name), t.shape.count == 2 else { return w }
                let rows = t.shape[0], cols = t.shape[1]
                let f = try Self.factors(method, w: w, rows: rows, cols: cols, rank: lora.rank, scale: s, loftqIterations: loftqIterations,
                                         rng: &rng, quantize: { try quantized($0, rows: rows, cols: cols) })
                factors[t.name] = (f.a, f.b)
                current = (t.name, w)
                done += 1
                let eta = Date().timeIntervalSince(start) / Double(done) * Double(adapted.count - done)
                progress(String(format: "[%d/%d] %@ [%d, %d]: %@, ETA %.0f s", done, adapted.count, t.name, rows, cols, method.description, eta))
                return f.base
            },
            quantized: { t, _, m in
                guard let (name, w) = current, name == t.name, let f = factors[name] else { return }
                let rows = t.shape[0], cols = t.shape[1]
                let q = m.dequantize()
                let plainQ = try quantized(w, rows: rows, cols: cols)
                let approx = subtractProduct(q, a: f.a, b: f.b, rows: rows, cols: cols, rank: lora.rank, scale: -s)
                var e = 0.0, p = 0.0, n = 0.0
                for k in w.indices {
                    let x = Double(w[k])
                    e += (x - Double(approx[k])) * (x - Double(approx[k]))
                    p += (x - Double(plainQ[k])) * (x - Double(plainQ[k]))
                    n += x * x
                }
                errors[name] = n > 0 ? ((e / n).squareRoot(), (p / n).squareRoot()) : (0, 0)
                squares[name] = n
                current = nil
            },
            progress: { _ in })
        // The adapter, on the new base: A and B as computed, DoRA's magnitude from them.
        let model = try DecoderModel(path: base)
        let adapters = try ModelAdapters(model: model, config: lora, trainNorms: trainNorms, seed: seed)
        for (l, m, a) in adapters.adapters {
            guard let f = factors[m.moduleName(layer: l) + ".weight"] else { preconditionFailure("no factors for \(m.moduleName(layer: l))") }
            a.a.setValues(f.a)
            a.b.setValues(f.b)
            if let magnitude = a.magnitude { magnitude.setValues(try a.doraNorm(base: model.weights.layers[l].matrix(m))) }
        }
        try AdapterFiles.save(adapters, to: adapterDir, baseModel: base)
        return Prepared(base: base, adapter: adapterDir, errors: errors, seconds: Date().timeIntervalSince(start), weightSquares: squares)
    }
}
