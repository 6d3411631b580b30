import Foundation
import Quant

/// A GGUF file (llama.cpp), versions 2 and 3, memory-mapped and validated whole before use.
///
/// Layout (little-endian):
/// ```
/// u32 magic "GGUF" · u32 version · u64 tensor_count · u64 kv_count
/// kv_count × { string key · u32 value_type · value }          string = u64 length + UTF-8 bytes
/// tensor_count × { string name · u32 n_dims · u64 ne[n_dims] · u32 ggml_type · u64 offset }
/// padding to general.alignment (default 32) · tensor data (offsets relative to here)
/// ```
/// ne[0] varies fastest: a PyTorch weight [out, in] is stored with ne = [in, out].
/// Every count, length, offset and shape is checked against the bytes that remain before it
/// is used: a corrupt file throws a `GGUFError` naming the file and what is wrong.
public final class GGUFFile: @unchecked Sendable {
    public let file: MappedFile
    public let version: UInt32
    public let metadata: [String: GGUFValue]
    /// Keys in file order.
    public let metadataKeys: [String]
    public let tensors: [GGUFTensor]
    public let alignment: Int
    public let dataOffset: Int
    private let index: [String: Int]

    static let magic: UInt32 = 0x4655_4747  // "GGUF"
    static let maxDims = 4
    static let maxArrayDepth = 8

    public convenience init(path: String) throws {
        try self.init(file: MappedFile(path: path))
    }

    public init(file: MappedFile) throws {
        self.file = file
        let path = file.path
        var r = ByteReader(file.bytes)
        func truncated(_ t: ByteReader.Truncated) -> GGUFError {
            .truncated(path: path, what: t.what, offset: t.offset, needed: t.needed, available: t.available)
        }
        do {
            let magic = try r.read(UInt32.self, "magic")
            guard magic == Self.magic else { throw GGUFError.badMagic(path: path, found: magic) }
            let version = try r.read(UInt32.self, "version")
            guard version == 2 || version == 3 else {
                throw GGUFError.unsupportedVersion(path: path, version: version,
                                                   hint: version.byteSwapped <= 3 ? "a big-endian file" : nil)
            }
            self.version = version
            let tensorCount = try r.read(UInt64.self, "tensor count")
            let kvCount = try r.read(UInt64.self, "metadata count")
            // Each key-value takes at least 12 bytes, each tensor info at least 24: bound the
            // counts by the bytes left before allocating anything for them.
            guard kvCount <= UInt64(r.remaining / 12) else {
                throw GGUFError.countTooLarge(path: path, what: "metadata key-value pairs", count: kvCount, remaining: r.remaining)
            }
            var metadata: [String: GGUFValue] = [:]
            var keys: [String] = []
            for i in 0..<Int(kvCount) {
                let key = try Self.string(&r, path: path, what: "key of metadata entry \(i)")
                let type = try r.read(UInt32.self, "type of metadata '\(key)'")
                let value = try Self.value(&r, type: type, path: path, key: key, depth: 0)
                guard metadata.updateValue(value, forKey: key) == nil else { throw GGUFError.duplicateKey(path: path, key: key) }
                keys.append(key)
            }
            self.metadata = metadata
            metadataKeys = keys

            var alignment = 32
            if let a = metadata["general.alignment"] {
                guard let v = a.int, v > 0, v & (v - 1) == 0, v <= 1 << 20 else {
                    throw GGUFError.badAlignment(path: path, value: "\(a)")
                }
                alignment = v
            }
            self.alignment = alignment

            guard tensorCount <= UInt64(r.remaining / 24) else {
                throw GGUFError.countTooLarge(path: path, what: "tensors", count: tensorCount, remaining: r.remaining)
            }
            var infos: [(name: String, ne: [Int], type: UInt32, offset: UInt64)] = []
            var index: [String: Int] = [:]
            for i in 0..<Int(tensorCount) {
                let name = try Self.string(&r, path: path, what: "name of tensor \(i)")
                let nDims = try r.read(UInt32.self, "dimension count of '\(name)'")
                guard nDims >= 1, nDims <= Self.maxDims else { throw GGUFError.badDimensions(path: path, tensor: name, detail: "\(nDims) dimensions (1...4 allowed)") }
                var ne: [Int] = []
                for d in 0..<Int(nDims) {
                    let n = try r.read(UInt64.self, "dimension \(d) of '\(name)'")
                    guard n >= 1, n <= UInt64(Int.max) else { throw GGUFError.badDimensions(path: path, tensor: name, detail: "dimension \(d) is \(n)") }
                    ne.append(Int(n))
                }
                let type = try r.read(UInt32.self, "type of '\(name)'")
                let offset = try r.read(UInt64.self, "offset of '\(name)'")
                guard index.updateValue(infos.count, forKey: name) == nil else { throw GGUFError.duplicateTensor(path: path, name: name) }
                infos.append((name, ne, type, offset))
            }
            dataOffset = (r.offset + alignment - 1) / alignment * alignment
            guard dataOffset <= file.count else {
                throw GGUFError.truncated(path: path, what: "padding before tensor data", offset: r.offset,
                                          needed: dataOffset - r.offset, available: r.remaining)
            }
            let dataSize = file.count - dataOffset
            var tensors: [GGUFTensor] = []
            for info in infos {
                guard let type = GGMLType(ggufID: info.type) else {
                    throw GGUFError.unsupportedTensorType(path: path, tensor: info.name, type: info.type)
                }
                var count = 1
                for n in info.ne {
                    let (p, o) = count.multipliedReportingOverflow(by: n)
                    guard !o else { throw GGUFError.badDimensions(path: path, tensor: info.name, detail: "element count \(info.ne) overflows") }
                    count = p
                }
                guard info.ne[0] % type.blockSize == 0 else {
                    throw GGUFError.rowNotMultipleOfBlock(path: path, tensor: info.name, columns: info.ne[0], blockSize: type.blockSize)
                }
                let (bytes, o) = (count / type.blockSize).multipliedReportingOverflow(by: type.blockBytes)
                guard !o else { throw GGUFError.badDimensions(path: path, tensor: info.name, detail: "byte size of \(info.ne) overflows") }
                guard info.offset % UInt64(alignment) == 0, info.offset <= UInt64(dataSize),
                      UInt64(bytes) <= UInt64(dataSize) - info.offset else {
                    throw GGUFError.tensorOutOfBounds(path: path, tensor: info.name, offset: info.offset, bytes: UInt64(bytes),
                                                      dataSize: UInt64(dataSize))
                }
                tensors.append(GGUFTensor(name: info.name, ne: info.ne, type: type, offset: dataOffset + Int(info.offset), byteCount: bytes))
            }
            // No two tensors may share bytes.
            let sorted = tensors.sorted { $0.offset < $1.offset }
            for (a, b) in zip(sorted, sorted.dropFirst()) where a.offset + a.byteCount > b.offset {
                throw GGUFError.overlappingTensors(path: path, first: a.name, second: b.name)
            }
            self.tensors = tensors
            self.index = index
        } catch let t as ByteReader.Truncated {
            throw truncated(t)
        }
    }

    public func tensor(_ name: String) -> GGUFTensor? { index[name].map { tensors[$0] } }

    /// The raw bytes of a tensor (bounds were checked at open).
    public func data(of tensor: GGUFTensor) -> UnsafeRawBufferPointer {
        UnsafeRawBufferPointer(rebasing: file.bytes[tensor.offset..<(tensor.offset + tensor.byteCount)])
    }

    /// A tensor in fp32, row-major [rows, cols] with cols = ne[0].
    public func dequantize(_ tensor: GGUFTensor) throws -> [Float] {
        var out = [Float](repeating: 0, count: tensor.count)
        try out.withUnsafeMutableBufferPointer { try tensor.type.dequantizeRow(data(of: tensor), columns: tensor.count, into: $0) }
        return out
    }

    // MARK: parsing

    private static func string(_ r: inout ByteReader, path: String, what: String) throws -> String {
        let n = try r.read(UInt64.self, "length of \(what)")
        guard n <= UInt64(r.remaining) else {
            throw GGUFError.truncated(path: path, what: what, offset: r.offset, needed: Int(clamping: n), available: r.remaining)
        }
        let raw = try r.bytes(Int(n), what)
        guard let s = String(validating: raw, as: UTF8.self) else { throw GGUFError.invalidUTF8(path: path, what: what) }
        return s
    }

    private static func value(_ r: inout ByteReader, type: UInt32, path: String, key: String, depth: Int) throws -> GGUFValue {
        switch GGUFValueType(rawValue: type) {
        case .uint8?: return .uint8(try r.read(UInt8.self, "value of '\(key)'"))
        case .int8?: return .int8(try r.read(Int8.self, "value of '\(key)'"))
        case .uint16?: return .uint16(try r.read(UInt16.self, "value of '\(key)'"))
        case .int16?: return .int16(try r.read(Int16.self, "value of '\(key)'"))
        case .uint32?: return .uint32(try r.read(UInt32.self, "value of '\(key)'"))
        case .int32?: return .int32(try r.read(Int32.self, "value of '\(key)'"))
        case .float32?: return .float32(Float(bitPattern: try r.read(UInt32.self, "value of '\(key)'")))
        case .bool?:
            let b = try r.read(UInt8.self, "value of '\(key)'")
            guard b <= 1 else { throw GGUFError.badValue(path: path, key: key, detail: "bool byte \(b)") }
            return .bool(b == 1)
        case .string?: return .string(try string(&r, path: path, what: "value of '\(key)'"))
        case .array?:
            guard depth < maxArrayDepth else { throw GGUFError.badValue(path: path, key: key, detail: "arrays nested deeper than \(maxArrayDepth)") }
            let elementType = try r.read(UInt32.self, "array type of '\(key)'")
            let count = try r.read(UInt64.self, "array length of '\(key)'")
            guard let minSize = minimumSize(of: elementType) else {
                throw GGUFError.badValue(path: path, key: key, detail: "unknown array element type \(elementType)")
            }
            guard count <= UInt64(r.remaining / minSize) else {
                throw GGUFError.countTooLarge(path: path, what: "elements of '\(key)'", count: count, remaining: r.remaining)
            }
            var items: [GGUFValue] = []
            items.reserveCapacity(Int(count))
            for _ in 0..<Int(count) { items.append(try value(&r, type: elementType, path: path, key: key, depth: depth + 1)) }
            return .array(items)
        case .uint64?: return .uint64(try r.read(UInt64.self, "value of '\(key)'"))
        case .int64?: return .int64(try r.read(Int64.self, "value of '\(key)'"))
        case .float64?: return .float64(Double(bitPattern: try r.read(UInt64.self, "value of '\(key)'")))
        case nil: throw GGUFError.badValue(path: path, key: key, detail: "unknown value type \(type)")
        }
    }

    /// The fewest bytes one value of a type can take (arrays and strings: their length fields).
    private static func minimumSize(of type: UInt32) -> Int? {
        switch GGUFValueType(rawValue: type) {
        case .uint8?, .int8?, .bool?: 1
        case .uint16?, .int16?: 2
        case .uint32?, .int32?, .float32?: 4
        case .string?, .uint64?, .int64?, .float64?: 8
        case .array?: 12
        case nil: nil
        }
    }
}

/// One tensor of a GGUF file. `ne` as ggml orders it (ne[0] = columns).
public struct GGUFTensor: Sendable, Equatable {
    public let name: String
    public let ne: [Int]
    public let type: GGMLType
    /// Absolute offset in the file.
    public let offset: Int
    public let byteCount: Int

    public var count: Int { ne.reduce(1, *) }
    public var columns: Int { ne[0] }
    public var rows: Int { count / ne[0] }
    /// PyTorch order: [ne[n-1], ..., ne[0]].
    public var shape: [Int] { ne.reversed() }
}

/// The type ids of GGUF metadata values (gguf_type in the GGUF spec), shared by the reader
/// and the writer.
enum GGUFValueType: UInt32 {
    case uint8 = 0, int8, uint16, int16, uint32, int32, float32, bool, string, array, uint64, int64, float64
}

/// A GGUF metadata value.
public indirect enum GGUFValue: Equatable, Sendable, CustomStringConvertible {
    case uint8(UInt8), int8(Int8), uint16(UInt16), int16(Int16), uint32(UInt32), int32(Int32)
    case uint64(UInt64), int64(Int64), float32(Float), float64(Double), bool(Bool)
    case string(String)
    case array([GGUFValue])

    var type: GGUFValueType {
        switch self {
        case .uint8: .uint8
        case .int8: .int8
        case .uint16: .uint16
        case .int16: .int16
        case .uint32: .uint32
        case .int32: .int32
        case .float32: .float32
        case .bool: .bool
        case .string: .string
        case .array: .array
        case .uint64: .uint64
        case .int64: .int64
        case .float64: .float64
        }
    }

    public var int: Int? {
        switch self {
        case let .uint8(v): Int(v)
        case let .int8(v): Int(v)
        case let .uint16(v): Int(v)
        case let .int16(v): Int(v)
        case let .uint32(v): Int(v)
        case let .int32(v): Int(v)
        case let .uint64(v): Int(exactly: v)
        case let .int64(v): Int(v)
        default: nil
        }
    }

    public var double: Double? {
        switch self {
        case let .float32(v): Double(v)
        case let .float64(v): v
        default: int.map(Double.init)
        }
    }

    public var string: String? { if case let .string(s) = self { s } else { nil } }
    public var array: [GGUFValue]? { if case let .array(a) = self { a } else { nil } }
    public var bool: Bool? { if case let .bool(b) = self { b } else { nil } }

    public var description: String {
        switch self {
        case let .string(s): s.count > 60 ? "\"\(s.prefix(57))...\"" : "\"\(s)\""
        case let .array(a): "[\(a.count) items]"
        case let .bool(b): "\(b)"
        case let .float32(v): "\(v)"
        case let .float64(v): "\(v)"
        default: "\(int ?? 0)"
        }
    }
}

public enum GGUFError: Error, Equatable, CustomStringConvertible {
    case badMagic(path: String, found: UInt32)
    case unsupportedVersion(path: String, version: UInt32, hint: String?)
    case truncated(path: String, what: String, offset: Int, needed: Int, available: Int)
    case countTooLarge(path: String, what: String, count: UInt64, remaining: Int)
    case invalidUTF8(path: String, what: String)
    case duplicateKey(path: String, key: String)
    case duplicateTensor(path: String, name: String)
    case badValue(path: String, key: String, detail: String)
    case badAlignment(path: String, value: String)
    case badDimensions(path: String, tensor: String, detail: String)
    case unsupportedTensorType(path: String, tensor: String, type: UInt32)
    case rowNotMultipleOfBlock(path: String, tensor: String, columns: Int, blockSize: Int)
    case tensorOutOfBounds(path: String, tensor: String, offset: UInt64, bytes: UInt64, dataSize: UInt64)
    case overlappingTensors(path: String, first: String, second: String)

    public var description: String {
        switch self {
        case let .badMagic(path, found):
            "\(path): not a GGUF file (magic 0x\(String(found, radix: 16)), expected 0x46554747 \"GGUF\")"
        case let .unsupportedVersion(path, version, hint):
            "\(path): GGUF version \(version) is not supported (2 and 3 are)" + (hint.map { "; this looks like \($0)" } ?? "")
        case let .truncated(path, what, offset, needed, available):
            "\(path): truncated: \(what) at byte \(offset) needs \(needed) bytes, \(available) remain"
        case let .countTooLarge(path, what, count, remaining):
            "\(path): \(count) \(what) cannot fit in the \(remaining) bytes that remain (corrupt count)"
        case let .invalidUTF8(path, what): "\(path): \(what) is not valid UTF-8"
        case let .duplicateKey(path, key): "\(path): metadata key '\(key)' appears twice"
        case let .duplicateTensor(path, name): "\(path): tensor '\(name)' appears twice"
        case let .badValue(path, key, detail): "\(path): metadata '\(key)': \(detail)"
        case let .badAlignment(path, value): "\(path): general.alignment \(value) is not a power of two up to 1 MiB"
        case let .badDimensions(path, tensor, detail): "\(path): tensor '\(tensor)': \(detail)"
        case let .unsupportedTensorType(path, tensor, type):
            "\(path): tensor '\(tensor)' has ggml type \(type), which qlora cannot read (F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K–Q6_K are supported)"
        case let .rowNotMultipleOfBlock(path, tensor, columns, blockSize):
            "\(path): tensor '\(tensor)' has \(columns) columns, not a multiple of its block size \(blockSize)"
        case let .tensorOutOfBounds(path, tensor, offset, bytes, dataSize):
            "\(path): tensor '\(tensor)' at data offset \(offset) with \(bytes) bytes runs past the \(dataSize) bytes of tensor data (truncated file?)"
        case let .overlappingTensors(path, first, second): "\(path): tensors '\(first)' and '\(second)' overlap"
        }
    }
}
