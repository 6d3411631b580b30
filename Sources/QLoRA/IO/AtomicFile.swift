import Foundation

/// Files that appear complete or not at all: written beside their path as `<path>.partial`,
/// flushed to disk, then renamed over the path. A run killed mid-write leaves the old file
/// (or none) and a `.partial` that the next write replaces.
public enum AtomicFile {
    static let partialSuffix = ".partial"

    public static func write(to path: String, _ body: (FileHandle) throws -> Void) throws {
        let tmp = path + partialSuffix
        guard FileManager.default.createFile(atPath: tmp, contents: nil), let handle = FileHandle(forWritingAtPath: tmp) else {
            throw FileError.cannotOpen(path: tmp, reason: "cannot create (does the folder exist and is it writable?)")
        }
        do {
            try body(handle)
            try handle.synchronize()
            try handle.close()
            guard rename(tmp, path) == 0 else { throw FileError.cannotOpen(path: path, reason: String(cString: strerror(errno))) }
        } catch {
            try? handle.close()
            try? FileManager.default.removeItem(atPath: tmp)
            throw error
        }
    }

    /// A container file streamed chunk by chunk: `header`, then `data(i)` for each chunk,
    /// which must have `sizes[i]` bytes, zero-padded to `alignment` between chunks.
    static func writeChunks(to path: String, header: [UInt8], sizes: [(name: String, bytes: Int)], alignment: Int = 1,
                            data: (Int) throws -> [UInt8]) throws {
        try write(to: path) { handle in
            try handle.write(contentsOf: header)
            for (i, size) in sizes.enumerated() {
                let bytes = try data(i)
                precondition(bytes.count == size.bytes, "tensor \(size.name): \(bytes.count) bytes for \(size.bytes)")
                try handle.write(contentsOf: bytes)
                let pad = (alignment - bytes.count % alignment) % alignment
                if pad > 0 && i < sizes.count - 1 { try handle.write(contentsOf: [UInt8](repeating: 0, count: pad)) }
            }
        }
    }

    public static func write(to path: String, bytes: [UInt8]) throws {
        try write(to: path) { try $0.write(contentsOf: bytes) }
    }
}
