#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import Foundation

/// A whole file mapped read-only into memory. Model files are treated as hostile: readers
/// take bytes from here only through `ByteReader` (bounds-checked) or after validating
/// offsets against `bytes.count`.
public final class MappedFile: @unchecked Sendable {
    public let path: String
    public let bytes: UnsafeRawBufferPointer

    public init(path: String) throws(FileError) {
        self.path = path
        let fd = open(path, O_RDONLY)
        guard fd >= 0 else { throw .cannotOpen(path: path, reason: String(cString: strerror(errno))) }
        defer { close(fd) }
        var st = stat()
        guard fstat(fd, &st) == 0 else { throw .cannotOpen(path: path, reason: String(cString: strerror(errno))) }
        guard (st.st_mode & S_IFMT) == S_IFREG else { throw .cannotOpen(path: path, reason: "not a regular file") }
        let size = Int(st.st_size)
        if size == 0 {
            bytes = UnsafeRawBufferPointer(start: nil, count: 0)
            return
        }
        guard let p = mmap(nil, size, PROT_READ, MAP_PRIVATE, fd, 0), p != MAP_FAILED else {
            throw .cannotOpen(path: path, reason: "mmap failed: \(String(cString: strerror(errno)))")
        }
        bytes = UnsafeRawBufferPointer(start: p, count: size)
    }

    /// Bytes held in memory under a name, for readers fed from memory (fuzzing, tests).
    public init(copying source: UnsafeRawBufferPointer, name: String) {
        path = name
        let p = UnsafeMutableRawPointer.allocate(byteCount: max(source.count, 1), alignment: 64)
        if let base = source.baseAddress, source.count > 0 { p.copyMemory(from: base, byteCount: source.count) }
        bytes = UnsafeRawBufferPointer(start: p, count: source.count)
        inMemory = true
    }

    private var inMemory = false

    deinit {
        guard let base = bytes.baseAddress else { return }
        if inMemory { UnsafeMutableRawPointer(mutating: base).deallocate() } else { munmap(UnsafeMutableRawPointer(mutating: base), bytes.count) }
    }

    public var count: Int { bytes.count }

    /// Tells the kernel the pages of [offset, offset + count) will not be needed soon, so a
    /// streaming pass over a large file does not keep it all resident.
    public func release(offset: Int, count: Int) {
        guard let base = bytes.baseAddress, count > 0 else { return }
        let page = Int(sysconf(Int32(_SC_PAGESIZE)))
        let start = (offset + page - 1) / page * page, end = (offset + count) / page * page
        guard end > start else { return }
        madvise(UnsafeMutableRawPointer(mutating: base + start), end - start, Int32(MADV_DONTNEED))
    }

    /// The bytes [offset, offset + count) after checking they lie inside the file.
    public func slice(offset: Int, count: Int, what: @autoclosure () -> String) throws(FileError) -> UnsafeRawBufferPointer {
        let (end, overflow) = offset.addingReportingOverflow(count)
        guard offset >= 0, count >= 0, !overflow, end <= bytes.count else {
            throw .outOfBounds(path: path, what: what(), offset: offset, count: count, fileSize: bytes.count)
        }
        return UnsafeRawBufferPointer(rebasing: bytes[offset..<end])
    }
}

public enum FileError: Error, Equatable, CustomStringConvertible {
    /// 1.5 MB, 12 KB, 300 B.
    static func bytes(_ n: Int) -> String {
        n >= 1_000_000 ? String(format: "%.1f MB", Double(n) / 1e6) : n >= 1000 ? String(format: "%.1f KB", Double(n) / 1e3) : "\(n) B"
    }

    case cannotOpen(path: String, reason: String)
    case outOfBounds(path: String, what: String, offset: Int, count: Int, fileSize: Int)
    /// Creating, renaming or syncing an output failed.
    case cannotWrite(path: String, reason: String)
    /// The file system ran out of space (ENOSPC, or a quota: EDQUOT) while `path` was written:
    /// `written` of `needed` bytes (nil: unknown) were, `available` bytes are free there.
    case noSpace(path: String, written: Int, needed: Int?, available: Int?)

    public var description: String {
        switch self {
        case let .cannotOpen(path, reason): "\(path): cannot open: \(reason)"
        case let .outOfBounds(path, what, offset, count, fileSize):
            "\(path): \(what) needs bytes \(offset)..<\(offset &+ count) but the file has \(fileSize) (truncated or corrupt)"
        case let .cannotWrite(path, reason): "\(path): cannot write: \(reason)"
        case let .noSpace(path, written, needed, available):
            "\(path): cannot write: no space left on device (\(Self.bytes(written))\(needed.map { " of \(Self.bytes($0))" } ?? "") written"
                + "\(available.map { "; \(Self.bytes($0)) free there" } ?? "")); nothing it would replace was touched"
                + "\n---> HINT: free space (or point the output elsewhere) and run the command again; a training run continues with --resume"
        }
    }
}

/// A cursor over untrusted little-endian bytes. Every read checks the bytes remain and
/// throws `truncated` naming what was being read and where.
struct ByteReader {
    let bytes: UnsafeRawBufferPointer
    private(set) var offset: Int
    var remaining: Int { bytes.count - offset }

    init(_ bytes: UnsafeRawBufferPointer, offset: Int = 0) {
        self.bytes = bytes
        self.offset = offset
    }

    struct Truncated: Error {
        let what: String
        let offset: Int
        let needed: Int
        let available: Int
    }

    mutating func read<T: FixedWidthInteger>(_: T.Type, _ what: @autoclosure () -> String) throws(Truncated) -> T {
        let n = MemoryLayout<T>.size
        guard remaining >= n else { throw Truncated(what: what(), offset: offset, needed: n, available: remaining) }
        let v = T(littleEndian: bytes.loadUnaligned(fromByteOffset: offset, as: T.self))
        offset += n
        return v
    }

    mutating func bytes(_ count: Int, _ what: @autoclosure () -> String) throws(Truncated) -> UnsafeRawBufferPointer {
        guard count >= 0, remaining >= count else {
            throw Truncated(what: what(), offset: offset, needed: count, available: remaining)
        }
        defer { offset += count }
        return UnsafeRawBufferPointer(rebasing: bytes[offset..<(offset + count)])
    }

    mutating func skip(to newOffset: Int, _ what: @autoclosure () -> String) throws(Truncated) {
        guard newOffset >= offset, newOffset <= bytes.count else {
            throw Truncated(what: what(), offset: offset, needed: newOffset - offset, available: remaining)
        }
        offset = newOffset
    }
}
