import Foundation
import Quant

/// A safetensors file, memory-mapped and validated as the reference implementation does
/// (huggingface/safetensors, tensor.rs): a bounded header, every shape folded with overflow
/// checks, byte ranges that match dtype × shape, and tensors that tile the data section
/// exactly, without holes or overlaps.
///
/// Layout: `u64 N` (little-endian) · N bytes of UTF-8 JSON
/// `{"name": {"dtype": "F16", "shape": [..], "data_offsets": [begin, end]}, "__metadata__": {..}}`
/// · the data section, offsets relative to its start.
public final class SafetensorsFile: @unchecked Sendable {
    public let file: MappedFile
    /// Tensors in data order.
    public let tensors: [SafetensorsTensor]
    public let metadata: [String: String]
    public let dataOffset: Int
    private let index: [String: Int]

    /// The reference implementation's bound on the header (MAX_HEADER_SIZE).
    public static let maxHeaderSize = 100_000_000

    public convenience init(path: String) throws {
        try self.init(file: MappedFile(path: path))
    }

    public init(file: MappedFile) throws(SafetensorsError) {
        self.file = file
        let path = file.path
        guard file.count >= 8 else { throw .truncated(path: path, detail: "\(file.count) bytes, the header size alone takes 8") }
        let n = file.bytes.loadUnaligned(as: UInt64.self).littleEndian
        guard n <= UInt64(Self.maxHeaderSize) else { throw .headerTooLarge(path: path, size: n, limit: Self.maxHeaderSize) }
        guard n <= UInt64(file.count - 8) else {
            throw .truncated(path: path, detail: "the header claims \(n) bytes but only \(file.count - 8) follow")
        }
        let headerBytes = UnsafeRawBufferPointer(rebasing: file.bytes[8..<(8 + Int(n))])
        guard String(validating: headerBytes, as: UTF8.self) != nil else { throw .headerNotUTF8(path: path) }
        let header: [String: HeaderEntry]
        do {
            header = try JSONDecoder().decode([String: HeaderEntry].self, from: Data(headerBytes))
        } catch let DecodingError.typeMismatch(_, context), let DecodingError.dataCorrupted(context),
                let DecodingError.keyNotFound(_, context), let DecodingError.valueNotFound(_, context) {
            let at = context.codingPath.map(\.stringValue).joined(separator: ".")
            throw .badHeader(path: path, detail: (at.isEmpty ? "" : "at '\(at)': ") + context.debugDescription)
        } catch {
            throw .badHeader(path: path, detail: "\(error)")
        }
        dataOffset = 8 + Int(n)
        let dataSize = file.count - dataOffset

        var metadata: [String: String] = [:]
        var tensors: [SafetensorsTensor] = []
        for (name, entry) in header {
            guard case let .tensor(dtypeName, shape, offsets) = entry else {
                guard name == "__metadata__", case let .metadata(m) = entry else {
                    throw .badTensor(path: path, tensor: name, detail: "entry has no dtype")
                }
                metadata = m
                continue
            }
            guard let dtype = SafetensorsDType(rawValue: dtypeName) else { throw .unknownDType(path: path, tensor: name, dtype: dtypeName) }
            guard shape.allSatisfy({ $0 >= 0 }) else {
                throw .badTensor(path: path, tensor: name, detail: "shape \(shape) has a negative dimension")
            }
            guard offsets.count == 2, offsets[0] >= 0, offsets[0] <= offsets[1] else {
                throw .badTensor(path: path, tensor: name, detail: "data_offsets \(offsets) is not [begin, end] with 0 ≤ begin ≤ end")
            }
            var count = 1
            for d in shape {
                let (p, o) = count.multipliedReportingOverflow(by: d)
                guard !o else { throw .badTensor(path: path, tensor: name, detail: "shape \(shape) overflows") }
                count = p
            }
            let (bytes, o) = count.multipliedReportingOverflow(by: dtype.size)
            guard !o, bytes == offsets[1] - offsets[0] else {
                throw .badTensor(path: path, tensor: name,
                                 detail: "\(dtypeName) \(shape) needs \(o ? "too many" : "\(bytes)") bytes, data_offsets span \(offsets[1] - offsets[0])")
            }
            guard offsets[1] <= dataSize else {
                throw .tensorOutOfBounds(path: path, tensor: name, end: offsets[1], dataSize: dataSize)
            }
            tensors.append(SafetensorsTensor(name: name, dtype: dtype, shape: shape, offset: dataOffset + offsets[0], byteCount: bytes))
        }
        tensors.sort { ($0.offset, $0.byteCount, $0.name) < ($1.offset, $1.byteCount, $1.name) }
        var end = dataOffset
        for t in tensors {
            guard t.offset == end else {
                throw t.offset < end ? .overlappingTensors(path: path, tensor: t.name)
                                     : .hole(path: path, before: t.name, bytes: t.offset - end)
            }
            end += t.byteCount
        }
        guard end == file.count else { throw .hole(path: path, before: "the end of the file", bytes: file.count - end) }
        self.tensors = tensors
        self.metadata = metadata
        index = Dictionary(uniqueKeysWithValues: tensors.enumerated().map { ($1.name, $0) })
    }

    /// One value of the header object: a tensor entry, or the string map under "__metadata__".
    private enum HeaderEntry: Decodable {
        case tensor(dtype: String, shape: [Int], offsets: [Int])
        case metadata([String: String])

        enum Keys: String, CodingKey { case dtype, shape, data_offsets }

        init(from decoder: Decoder) throws {
            let c = try decoder.container(keyedBy: Keys.self)
            if c.contains(.dtype) {
                self = .tensor(dtype: try c.decode(String.self, forKey: .dtype), shape: try c.decode([Int].self, forKey: .shape),
                               offsets: try c.decode([Int].self, forKey: .data_offsets))
            } else {
                self = .metadata(try [String: String](from: decoder))
            }
        }
    }

    public func tensor(_ name: String) -> SafetensorsTensor? { index[name].map { tensors[$0] } }

    public func data(of tensor: SafetensorsTensor) -> UnsafeRawBufferPointer {
        UnsafeRawBufferPointer(rebasing: file.bytes[tensor.offset..<(tensor.offset + tensor.byteCount)])
    }

    /// A floating-point tensor (F32, F16, BF16, F64) in fp32.
    public func floats(_ tensor: SafetensorsTensor) throws(SafetensorsError) -> [Float] {
        let raw = data(of: tensor)
        switch tensor.dtype {
        case .F32: return Array(raw.bindMemory(to: Float.self))
        case .F16: return (0..<tensor.count).map { FP16.float(fromBits: raw.loadUnaligned(fromByteOffset: 2 * $0, as: UInt16.self)) }
        case .BF16: return (0..<tensor.count).map { BF16.float(fromBits: raw.loadUnaligned(fromByteOffset: 2 * $0, as: UInt16.self)) }
        case .F64: return (0..<tensor.count).map { Float(raw.loadUnaligned(fromByteOffset: 8 * $0, as: Double.self)) }
        default: throw .notFloatingPoint(path: file.path, tensor: tensor.name, dtype: tensor.dtype.rawValue)
        }
    }
}

public enum SafetensorsDType: String, Sendable, CaseIterable {
    case F64, F32, F16, BF16, I64, I32, I16, I8, U8, BOOL

    public var size: Int {
        switch self {
        case .F64, .I64: 8
        case .F32, .I32: 4
        case .F16, .BF16, .I16: 2
        case .I8, .U8, .BOOL: 1
        }
    }
}

public struct SafetensorsTensor: Sendable, Equatable {
    public let name: String
    public let dtype: SafetensorsDType
    public let shape: [Int]
    /// Absolute offset in the file.
    public let offset: Int
    public let byteCount: Int
    public var count: Int { shape.reduce(1, *) }
}

public enum SafetensorsError: Error, Equatable, CustomStringConvertible {
    case truncated(path: String, detail: String)
    case headerTooLarge(path: String, size: UInt64, limit: Int)
    case headerNotUTF8(path: String)
    case badHeader(path: String, detail: String)
    case badTensor(path: String, tensor: String, detail: String)
    case unknownDType(path: String, tensor: String, dtype: String)
    case tensorOutOfBounds(path: String, tensor: String, end: Int, dataSize: Int)
    case overlappingTensors(path: String, tensor: String)
    case hole(path: String, before: String, bytes: Int)
    case notFloatingPoint(path: String, tensor: String, dtype: String)

    public var description: String {
        switch self {
        case let .truncated(path, detail): "\(path): truncated safetensors file: \(detail)"
        case let .headerTooLarge(path, size, limit): "\(path): header of \(size) bytes exceeds the \(limit)-byte limit (corrupt file?)"
        case let .headerNotUTF8(path): "\(path): the header is not valid UTF-8"
        case let .badHeader(path, detail): "\(path): bad header: \(detail)"
        case let .badTensor(path, tensor, detail): "\(path): tensor '\(tensor)': \(detail)"
        case let .unknownDType(path, tensor, dtype):
            "\(path): tensor '\(tensor)' has dtype \(dtype); known: \(SafetensorsDType.allCases.map(\.rawValue).joined(separator: ", "))"
        case let .tensorOutOfBounds(path, tensor, end, dataSize):
            "\(path): tensor '\(tensor)' ends at data byte \(end) but the data section has \(dataSize) (truncated file?)"
        case let .overlappingTensors(path, tensor): "\(path): tensor '\(tensor)' overlaps the one before it"
        case let .hole(path, before, bytes): "\(path): \(bytes) bytes belong to no tensor, before \(before)"
        case let .notFloatingPoint(path, tensor, dtype): "\(path): tensor '\(tensor)' is \(dtype), not a floating-point type"
        }
    }
}
