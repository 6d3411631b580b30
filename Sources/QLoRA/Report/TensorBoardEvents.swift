import Foundation

/// TensorBoard event files (`--report-to tensorboard`): what `tensorboard --logdir RUN/tensorboard`
/// and its `EventAccumulator` read (tools/check_tensorboard.py checks that they do).
///
/// A file is a TFRecord stream, each record:
///
///     length       uint64 little-endian
///     masked CRC32C of those 8 bytes      uint32 LE (CRC32C.mask)
///     data         `length` bytes: one serialized Event protobuf
///     masked CRC32C of the data           uint32 LE
///
/// The Events, hand-encoded (tensorboard/compat/proto/event.proto, summary.proto; field
/// number, protobuf wire type):
///
///     Event      wall_time 1 (fixed64 double), step 2 (varint),
///                file_version 3 (bytes) | summary 5 (message) | session_log 7 (message)
///     Summary    value 1 (repeated message)
///     Value      tag 1 (bytes), simple_value 2 (fixed32 float)
///     SessionLog status 1 (varint): START = 1
///
/// The first record of a file is `file_version: "brain.Event:2"`; then one Event per metrics
/// row holding all its scalars (RunScalars' tags). A resumed run writes a new file that opens
/// with a SessionLog START at the first update it makes again: the reader then drops what
/// earlier files hold from that step on (updates the killed run made after its checkpoint),
/// as metrics.jsonl drops them.
///
/// Records are written as they come (a killed process loses none the kernel has); `sync()`
/// puts them on disk, at each evaluation.
public final class TensorBoardEventWriter {
    public let path: String
    private let handle: FileHandle

    /// A new event file in `directory` (created if needed), named as TensorBoard's writers
    /// name theirs (`events.out.tfevents.<seconds>.<host>.<pid>`), after every event file
    /// already there in name order (the order readers load them in). `restartAt`: the step a
    /// resumed run goes on from, announced by a SessionLog START.
    public init(directory: String, restartAt: Int? = nil, wallTime: Double = Date().timeIntervalSince1970) throws {
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        let existing = ((try? FileManager.default.contentsOfDirectory(atPath: directory)) ?? []).filter { $0.contains("tfevents") }
        let pid = ProcessInfo.processInfo.processIdentifier
        let host = ProcessInfo.processInfo.hostName.filter { $0.isLetter || $0.isNumber || $0 == "-" || $0 == "." }
        // Seconds since 1970 have 10 digits until 2286, so the name order is the time order.
        let newest = existing.compactMap { Int($0.split(separator: ".").dropFirst(3).first ?? "") }.max() ?? 0
        let seconds = max(Int(wallTime), newest + 1)
        let name = "events.out.tfevents.\(seconds).\(host).\(pid)"
        path = directory + "/" + name
        guard FileManager.default.createFile(atPath: path, contents: nil), let handle = FileHandle(forWritingAtPath: path) else {
            throw FileError.cannotWrite(path: path, reason: "cannot create (is the folder writable?)")
        }
        self.handle = handle
        try write(Self.event(wallTime: wallTime, step: 0) { $0.bytes(3, Array("brain.Event:2".utf8)) })
        if let restartAt {
            try write(Self.event(wallTime: wallTime, step: restartAt) { $0.message(7) { $0.varint(1, 1) } })
        }
    }

    deinit { try? handle.close() }

    /// One Event with `scalars` as a Summary of simple values (rounded to float, as TensorBoard
    /// keeps them).
    public func write(step: Int, scalars: [(tag: String, value: Double)], wallTime: Double = Date().timeIntervalSince1970) throws {
        guard !scalars.isEmpty else { return }
        try write(Self.event(wallTime: wallTime, step: step) { event in
            event.message(5) { summary in
                for (tag, value) in scalars {
                    summary.message(1) {
                        $0.bytes(1, Array(tag.utf8))
                        $0.float(2, Float(value))
                    }
                }
            }
        })
    }

    /// Flushes what was written to disk (fsync).
    public func sync() throws {
        do { try handle.synchronize() } catch { throw FileError.cannotWrite(path: path, reason: "fsync: \(error)") }
    }

    private func write(_ event: [UInt8]) throws {
        do { try handle.write(contentsOf: Self.record(event)) } catch { throw FileError.cannotWrite(path: path, reason: "\(error)") }
    }

    /// An Event: wall_time, step, then what `body` adds.
    static func event(wallTime: Double, step: Int, _ body: (inout ProtobufWriter) -> Void) -> [UInt8] {
        var w = ProtobufWriter()
        w.double(1, wallTime)
        w.varint(2, UInt64(bitPattern: Int64(step)))
        body(&w)
        return w.bytes
    }

    /// `data` framed as a TFRecord (the table above).
    public static func record(_ data: [UInt8]) -> [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity(data.count + 16)
        func le<T: FixedWidthInteger>(_ v: T) -> [UInt8] { withUnsafeBytes(of: v.littleEndian) { Array($0) } }
        let length = le(UInt64(data.count))
        out += length
        out += le(CRC32C.masked(length))
        out += data
        out += le(CRC32C.masked(data))
        return out
    }
}

/// The few protobuf encodings an Event needs: a key is (field << 3 | wire type); wire types
/// 0 varint, 1 fixed 64 bits, 2 length-delimited, 5 fixed 32 bits; little-endian throughout.
struct ProtobufWriter {
    var bytes: [UInt8] = []

    private mutating func raw(_ v: UInt64) {
        var v = v
        while v >= 0x80 {
            bytes.append(UInt8(v & 0x7F) | 0x80)
            v >>= 7
        }
        bytes.append(UInt8(v))
    }

    private mutating func key(_ field: Int, _ wire: UInt64) { raw(UInt64(field) << 3 | wire) }

    mutating func varint(_ field: Int, _ v: UInt64) {
        key(field, 0)
        raw(v)
    }

    mutating func double(_ field: Int, _ v: Double) {
        key(field, 1)
        withUnsafeBytes(of: v.bitPattern.littleEndian) { bytes += $0 }
    }

    mutating func float(_ field: Int, _ v: Float) {
        key(field, 5)
        withUnsafeBytes(of: v.bitPattern.littleEndian) { bytes += $0 }
    }

    mutating func bytes(_ field: Int, _ data: [UInt8]) {
        key(field, 2)
        raw(UInt64(data.count))
        bytes += data
    }

    /// A nested message, built by `body`.
    mutating func message(_ field: Int, _ body: (inout ProtobufWriter) -> Void) {
        var inner = ProtobufWriter()
        body(&inner)
        bytes(field, inner.bytes)
    }
}
