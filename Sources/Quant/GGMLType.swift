import QuantKernels

/// The ggml tensor types of a GGUF file that qlora reads, by their GGUF ids (ggml.h's
/// `enum ggml_type`), dequantized to fp32 bit for bit as ggml's `dequantize_row_*`.
///
/// A row of `columns` elements is `columns / blockSize` whole blocks of `blockBytes` bytes
/// (ggml blocks never straddle rows), so rows laid end to end dequantize as one longer row:
/// - `f32`, `f16`, `bf16`: one element per block, 4, 2 and 2 bytes.
/// - `q4_0`, `q4_1`, `q5_0`, `q5_1`, `q8_0`: 32 elements per block, 18, 20, 22, 24 and 34 bytes.
/// - `q2_K`, `q3_K`, `q4_K`, `q5_K`, `q6_K`: 256 per super-block, 84, 110, 144, 176 and 210 bytes.
///
/// A Q4_K_M file mixes `q4_K` and `q6_K`, sometimes with `q5_0` or `q8_0`; norms are `f32`.
public enum GGMLType: UInt32, CaseIterable, Sendable {
    case f32 = 0
    case f16 = 1
    case q4_0 = 2
    case q4_1 = 3
    case q5_0 = 6
    case q5_1 = 7
    case q8_0 = 8
    case q2_K = 10
    case q3_K = 11
    case q4_K = 12
    case q5_K = 13
    case q6_K = 14
    case bf16 = 30

    /// The type a GGUF tensor info names, or nil for a type qlora cannot read (Q8_1, Q8_K,
    /// the IQ and TQ families, integers, ids ggml does not know).
    public init?(ggufID: UInt32) {
        self.init(rawValue: ggufID)
    }

    /// Elements per block.
    public var blockSize: Int { Int(qk_ggml_block_size(rawValue)) }

    /// Bytes per block.
    public var blockBytes: Int { Int(qk_ggml_block_bytes(rawValue)) }

    /// ggml's spelling: "F32", "BF16", "Q4_K", ...
    public var name: String { String(cString: qk_ggml_type_name(rawValue)) }

    /// Bytes of a row of `columns` elements.
    public func rowBytes(columns: Int) throws(GGMLTypeError) -> Int {
        guard columns >= 0 else { throw .invalidColumns(type: self, columns: columns) }
        guard columns % blockSize == 0 else {
            throw .columnsNotMultipleOfBlock(type: self, columns: columns, blockSize: blockSize)
        }
        let (bytes, overflow) = (columns / blockSize).multipliedReportingOverflow(by: blockBytes)
        guard !overflow else { throw .invalidColumns(type: self, columns: columns) }
        return bytes
    }

    /// Dequantizes a row of `columns` elements, `src` holding exactly `rowBytes(columns:)`
    /// bytes as the GGUF file stores them, into the first `columns` floats of `y`.
    ///
    /// Sizes are checked before any byte is read. `src` may start at any address: ggml's
    /// blocks keep fp16 fields at even offsets, so an odd start is copied once to realign it.
    public func dequantizeRow(_ src: UnsafeRawBufferPointer, columns: Int,
                              into y: UnsafeMutableBufferPointer<Float>) throws(GGMLTypeError) {
        let bytes = try rowBytes(columns: columns)
        guard src.count == bytes else {
            throw .sourceSizeMismatch(type: self, columns: columns, expected: bytes, actual: src.count)
        }
        guard y.count >= columns else { throw .destinationTooSmall(type: self, needed: columns, actual: y.count) }
        guard columns > 0, let base = src.baseAddress, let out = y.baseAddress else { return }
        let status: Int32
        if Int(bitPattern: base) % 2 == 0 {
            status = qk_ggml_dequantize_row(rawValue, base, out, Int64(columns))
        } else {
            let aligned = UnsafeMutableRawBufferPointer.allocate(byteCount: bytes, alignment: 16)
            defer { aligned.deallocate() }
            aligned.copyMemory(from: src)
            status = qk_ggml_dequantize_row(rawValue, aligned.baseAddress, out, Int64(columns))
        }
        precondition(status == 0, "qk_ggml_dequantize_row refused \(name) with \(columns) columns after the checks passed")
    }
}

extension QuantFormat {
    /// The format the GEMMs read a GGUF tensor of `type` in, blocks as the file stores them; nil
    /// for F32, F16 and BF16.
    public init?(ggml type: GGMLType) {
        switch type {
        case .q4_0: self = .q4_0
        case .q4_1: self = .q4_1
        case .q5_0: self = .q5_0
        case .q5_1: self = .q5_1
        case .q8_0: self = .q8_0
        case .q2_K: self = .q2_K
        case .q3_K: self = .q3_K
        case .q4_K: self = .q4_K
        case .q5_K: self = .q5_K
        case .q6_K: self = .q6_K
        case .f32, .f16, .bf16: return nil
        }
    }

    /// The GGUF tensor type of a ggml format; nil for bitsandbytes formats.
    public var ggmlType: GGMLType? {
        switch self {
        case .q4_0: .q4_0
        case .q4_1: .q4_1
        case .q5_0: .q5_0
        case .q5_1: .q5_1
        case .q8_0: .q8_0
        case .q2_K: .q2_K
        case .q3_K: .q3_K
        case .q4_K: .q4_K
        case .q5_K: .q5_K
        case .q6_K: .q6_K
        case .nf4, .fp4: nil
        }
    }
}

/// What can go wrong dequantizing a GGUF row. Each case names the type and the values at fault.
public enum GGMLTypeError: Error, Equatable, CustomStringConvertible {
    case invalidColumns(type: GGMLType, columns: Int)
    case columnsNotMultipleOfBlock(type: GGMLType, columns: Int, blockSize: Int)
    case sourceSizeMismatch(type: GGMLType, columns: Int, expected: Int, actual: Int)
    case destinationTooSmall(type: GGMLType, needed: Int, actual: Int)

    public var description: String {
        switch self {
        case let .invalidColumns(type, columns):
            "\(type.name): \(columns) columns is not a valid row length (negative, or its byte size overflows)"
        case let .columnsNotMultipleOfBlock(type, columns, blockSize):
            "\(type.name) needs the column count to be a multiple of \(blockSize) (ggml blocks never straddle rows), got \(columns) columns"
        case let .sourceSizeMismatch(type, columns, expected, actual):
            "\(type.name) row of \(columns) columns: expected \(expected) bytes, got \(actual)"
        case let .destinationTooSmall(type, needed, actual):
            "\(type.name) row: the output holds \(actual) floats, needs \(needed)"
        }
    }
}
