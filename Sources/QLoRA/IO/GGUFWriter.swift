import Foundation
import Quant

/// Writes GGUF v3 files, streaming one tensor at a time: the header (metadata and tensor
/// infos with their offsets) is computed from the shapes and types up front, then each
/// tensor's bytes are asked for in order, so peak memory is one tensor. The file appears at
/// its path only when complete (written beside it, then renamed).
public struct GGUFWriter {
    public struct TensorSpec: Sendable {
        public var name: String
        /// ggml order: ne[0] = columns.
        public var ne: [Int]
        public var type: GGMLType

        public init(name: String, ne: [Int], type: GGMLType) {
            self.name = name
            self.ne = ne
            self.type = type
        }

        public var byteCount: Int { ne.reduce(1, *) / type.blockSize * type.blockBytes }
    }

    public var metadata: [(key: String, value: GGUFValue)] = []
    public var tensors: [TensorSpec] = []
    public var alignment = 32

    public init() {}

    /// Header bytes, including the padding before the tensor data.
    public func header() -> [UInt8] {
        var out: [UInt8] = []
        func put<T: FixedWidthInteger>(_ v: T) { withUnsafeBytes(of: v.littleEndian) { out.append(contentsOf: $0) } }
        func put(_ s: String) {
            put(UInt64(s.utf8.count))
            out.append(contentsOf: s.utf8)
        }
        func put(value v: GGUFValue) {
            switch v {
            case let .uint8(x): put(x)
            case let .int8(x): put(x)
            case let .uint16(x): put(x)
            case let .int16(x): put(x)
            case let .uint32(x): put(x)
            case let .int32(x): put(x)
            case let .float32(x): put(x.bitPattern)
            case let .bool(x): put(UInt8(x ? 1 : 0))
            case let .string(x): put(x)
            case let .array(items):
                put(items.first?.type.rawValue ?? GGUFValueType.uint32.rawValue)
                put(UInt64(items.count))
                items.forEach { put(value: $0) }
            case let .uint64(x): put(x)
            case let .int64(x): put(x)
            case let .float64(x): put(x.bitPattern)
            }
        }
        put(UInt32(0x4655_4747))
        put(UInt32(3))
        put(UInt64(tensors.count))
        var meta = metadata
        if alignment != 32, !meta.contains(where: { $0.key == "general.alignment" }) {
            meta.append(("general.alignment", .uint32(UInt32(alignment))))
        }
        put(UInt64(meta.count))
        for (k, v) in meta {
            put(k)
            put(v.type.rawValue)
            put(value: v)
        }
        var offset = 0
        for t in tensors {
            put(t.name)
            put(UInt32(t.ne.count))
            t.ne.forEach { put(UInt64($0)) }
            put(t.type.rawValue)
            put(UInt64(offset))
            offset += (t.byteCount + alignment - 1) / alignment * alignment
        }
        out.append(contentsOf: [UInt8](repeating: 0, count: (alignment - out.count % alignment) % alignment))
        return out
    }

    /// Writes the file; `data(i)` must return exactly `tensors[i].byteCount` bytes.
    public func write(to path: String, data: (Int) throws -> [UInt8]) throws {
        try AtomicFile.writeChunks(to: path, header: header(), sizes: tensors.map { ($0.name, $0.byteCount) }, alignment: alignment, data: data)
    }

    /// The whole file in memory (for tests and small files).
    public func serialize(data: (Int) -> [UInt8]) -> [UInt8] {
        var out = header()
        for (i, t) in tensors.enumerated() {
            out += data(i)
            if i < tensors.count - 1 { out += [UInt8](repeating: 0, count: (alignment - t.byteCount % alignment) % alignment) }
        }
        return out
    }
}
