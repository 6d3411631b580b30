import QuantKernels

/// A frozen weight W[rows, cols] = [out, in] stored in a block format, with everything the
/// kernels need to dequantize any tile of it on the fly.
///
/// Storage, exactly as the formats' own files hold it:
/// - bitsandbytes (`nf4`, `fp4`): `data` = ⌈rows·cols / 2⌉ packed bytes over the flattened
///   tensor (first element of a pair in the high nibble); `scales` = one fp32 absmax per
///   block, or double-quantized (8-bit code per block, fp32 offset, fp32 absmax per 256
///   blocks, 256-entry dynamic map); `code` = the 16-value codebook.
/// - ggml (`q4_0`, `q4_1`, `q5_0`, `q5_1`, `q8_0`): `data` = rows·cols / 32 blocks of 18, 20,
///   22, 24 or 34 bytes; K-quants (`q2_K` … `q6_K`): rows·cols / 256 super-blocks of 84, 110,
///   144, 176 or 210 bytes. Scales inside the blocks, bytes as the GGUF file holds them.
public final class QuantizedMatrix: @unchecked Sendable {
    public let rows: Int
    public let cols: Int
    public let format: QuantFormat
    public let blockSize: Int
    public let data: ByteStorage
    public let scales: Scales
    /// The 16-value codebook (bitsandbytes formats only).
    public let code: ByteStorage?
    private let kernel: qk_matrix

    public enum Scales: Sendable {
        /// ggml: each block carries its own fp16 scale (and min).
        case inBlocks
        /// One fp32 absmax per block.
        case absmax(ByteStorage)
        /// bitsandbytes' double quantization (`compress_statistics=True`).
        case doubleQuantized(DoubleQuantized)
    }

    /// absmax[b] = nestedCode[codes[b]] · nestedAbsmax[b / 256] + offset, in fp32.
    public struct DoubleQuantized: Sendable {
        public let codes: ByteStorage
        public let offset: Float
        public let nestedAbsmax: ByteStorage
        public let nestedCode: ByteStorage
        public static let nestedBlockSize = Int(QK_NESTED_BLOCK)

        public init(codes: ByteStorage, offset: Float, nestedAbsmax: ByteStorage, nestedCode: ByteStorage) {
            self.codes = codes
            self.offset = offset
            self.nestedAbsmax = nestedAbsmax
            self.nestedCode = nestedCode
        }

        /// Double-quantizes per-block absmax the way bitsandbytes does: the mean is subtracted
        /// (`offset`: torch's float32 mean unless given) and the rest is quantized in blocks of
        /// 256 with the signed 8-bit dynamic map.
        public init(quantizing absmax: [Float], offset: Float? = nil) {
            let mean = offset ?? qk_torch_mean_f32(absmax, Int64(absmax.count))
            var codes = [UInt8](repeating: 0, count: absmax.count)
            var nested = [Float](repeating: 0, count: (absmax.count + Self.nestedBlockSize - 1) / Self.nestedBlockSize)
            withUnsafeBytes(of: qk_dynamic_map) { map in
                qk_quantize_nested_ref(absmax, Int64(absmax.count), mean, map.baseAddress!.assumingMemoryBound(to: Float.self),
                                       &codes, &nested)
            }
            self.init(codes: ByteStorage(copying: codes), offset: mean, nestedAbsmax: ByteStorage(copying: nested),
                      nestedCode: ByteStorage(copying: dynamicMap8Bit))
        }
    }

    /// Wraps existing storage (copied arrays or a memory-mapped file) after checking every
    /// size against the shape and format, and every scale for NaN and infinity.
    public init(rows: Int, cols: Int, format: QuantFormat, blockSize: Int? = nil, data: ByteStorage,
                scales: Scales, code: ByteStorage? = nil) throws(QuantError) {
        let blockSize = blockSize ?? format.defaultBlockSize
        let (count, overflow) = rows.multipliedReportingOverflow(by: cols)
        guard rows > 0, cols > 0, !overflow, rows <= Int(Int32.max), cols <= Int(Int32.max) else {
            throw .invalidShape(rows: rows, cols: cols)
        }
        try format.validate(blockSize: blockSize, cols: cols)
        self.rows = rows
        self.cols = cols
        self.format = format
        self.blockSize = blockSize
        self.data = data
        self.scales = scales
        self.code = format.isGGML ? nil : (code ?? ByteStorage(copying: format.codebook!))
        let blocks = format.isGGML ? count / blockSize : (count + blockSize - 1) / blockSize
        var k = qk_matrix()
        k.format = format.kernelFormat
        k.rows = Int64(rows)
        k.cols = Int64(cols)
        k.block_size = Int64(blockSize)
        k.data = data.pointer(to: UInt8.self)
        if let blockBytes = format.ggmlBlockBytes {
            try Self.expect("\(format.rawValue) blocks", data.count, blocks * blockBytes)
            guard case .inBlocks = scales else {
                throw .statisticsMismatch(format: format, detail: "ggml blocks carry their own scales; no separate absmax")
            }
        } else {
            try Self.expect("\(format.rawValue) packed codes", data.count, (count + 1) / 2)
            try Self.expect("\(format.rawValue) codebook", self.code!.count, 16 * 4)
            k.code = self.code!.pointer(to: Float.self)
            switch scales {
            case .inBlocks:
                throw .statisticsMismatch(format: format, detail: "bitsandbytes formats need absmax statistics")
            case let .absmax(absmax):
                try Self.expect("absmax", absmax.count, blocks * 4)
                k.absmax = absmax.pointer(to: Float.self)
            case let .doubleQuantized(dq):
                let nested = (blocks + DoubleQuantized.nestedBlockSize - 1) / DoubleQuantized.nestedBlockSize
                try Self.expect("double-quantized absmax codes", dq.codes.count, blocks)
                try Self.expect("nested absmax", dq.nestedAbsmax.count, nested * 4)
                try Self.expect("nested quant map", dq.nestedCode.count, 256 * 4)
                guard dq.offset.isFinite else { throw .nonFiniteScale(what: "absmax offset", block: 0, value: dq.offset) }
                k.absmax_q = dq.codes.pointer(to: UInt8.self)
                k.nested_absmax = dq.nestedAbsmax.pointer(to: Float.self)
                k.nested_code = dq.nestedCode.pointer(to: Float.self)
                k.offset = dq.offset
            }
        }
        kernel = k
        try validateScales(blocks: blocks)
    }

    /// Quantizes fp32 values (row-major [rows, cols]) with the reference quantizers, which
    /// reproduce bitsandbytes' and ggml's bytes. Formats without one (`canQuantize` false: Q5_0,
    /// Q5_1, the K-quants, which qlora reads as files store them) throw `.noQuantizer`.
    public convenience init(quantizing values: [Float], rows: Int, cols: Int, format: QuantFormat,
                            blockSize: Int? = nil, doubleQuant: Bool = false) throws(QuantError) {
        let blockSize = blockSize ?? format.defaultBlockSize
        let (count, overflow) = rows.multipliedReportingOverflow(by: cols)
        guard rows > 0, cols > 0, !overflow else { throw .invalidShape(rows: rows, cols: cols) }
        guard values.count == count else { throw .bufferTooSmall(what: "values to quantize", needed: count, actual: values.count) }
        try format.validate(blockSize: blockSize, cols: cols)
        guard format.canQuantize else { throw .noQuantizer(format: format) }
        if let blockBytes = format.ggmlBlockBytes {
            var blocks = [UInt8](repeating: 0, count: count / blockSize * blockBytes)
            switch format {
            case .q4_0: qk_quantize_row_q4_0_ref(values, &blocks, Int64(count))
            case .q4_1: qk_quantize_row_q4_1_ref(values, &blocks, Int64(count))
            default: qk_quantize_row_q8_0_ref(values, &blocks, Int64(count))
            }
            try self.init(rows: rows, cols: cols, format: format, data: ByteStorage(copying: blocks), scales: .inBlocks)
        } else {
            let codebook = format.codebook!
            var packed = [UInt8](repeating: 0, count: (count + 1) / 2)
            var absmax = [Float](repeating: 0, count: (count + blockSize - 1) / blockSize)
            qk_quantize_4bit_ref(values, Int64(count), Int64(blockSize), codebook, &packed, &absmax)
            let scales: Scales = doubleQuant
                ? .doubleQuantized(DoubleQuantized(quantizing: absmax)) : .absmax(ByteStorage(copying: absmax))
            try self.init(rows: rows, cols: cols, format: format, blockSize: blockSize,
                          data: ByteStorage(copying: packed), scales: scales, code: ByteStorage(copying: codebook))
        }
    }

    private static func expect(_ what: String, _ actual: Int, _ expected: Int) throws(QuantError) {
        guard actual == expected else { throw .sizeMismatch(what: what, expected: expected, actual: actual) }
    }

    /// NaN or infinite scales would poison every product silently: refuse them here, naming
    /// the block (as ggml_validate_row_data does).
    private func validateScales(blocks: Int) throws(QuantError) {
        switch scales {
        case .inBlocks:
            let blockBytes = format.ggmlBlockBytes!, fields = format.ggmlScaleFields
            for b in 0..<blocks {
                for (name, offset) in fields {
                    let bits = data.bytes.loadUnaligned(fromByteOffset: b * blockBytes + offset, as: UInt16.self)
                    if bits & 0x7C00 == 0x7C00 {
                        throw .nonFiniteScale(what: "\(format.rawValue) \(name)", block: b, value: qk_fp16_to_fp32(bits))
                    }
                }
            }
        case let .absmax(absmax):
            for (b, a) in absmax.bytes.bindMemory(to: Float.self).enumerated() where !a.isFinite {
                throw .nonFiniteScale(what: "absmax", block: b, value: a)
            }
        case let .doubleQuantized(dq):
            for (b, a) in dq.nestedAbsmax.bytes.bindMemory(to: Float.self).enumerated() where !a.isFinite {
                throw .nonFiniteScale(what: "nested absmax", block: b, value: a)
            }
        }
    }

    public var count: Int { rows * cols }

    /// Blocks of the flattened tensor (the last one may be partial for bitsandbytes formats).
    public var blockCount: Int { (count + blockSize - 1) / blockSize }

    /// Bytes this matrix occupies: codes or blocks, per-block statistics, and the per-tensor
    /// constants (codebook, nested map, offset).
    public var byteCount: Int {
        var n = data.count + (code?.count ?? 0)
        switch scales {
        case .inBlocks: break
        case let .absmax(a): n += a.count
        case let .doubleQuantized(dq): n += dq.codes.count + dq.nestedAbsmax.count + dq.nestedCode.count + 4
        }
        return n
    }

    /// Storage bits per parameter: 4.5 for nf4 with fp32 absmax per 64, ≈ 4.127 double-quantized,
    /// 4.5 for q4_0, 5.0 for q4_1, 5.5 for q5_0, 6.0 for q5_1, 8.5 for q8_0; 2.625, 3.4375, 4.5,
    /// 5.5 and 6.5625 for q2_K … q6_K (the per-tensor constants add a little on small matrices).
    public var bitsPerParameter: Double { Double(byteCount * 8) / Double(count) }

    /// Absmax of each block as the kernels reconstruct it (bitsandbytes formats).
    public var blockAbsmax: [Float] {
        guard !format.isGGML else { return [] }
        return withKernel { k in (0..<blockCount).map { qk_block_absmax(k, Int64($0)) } }
    }

    /// The whole matrix in fp32, [rows, cols]. For tests and export; the GEMMs never do this.
    public func dequantize() -> [Float] {
        dequantize(rows: 0..<rows)
    }

    /// Rows `rows` in fp32, [rows.count, cols].
    public func dequantize(rows range: Range<Int>, simd: SIMDLevel? = nil) -> [Float] {
        var out = [Float](repeating: 0, count: range.count * cols)
        dequantize(rows: range, simd: simd, into: &out)
        return out
    }

    /// Rows `rows` in fp32 into `out`, which must hold range.count · cols floats.
    public func dequantize(rows range: Range<Int>, simd: SIMDLevel? = nil, into out: inout [Float]) {
        precondition(range.lowerBound >= 0 && range.upperBound <= rows, "row range out of bounds")
        precondition(out.count >= range.count * cols, "output buffer too small")
        out.withUnsafeMutableBufferPointer { buf in
            withKernel { k in
                qk_dequantize_range_isa(k, Int64(range.lowerBound * cols), Int64(range.count * cols), buf.baseAddress,
                                        (simd ?? SIMDLevel.current).kernelISA)
            }
        }
    }

    func withKernel<R>(_ body: (UnsafePointer<qk_matrix>) throws -> R) rethrows -> R {
        try withUnsafePointer(to: kernel) { try body($0) }
    }
}
