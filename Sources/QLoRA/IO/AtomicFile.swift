#if canImport(Glibc)
import Glibc
#endif
import Foundation

/// Files that appear complete or not at all: written beside their path as `<path>.partial`,
/// flushed to disk, then renamed over the path. A run killed mid-write leaves the old file
/// (or none) and a `.partial` that the next write replaces.
public enum AtomicFile {
    static let partialSuffix = ".partial"

    /// `expectedBytes`: the file's size when known, for the message of a full disk.
    public static func write(to path: String, expectedBytes: Int? = nil, _ body: (FileHandle) throws -> Void) throws {
        let tmp = path + partialSuffix
        guard FileManager.default.createFile(atPath: tmp, contents: nil), let handle = FileHandle(forWritingAtPath: tmp) else {
            throw FileError.cannotOpen(path: tmp, reason: "cannot create (does the folder exist and is it writable?)")
        }
        do {
            try body(handle)
            if let fault = faultInjection?(path) { throw NSError(domain: NSPOSIXErrorDomain, code: Int(fault)) }
            try handle.synchronize()
            try handle.close()
            guard rename(tmp, path) == 0 else { throw FileError.cannotOpen(path: path, reason: String(cString: strerror(errno))) }
        } catch {
            let written = (try? FileManager.default.attributesOfItem(atPath: tmp)[.size] as? Int) ?? 0
            try? handle.close()
            try? FileManager.default.removeItem(atPath: tmp)
            throw translated(error, path: path, written: written, expected: expectedBytes)
        }
    }

    /// Tests only: an errno to fail the write of a path with after its bytes went out (as a
    /// device reports EIO, or a full disk ENOSPC, at fsync), nil to let it through.
    nonisolated(unsafe) static var faultInjection: ((String) -> Int32?)?

    /// The errno behind a write error: Foundation reports a full disk as NSCocoaErrorDomain 640
    /// (NSFileWriteOutOfSpaceError), other failures with the POSIX error beneath.
    static func posixCode(of error: Error) -> Int32? {
        let e = error as NSError
        if e.domain == NSPOSIXErrorDomain { return Int32(e.code) }
        if let under = e.userInfo[NSUnderlyingErrorKey] as? NSError, under.domain == NSPOSIXErrorDomain { return Int32(under.code) }
        if e.domain == NSCocoaErrorDomain, e.code == 640 { return ENOSPC }
        return nil
    }

    /// A full disk as `FileError.noSpace` (with what was written, what was needed and what is
    /// free), an I/O error with the path; anything else as it came.
    static func translated(_ error: Error, path: String, written: Int, expected: Int?) -> Error {
        guard let code = posixCode(of: error) else { return error }
        switch code {
        case ENOSPC, EDQUOT:
            return FileError.noSpace(path: path, written: written, needed: expected, available: freeBytes(near: path))
        case EIO:
            return FileError.cannotWrite(path: path, reason: "input/output error (EIO) from the device after \(FileError.bytes(written)); "
                                         + "nothing it would replace was touched")
        default:
            return FileError.cannotWrite(path: path, reason: String(cString: strerror(code)))
        }
    }

    /// Bytes an unprivileged writer may still use on the file system holding `path`'s folder.
    static func freeBytes(near path: String) -> Int? {
        var st = statvfs()
        let dir = (path as NSString).deletingLastPathComponent
        guard statvfs(dir.isEmpty ? "." : dir, &st) == 0 else { return nil }
        return Int(st.f_bavail) * Int(st.f_frsize)
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
        let total = header.count + sizes.enumerated().reduce(0) { sum, e in
            sum + e.element.bytes + (e.offset < sizes.count - 1 ? (alignment - e.element.bytes % alignment) % alignment : 0)
        }
        try write(to: path, expectedBytes: total) { handle in
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
        try write(to: path, expectedBytes: bytes.count) { try $0.write(contentsOf: bytes) }
    }
}
