import QuantKernels

/// Tuning of the quantized GEMMs; the defaults are what the benchmarks chose.
public struct GEMMOptions: Sendable {
    /// Threads sharing the tiles; 0 = OpenMP's default.
    public var threads: Int
    /// Tiles path: bytes of the per-thread buffer of dequantized weights; 0 = the default for T.
    public var tileBytes: Int
    /// Which implementation runs the product.
    public var path: Path

    public enum Path: Int, Sendable, CaseIterable {
        /// Forward at T ≤ 4 (decoding): W dequantized a row at a time into an L1 buffer and dotted
        /// with X. Otherwise the micro-kernel where it applies (AVX-512, columns a multiple of 16)
        /// and T ≥ 16, else tiles.
        case auto
        /// Dequantize tiles of W into a per-thread buffer and multiply with single-threaded sgemm.
        case tiles
        /// Our AVX-512 micro-kernel with W dequantized into its packed panels (falls back to
        /// tiles where it does not apply).
        case kernel
    }

    public init(threads: Int = 0, tileBytes: Int = 0, path: Path = .auto) {
        self.threads = threads
        self.tileBytes = tileBytes
        self.path = path
    }

    var kernelOptions: qk_gemm_options {
        qk_gemm_options(tile_bytes: Int64(tileBytes), path: qk_gemm_path(rawValue: UInt32(path.rawValue)))
    }
}

/// The arithmetic of the quantized GEMMs.
public enum ComputeDType: String, Sendable, CaseIterable, CustomStringConvertible {
    /// fp32 inputs and dequantized weights, fp32 sums.
    case fp32
    /// X (or dY) and the dequantized W rounded to bf16 (nearest even; NaN stays NaN; fp32
    /// subnormals become ±0), fp32 sums: CPUs with AVX512_BF16 only (`ComputeRuntime.bf16Available`).
    case bf16
    /// Decoding's products: each row of X quantized to 8 bits per block of 32 (llama.cpp's
    /// Q8_0, the scale kept in fp32) and exact integer dot products with the weights' codes,
    /// scaled and summed in fp32. Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K and Q6_K weights on CPUs with AVX512_VNNI
    /// (`QuantizedMatrix.int8DecodeApplies`); any other product runs in fp32. Forward only: a
    /// backward asked for in int8 runs in fp32.
    case int8

    public var description: String { rawValue }

    /// What a product of `T` rows computes in when this dtype is asked for. Below 8 rows
    /// (decoding) each weight is read once per token and the product is bound by turning W's
    /// codes into numbers: packing W into bf16 panels costs more than it saves (q4_1 1536×576
    /// at T = 1 on Zen 4: 3.9 GFLOP/s in bf16 against 21.6 on the fp32 row path), so bf16
    /// decodes in int8, whose codes meet X's bytes without being converted; fp32 stays fp32.
    public func effective(tokens T: Int) -> ComputeDType { T < 8 && self == .bf16 ? .int8 : self }
}

extension QuantizedMatrix {
    /// Whether a forward in `.int8` takes integer dot products here (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K or Q6_K weights,
    /// a CPU with AVX512_VNNI, the AVX-512 level in use) rather than running in fp32.
    public var int8DecodeApplies: Bool { withKernel { qk_int8_decode_applies($0) != 0 } }

    /// Y[T, out] = X[T, in] · Wᵀ, or Y += X · Wᵀ when `accumulate` (so LoRA and residual terms
    /// add into the same output). W is dequantized tile by tile; it never exists whole in fp32.
    /// `dtype` .bf16 takes only `options.threads` and throws `.bf16Unavailable` on CPUs without it.
    public func forward(_ x: UnsafeBufferPointer<Float>, into y: UnsafeMutableBufferPointer<Float>, tokens T: Int,
                        accumulate: Bool = false, options: GEMMOptions = .init(), dtype: ComputeDType = .fp32) throws(QuantError) {
        try check(T: T, input: x.count, inputWidth: cols, output: y.count, outputWidth: rows, names: ("X", "Y"))
        _ = try ComputeRuntime.prepare()
        var opt = options.kernelOptions
        let beta: Float = accumulate ? 1 : 0, threads = Int32(options.threads)
        let rc = withKernel { k in
            switch dtype {
            case .fp32: qk_gemm_forward(k, x.baseAddress, y.baseAddress, Int64(T), beta, threads, &opt)
            case .bf16: qk_gemm_forward_bf16(k, x.baseAddress, y.baseAddress, Int64(T), beta, threads)
            case .int8: qk_gemm_forward_int8(k, x.baseAddress, y.baseAddress, Int64(T), beta, threads)
            }
        }
        try throwing(rc, "a [\(rows), \(cols)] forward")
    }

    /// dX[T, in] = dY[T, out] · W, or dX += dY · W when `accumulate`. There is no dW: W is frozen.
    /// `dtype` as in `forward`.
    public func backward(_ dy: UnsafeBufferPointer<Float>, into dx: UnsafeMutableBufferPointer<Float>, tokens T: Int,
                         accumulate: Bool = false, options: GEMMOptions = .init(), dtype: ComputeDType = .fp32) throws(QuantError) {
        try check(T: T, input: dy.count, inputWidth: rows, output: dx.count, outputWidth: cols, names: ("dY", "dX"))
        _ = try ComputeRuntime.prepare()
        var opt = options.kernelOptions
        let beta: Float = accumulate ? 1 : 0, threads = Int32(options.threads)
        let rc = withKernel { k in
            switch dtype {
            case .fp32, .int8: qk_gemm_backward(k, dy.baseAddress, dx.baseAddress, Int64(T), beta, threads, &opt)
            case .bf16: qk_gemm_backward_bf16(k, dy.baseAddress, dx.baseAddress, Int64(T), beta, threads)
            }
        }
        try throwing(rc, "a [\(rows), \(cols)] backward")
    }

    /// A second product run beside a bf16 forward or backward, from the same rounded input:
    /// a dense fp32 matrix E [count, in] (forward: out2 = alpha·X·Eᵀ) or E [out, count]
    /// (backward: out2 = alpha·dY·E), row-major, rounded to bf16 as it is packed; `output`
    /// [T, count] with rows of `ld` floats is written, not accumulated. LoRA's x·Aᵀ beside the
    /// frozen forward, scale·dY·B beside its backward: the input is rounded and packed once.
    public struct SideProduct {
        public let e: UnsafePointer<Float>
        public let count: Int
        public let output: UnsafeMutablePointer<Float>
        public let ld: Int
        public let alpha: Float
        public init(e: UnsafePointer<Float>, count: Int, output: UnsafeMutablePointer<Float>, ld: Int, alpha: Float = 1) {
            self.e = e
            self.count = count
            self.output = output
            self.ld = ld
            self.alpha = alpha
        }
    }

    /// `forward` in bf16 with a side product (`SideProduct`); bit for bit the two products run
    /// apart. Throws `.bf16Unavailable` on CPUs without AVX512_BF16.
    public func forwardBF16(_ x: UnsafeBufferPointer<Float>, into y: UnsafeMutableBufferPointer<Float>, tokens T: Int,
                            accumulate: Bool = false, threads: Int = 0, side: SideProduct) throws(QuantError) {
        try bf16(backward: false, x, into: y, tokens: T, accumulate: accumulate, threads: threads, side: side)
    }

    /// `backward` in bf16 with a side product, as `forwardBF16(_:into:tokens:accumulate:threads:side:)`.
    public func backwardBF16(_ dy: UnsafeBufferPointer<Float>, into dx: UnsafeMutableBufferPointer<Float>, tokens T: Int,
                             accumulate: Bool = false, threads: Int = 0, side: SideProduct) throws(QuantError) {
        try bf16(backward: true, dy, into: dx, tokens: T, accumulate: accumulate, threads: threads, side: side)
    }

    private func bf16(backward: Bool, _ input: UnsafeBufferPointer<Float>, into out: UnsafeMutableBufferPointer<Float>, tokens T: Int,
                      accumulate: Bool, threads: Int, side: SideProduct) throws(QuantError) {
        let (inWidth, outWidth) = backward ? (rows, cols) : (cols, rows)
        try check(T: T, input: input.count, inputWidth: inWidth, output: out.count, outputWidth: outWidth,
                  names: backward ? ("dY", "dX") : ("X", "Y"))
        precondition(side.count >= 0 && side.ld >= side.count, "side product of \(side.count) columns in rows of \(side.ld)")
        _ = try ComputeRuntime.prepare()
        let beta: Float = accumulate ? 1 : 0
        let rc = withKernel { k in
            (backward ? qk_gemm_backward_bf16_with : qk_gemm_forward_bf16_with)(
                k, input.baseAddress, out.baseAddress, Int64(T), beta, Int32(threads), side.e, Int64(side.count), side.output,
                Int64(side.ld), side.alpha)
        }
        try throwing(rc, "a [\(rows), \(cols)] \(backward ? "backward" : "forward") with a side product")
    }

    /// A LoRA adapter's factors, fp32 row-major: A [rank, in], B [out, rank], and its scale.
    public struct LoRAFactors {
        public let a: UnsafePointer<Float>
        public let b: UnsafePointer<Float>
        public let rank: Int
        public let scale: Float
        public init(a: UnsafePointer<Float>, b: UnsafePointer<Float>, rank: Int, scale: Float) {
            self.a = a
            self.b = b
            self.rank = rank
            self.scale = scale
        }
    }

    /// The bf16 forward with a LoRA adapter in the same pass: u [T, rank] (rows of `ldu`) =
    /// x·Aᵀ when `computeU` (bit for bit `SideProduct`'s), else read as given (LoRA's input
    /// after dropout, times A), and y (+)= x·Wᵀ + bf16(scale·u)·bf16(B)ᵀ, the low-rank term
    /// summed in the frozen product's accumulators so that y is written once. Throws
    /// `.bf16Unavailable` on CPUs without AVX512_BF16.
    public func forwardBF16(_ x: UnsafeBufferPointer<Float>, into y: UnsafeMutableBufferPointer<Float>, tokens T: Int,
                            accumulate: Bool = false, threads: Int = 0, lora: LoRAFactors, u: UnsafeMutablePointer<Float>, ldu: Int,
                            computeU: Bool) throws(QuantError) {
        try bf16(backward: false, x, into: y, tokens: T, accumulate: accumulate, threads: threads, lora: lora, low: u, ld: ldu,
                 computeU: computeU)
    }

    /// The bf16 backward with a LoRA adapter in the same pass: g [T, rank] (rows of `ldg`) =
    /// scale·dY·B (bit for bit `SideProduct`'s) and dX (+)= dY·W + bf16(g)·bf16(A), written once.
    public func backwardBF16(_ dy: UnsafeBufferPointer<Float>, into dx: UnsafeMutableBufferPointer<Float>, tokens T: Int,
                             accumulate: Bool = false, threads: Int = 0, lora: LoRAFactors, g: UnsafeMutablePointer<Float>,
                             ldg: Int) throws(QuantError) {
        try bf16(backward: true, dy, into: dx, tokens: T, accumulate: accumulate, threads: threads, lora: lora, low: g, ld: ldg,
                 computeU: true)
    }

    /// Both ways of a LoRA pass: `low` is u (forward) or g (backward), rows of `ld` floats.
    private func bf16(backward: Bool, _ input: UnsafeBufferPointer<Float>, into out: UnsafeMutableBufferPointer<Float>, tokens T: Int,
                      accumulate: Bool, threads: Int, lora: LoRAFactors, low: UnsafeMutablePointer<Float>, ld: Int,
                      computeU: Bool) throws(QuantError) {
        let (inWidth, outWidth) = backward ? (rows, cols) : (cols, rows)
        try check(T: T, input: input.count, inputWidth: inWidth, output: out.count, outputWidth: outWidth,
                  names: backward ? ("dY", "dX") : ("X", "Y"))
        precondition(lora.rank >= 0 && ld >= lora.rank, "LoRA rank \(lora.rank) in rows of \(ld)")
        _ = try ComputeRuntime.prepare()
        let beta: Float = accumulate ? 1 : 0, r = Int64(lora.rank)
        let rc = withKernel { k in
            backward
                ? qk_gemm_backward_bf16_lora(k, input.baseAddress, out.baseAddress, Int64(T), beta, Int32(threads), lora.b, lora.a, r, low,
                                             Int64(ld), lora.scale)
                : qk_gemm_forward_bf16_lora(k, input.baseAddress, out.baseAddress, Int64(T), beta, Int32(threads), lora.a, lora.b, r, low,
                                            Int64(ld), computeU ? 1 : 0, lora.scale)
        }
        try throwing(rc, "a [\(rows), \(cols)] \(backward ? "backward" : "forward") with LoRA")
    }

    /// Y[T, out] = X[T, in] · Wᵀ for arrays.
    public func forward(_ x: [Float], tokens T: Int, options: GEMMOptions = .init(), dtype: ComputeDType = .fp32) throws(QuantError) -> [Float] {
        var y = [Float](repeating: 0, count: max(T, 0) * rows)
        try x.withUnsafeBufferPointer { (xp) throws(QuantError) in
            try y.withUnsafeMutableBufferPointer { (yp) throws(QuantError) in
                try forward(xp, into: yp, tokens: T, options: options, dtype: dtype)
            }
        }
        return y
    }

    /// dX[T, in] = dY[T, out] · W for arrays.
    public func backward(_ dy: [Float], tokens T: Int, options: GEMMOptions = .init(), dtype: ComputeDType = .fp32) throws(QuantError) -> [Float] {
        var dx = [Float](repeating: 0, count: max(T, 0) * cols)
        try dy.withUnsafeBufferPointer { (dyp) throws(QuantError) in
            try dx.withUnsafeMutableBufferPointer { (dxp) throws(QuantError) in
                try backward(dyp, into: dxp, tokens: T, options: options, dtype: dtype)
            }
        }
        return dx
    }

    /// The bf16 forward as a plain loop on any CPU (inputs rounded as the AVX512_BF16 kernel
    /// rounds them, fp64 sums, one thread): the reference for tests. `y` holds the output, and
    /// the values to accumulate onto when `accumulate`.
    public func forwardBF16Reference(_ x: [Float], into y: inout [Float], tokens T: Int, accumulate: Bool = false) throws(QuantError) {
        try check(T: T, input: x.count, inputWidth: cols, output: y.count, outputWidth: rows, names: ("X", "Y"))
        let rc = withKernel { k in qk_gemm_forward_bf16_ref(k, x, &y, Int64(T), accumulate ? 1 : 0) }
        try throwing(rc, "a [\(rows), \(cols)] bf16 reference forward")
    }

    /// The bf16 backward as a plain loop, as `forwardBF16Reference`.
    public func backwardBF16Reference(_ dy: [Float], into dx: inout [Float], tokens T: Int, accumulate: Bool = false) throws(QuantError) {
        try check(T: T, input: dy.count, inputWidth: rows, output: dx.count, outputWidth: cols, names: ("dY", "dX"))
        let rc = withKernel { k in qk_gemm_backward_bf16_ref(k, dy, &dx, Int64(T), accumulate ? 1 : 0) }
        try throwing(rc, "a [\(rows), \(cols)] bf16 reference backward")
    }

    private func throwing(_ rc: Int32, _ what: String) throws(QuantError) {
        switch rc {
        case 0: return
        case Int32(QK_GEMM_NO_BF16): throw .bf16Unavailable(cpu: CPUInfo.current.brand)
        default: throw .outOfMemory("buffers for \(what)")
        }
    }

    private func check(T: Int, input: Int, inputWidth: Int, output: Int, outputWidth: Int,
                       names: (String, String)) throws(QuantError) {
        guard T >= 0, T <= Int(Int32.max) else { throw .invalidShape(rows: T, cols: inputWidth) }
        guard input >= T * inputWidth else {
            throw .bufferTooSmall(what: "\(names.0)[\(T), \(inputWidth)]", needed: T * inputWidth, actual: input)
        }
        guard output >= T * outputWidth else {
            throw .bufferTooSmall(what: "\(names.1)[\(T), \(outputWidth)]", needed: T * outputWidth, actual: output)
        }
    }
}
