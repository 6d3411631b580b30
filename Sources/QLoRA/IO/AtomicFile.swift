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
        try writeChunks(to: path, header: header, sizes: sizes, alignment: alignment) { i, write in
            try data(i).withUnsafeBytes { try write($0) }
        }
    }

    /// The same, each chunk handed over in as many pieces as its producer likes (`write` may be
    /// called any number of times; the pieces must add up to `sizes[i]` bytes): a chunk larger
    /// than memory allows never exists whole.
    static func writeChunks(to path: String, header: [UInt8], sizes: [(name: String, bytes: Int)], alignment: Int = 1,
                            pieces: (Int, _ write: (UnsafeRawBufferPointer) throws -> Void) throws -> Void) throws {
        try write(to: path) { handle in
            try handle.write(contentsOf: header)
            for (i, size) in sizes.enumerated() {
                var written = 0
                try pieces(i) { piece in
                    written += piece.count
                    precondition(written <= size.bytes, "tensor \(size.name): more than \(size.bytes) bytes")
                    try handle.write(contentsOf: piece)
                }
                precondition(written == size.bytes, "tensor \(size.name): \(written) bytes for \(size.bytes)")
                let pad = (alignment - written % alignment) % alignment
                if pad > 0 && i < sizes.count - 1 { try handle.write(contentsOf: [UInt8](repeating: 0, count: pad)) }
            }
        }
    }

    public static func write(to path: String, bytes: [UInt8]) throws {
        try write(to: path) { try $0.write(contentsOf: bytes) }
    }
}
