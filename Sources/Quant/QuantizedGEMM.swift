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

extension QuantizedMatrix {
    /// Y[T, out] = X[T, in] · Wᵀ, or Y += X · Wᵀ when `accumulate` (so LoRA and residual terms
    /// add into the same output). W is dequantized tile by tile; it never exists whole in fp32.
    public func forward(_ x: UnsafeBufferPointer<Float>, into y: UnsafeMutableBufferPointer<Float>, tokens T: Int,
                        accumulate: Bool = false, options: GEMMOptions = .init()) throws(QuantError) {
        try check(T: T, input: x.count, inputWidth: cols, output: y.count, outputWidth: rows, names: ("X", "Y"))
        _ = try ComputeRuntime.prepare()
        var opt = options.kernelOptions
        let rc = withKernel { k in
            qk_gemm_forward(k, x.baseAddress, y.baseAddress, Int64(T), accumulate ? 1 : 0, Int32(options.threads), &opt)
        }
        guard rc == 0 else { throw .outOfMemory("tile buffers for a [\(rows), \(cols)] forward") }
    }

    /// dX[T, in] = dY[T, out] · W, or dX += dY · W when `accumulate`. There is no dW: W is frozen.
    public func backward(_ dy: UnsafeBufferPointer<Float>, into dx: UnsafeMutableBufferPointer<Float>, tokens T: Int,
                         accumulate: Bool = false, options: GEMMOptions = .init()) throws(QuantError) {
        try check(T: T, input: dy.count, inputWidth: rows, output: dx.count, outputWidth: cols, names: ("dY", "dX"))
        _ = try ComputeRuntime.prepare()
        var opt = options.kernelOptions
        let rc = withKernel { k in
            qk_gemm_backward(k, dy.baseAddress, dx.baseAddress, Int64(T), accumulate ? 1 : 0, Int32(options.threads), &opt)
        }
        guard rc == 0 else { throw .outOfMemory("tile buffers for a [\(rows), \(cols)] backward") }
    }

    /// Y[T, out] = X[T, in] · Wᵀ for arrays.
    public func forward(_ x: [Float], tokens T: Int, options: GEMMOptions = .init()) throws(QuantError) -> [Float] {
        var y = [Float](repeating: 0, count: max(T, 0) * rows)
        try x.withUnsafeBufferPointer { (xp) throws(QuantError) in
            try y.withUnsafeMutableBufferPointer { (yp) throws(QuantError) in
                try forward(xp, into: yp, tokens: T, options: options)
            }
        }
        return y
    }

    /// dX[T, in] = dY[T, out] · W for arrays.
    public func backward(_ dy: [Float], tokens T: Int, options: GEMMOptions = .init()) throws(QuantError) -> [Float] {
        var dx = [Float](repeating: 0, count: max(T, 0) * cols)
        try dy.withUnsafeBufferPointer { (dyp) throws(QuantError) in
            try dx.withUnsafeMutableBufferPointer { (dxp) throws(QuantError) in
                try backward(dyp, into: dxp, tokens: T, options: options)
            }
        }
        return dx
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
