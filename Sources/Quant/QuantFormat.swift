import QuantKernels

/// The block formats a frozen weight can be stored in.
///
/// - `nf4`, `fp4`: bitsandbytes' 4-bit formats (QLoRA). Codes packed two per byte (first
///   element in the high nibble) over the row-major flattened tensor, one absmax per block of
///   `blockSize` elements (64 by default; a power of two from 32 to 4096), optionally
///   double-quantized.
/// - `q4_0`, `q4_1`, `q5_0`, `q5_1`, `q8_0`: ggml's blocks of 32 as GGUF files store them, used
///   as they are.
/// - `q2_K`, `q3_K`, `q4_K`, `q5_K`, `q6_K`: ggml's K-quant super-blocks of 256 (the Q4_K_M
///   files users hold), used as they are.
public enum QuantFormat: String, CaseIterable, Sendable, Codable {
    case nf4, fp4
    case q4_0, q4_1, q8_0
    case q5_0, q5_1
    case q2_K, q3_K, q4_K, q5_K, q6_K

    /// True for ggml's formats, whose scales live inside each block.
    public var isGGML: Bool { self != .nf4 && self != .fp4 }

    /// True for ggml's K-quants (super-blocks of 256).
    public var isKQuant: Bool { [.q2_K, .q3_K, .q4_K, .q5_K, .q6_K].contains(self) }

    /// True where `QuantizedMatrix(quantizing:)` has a reference quantizer (bitsandbytes' formats,
    /// q4_0, q4_1, q8_0); the others are only read, as a file stores them.
    public var canQuantize: Bool { !isGGML || [.q4_0, .q4_1, .q8_0].contains(self) }

    /// The block size a matrix gets when none is asked for.
    public var defaultBlockSize: Int { isKQuant ? Int(QK_K_BLOCK) : isGGML ? Int(QK_GGML_BLOCK) : 64 }

    /// Bytes of one ggml block (nil for bitsandbytes formats).
    public var ggmlBlockBytes: Int? {
        switch self {
        case .q4_0: Int(QK_Q4_0_BYTES)
        case .q4_1: Int(QK_Q4_1_BYTES)
        case .q8_0: Int(QK_Q8_0_BYTES)
        case .q5_0: Int(QK_Q5_0_BYTES)
        case .q5_1: Int(QK_Q5_1_BYTES)
        case .q2_K: Int(QK_Q2_K_BYTES)
        case .q3_K: Int(QK_Q3_K_BYTES)
        case .q4_K: Int(QK_Q4_K_BYTES)
        case .q5_K: Int(QK_Q5_K_BYTES)
        case .q6_K: Int(QK_Q6_K_BYTES)
        case .nf4, .fp4: nil
        }
    }

    /// Where a ggml block keeps its fp16 scales, by name and byte offset (ggml-common.h):
    /// what `QuantizedMatrix` checks for NaN and infinity. Empty for bitsandbytes formats.
    public var ggmlScaleFields: [(name: String, offset: Int)] {
        switch self {
        case .q4_0, .q5_0, .q8_0: [("d", 0)]
        case .q4_1, .q5_1: [("d", 0), ("m", 2)]
        case .q4_K, .q5_K: [("d", 0), ("dmin", 2)]
        case .q2_K: [("d", 80), ("dmin", 82)]
        case .q3_K: [("d", 108)]
        case .q6_K: [("d", 208)]
        case .nf4, .fp4: []
        }
    }

    /// The 16-value codebook of a bitsandbytes format (nil for ggml formats).
    public var codebook: [Float]? {
        switch self {
        case .nf4: withUnsafeBytes(of: qk_nf4_code) { Array($0.bindMemory(to: Float.self)) }
        case .fp4: withUnsafeBytes(of: qk_fp4_code) { Array($0.bindMemory(to: Float.self)) }
        default: nil
        }
    }

    var kernelFormat: qk_format {
        switch self {
        case .nf4: QK_FORMAT_NF4
        case .fp4: QK_FORMAT_FP4
        case .q4_0: QK_FORMAT_Q4_0
        case .q4_1: QK_FORMAT_Q4_1
        case .q8_0: QK_FORMAT_Q8_0
        case .q5_0: QK_FORMAT_Q5_0
        case .q5_1: QK_FORMAT_Q5_1
        case .q2_K: QK_FORMAT_Q2_K
        case .q3_K: QK_FORMAT_Q3_K
        case .q4_K: QK_FORMAT_Q4_K
        case .q5_K: QK_FORMAT_Q5_K
        case .q6_K: QK_FORMAT_Q6_K
        }
    }

    /// Checks a block size and a column count for this format.
    ///
    /// ggml blocks never straddle rows: `cols` must be a multiple of the block (32, or 256 for
    /// the K-quants), as ggml requires.
    /// bitsandbytes blocks run over the flattened tensor and may straddle rows; the kernels
    /// handle that (the elements of a split block take the scalar path), so any `cols` works.
    public func validate(blockSize: Int, cols: Int) throws(QuantError) {
        if isGGML {
            guard blockSize == defaultBlockSize else {
                throw .invalidBlockSize(format: self, blockSize: blockSize, allowed: "\(defaultBlockSize)")
            }
            guard cols % blockSize == 0 else {
                throw .columnsNotMultipleOfBlock(format: self, columns: cols, blockSize: blockSize)
            }
        } else {
            guard (32...4096).contains(blockSize), blockSize & (blockSize - 1) == 0 else {
                throw .invalidBlockSize(format: self, blockSize: blockSize, allowed: "a power of two from 32 to 4096")
            }
        }
    }
}

/// The dynamic 8-bit map bitsandbytes uses to double-quantize absmax
/// (`create_dynamic_map(signed=True)`), 256 values.
public let dynamicMap8Bit: [Float] = withUnsafeBytes(of: qk_dynamic_map) { Array($0.bindMemory(to: Float.self)) }
