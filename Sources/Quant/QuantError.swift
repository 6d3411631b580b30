/// What can go wrong building or using a quantized matrix. Each case carries the values at
/// fault so the message can name them.
public enum QuantError: Error, Equatable, CustomStringConvertible {
    case invalidShape(rows: Int, cols: Int)
    case invalidBlockSize(format: QuantFormat, blockSize: Int, allowed: String)
    case columnsNotMultipleOfBlock(format: QuantFormat, columns: Int, blockSize: Int)
    case sizeMismatch(what: String, expected: Int, actual: Int)
    case nonFiniteScale(what: String, block: Int, value: Float)
    case statisticsMismatch(format: QuantFormat, detail: String)
    case bufferTooSmall(what: String, needed: Int, actual: Int)
    case blasUnavailable(String)
    case outOfMemory(String)
    case bf16Unavailable(cpu: String)
    case noQuantizer(format: QuantFormat)

    public var description: String {
        switch self {
        case let .invalidShape(rows, cols):
            "invalid matrix shape [\(rows), \(cols)]: both sides must be positive and the product must fit in memory"
        case let .invalidBlockSize(format, blockSize, allowed):
            "block size \(blockSize) is not valid for \(format.rawValue): use \(allowed)"
        case let .columnsNotMultipleOfBlock(format, columns, blockSize):
            "\(format.rawValue) needs the column count to be a multiple of \(blockSize) (ggml blocks never straddle rows), got \(columns) columns"
        case let .sizeMismatch(what, expected, actual):
            "\(what): expected \(expected) bytes, got \(actual)"
        case let .nonFiniteScale(what, block, value):
            "\(what): block \(block) has a non-finite scale \(value)"
        case let .statisticsMismatch(format, detail):
            "\(format.rawValue): \(detail)"
        case let .bufferTooSmall(what, needed, actual):
            "\(what) holds \(actual) floats, needs \(needed)"
        case let .blasUnavailable(message):
            message
        case let .outOfMemory(what):
            "out of memory: \(what)"
        case let .bf16Unavailable(cpu):
            "bf16 GEMMs need AVX-512 with AVX512_BF16, which this CPU (\(cpu)) or its OS lacks: use fp32"
        case let .noQuantizer(format):
            "qlora has no quantizer for \(format.rawValue): it reads such blocks as a GGUF file stores them; quantize to nf4, fp4, q4_0, q4_1 or q8_0"
        }
    }
}
