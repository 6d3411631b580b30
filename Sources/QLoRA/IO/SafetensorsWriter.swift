import Foundation

/// Writes a safetensors file, streaming one tensor at a time: the header is computed from the
/// shapes and dtypes up front (padded with spaces so the data starts 8-byte aligned, as the
/// reference writer does), then each tensor's bytes are asked for in order. The file appears
/// at its path only when complete.
public struct SafetensorsWriter {
    public struct TensorSpec: Sendable {
        public var name: String
        public var dtype: SafetensorsDType
        public var shape: [Int]

        public init(name: String, dtype: SafetensorsDType, shape: [Int]) {
            self.name = name
            self.dtype = dtype
            self.shape = shape
        }

        public var byteCount: Int { shape.reduce(1, *) * dtype.size }
    }

    public var tensors: [TensorSpec] = []
    public var metadata: [String: String] = ["format": "pt"]

    public init() {}

    public func header() -> [UInt8] {
        var parts: [String] = []
        if !metadata.isEmpty {
            let m = metadata.sorted { $0.key < $1.key }.map { "\(jsonString($0.key)):\(jsonString($0.value))" }
            parts.append("\"__metadata__\":{\(m.joined(separator: ","))}")
        }
        var offset = 0
        for t in tensors {
            let end = offset + t.byteCount
            parts.append("\(jsonString(t.name)):{\"dtype\":\"\(t.dtype.rawValue)\",\"shape\":[\(t.shape.map(String.init).joined(separator: ","))],\"data_offsets\":[\(offset),\(end)]}")
            offset = end
        }
        var json = Array("{\(parts.joined(separator: ","))}".utf8)
        while (json.count + 8) % 8 != 0 { json.append(0x20) }
        var out: [UInt8] = []
        withUnsafeBytes(of: UInt64(json.count).littleEndian) { out.append(contentsOf: $0) }
        return out + json
    }

    /// Writes the file; `data(i)` must return exactly `tensors[i].byteCount` bytes.
    public func write(to path: String, data: (Int) throws -> [UInt8]) throws {
        try AtomicFile.writeChunks(to: path, header: header(), sizes: tensors.map { ($0.name, $0.byteCount) }, data: data)
    }

    /// Writes the file with each tensor's bytes handed over in pieces: `pieces(i, write)` calls
    /// `write` as often as it likes with bytes adding up to `tensors[i].byteCount`, so no
    /// tensor need exist whole in memory.
    public func write(to path: String, pieces: (Int, _ write: (UnsafeRawBufferPointer) throws -> Void) throws -> Void) throws {
        try AtomicFile.writeChunks(to: path, header: header(), sizes: tensors.map { ($0.name, $0.byteCount) }, pieces: pieces)
    }

    private func jsonString(_ s: String) -> String {
        let data = try! JSONSerialization.data(withJSONObject: [s], options: [.withoutEscapingSlashes])
        return String(decoding: data.dropFirst().dropLast(), as: UTF8.self)
    }
}
