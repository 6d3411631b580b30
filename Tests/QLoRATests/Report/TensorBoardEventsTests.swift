import Foundation
@testable import QLoRA
import XCTest

/// TensorBoard event files read back by a decoder of this file's own (a bit-at-a-time CRC32C,
/// a generic protobuf walker), not by the writer's code: TFRecord framing, masked CRCs, the
/// Event and Summary fields. tools/check_tensorboard.py reads them with TensorBoard itself.
final class TensorBoardEventsTests: XCTestCase {
    func testCRC32CKnownVectors() {
        // RFC 3720 (iSCSI) B.4 and the usual check value.
        XCTAssertEqual(CRC32C.checksum(Array("123456789".utf8)), 0xE306_9283)
        XCTAssertEqual(CRC32C.checksum([UInt8](repeating: 0, count: 32)), 0x8A91_36AA)
        XCTAssertEqual(CRC32C.checksum([UInt8](repeating: 0xFF, count: 32)), 0x62A8_AB43)
        XCTAssertEqual(CRC32C.checksum(Array(0...31)), 0x46DD_794E)
        XCTAssertEqual(CRC32C.checksum([]), 0)
        // tensorboard.compat.tensorflow_stub.pywrap_tensorflow.masked_crc32c (tensorboard 2.21.0).
        XCTAssertEqual(CRC32C.masked(Array("123456789".utf8)), 0xC78A_B0E5)
        XCTAssertEqual(CRC32C.masked([]), 0xA282_EAD8)
        XCTAssertEqual(CRC32C.masked([UInt8](repeating: 0, count: 8)), 0x0798_0329)
        let bytes = (0..<1000).map { UInt8(truncatingIfNeeded: $0 &* 7 &+ 3) }
        XCTAssertEqual(CRC32C.checksum(bytes), Self.crc32cBitwise(bytes))
    }

    func testEventFileRoundTrip() throws {
        let dir = TempDir()
        let writer = try TensorBoardEventWriter(directory: dir.path + "/tb", wallTime: 1_700_000_000.25)
        try writer.write(step: 1, scalars: [("train/loss", 2.5), ("train/learning_rate", 2e-4)], wallTime: 1_700_000_001.5)
        try writer.write(step: 300, scalars: [("eval/loss_ema", 1.0 / 3)], wallTime: 1_700_000_002)
        try writer.write(step: 301, scalars: [])   // nothing to say: no event
        try writer.sync()

        let files = try FileManager.default.contentsOfDirectory(atPath: dir.path + "/tb")
        XCTAssertEqual(files.count, 1)
        XCTAssertTrue(files[0].hasPrefix("events.out.tfevents.1700000000."), files[0])
        let events = try Self.readEvents(writer.path)
        XCTAssertEqual(events.count, 3)
        XCTAssertEqual(events[0].fileVersion, "brain.Event:2")
        XCTAssertEqual(events[0].wallTime, 1_700_000_000.25)
        XCTAssertEqual(events[1].step, 1)
        XCTAssertEqual(events[1].wallTime, 1_700_000_001.5)
        XCTAssertEqual(events[1].scalars.map(\.tag), ["train/loss", "train/learning_rate"])
        XCTAssertEqual(events[1].scalars.map(\.value), [2.5, Float(2e-4)])
        XCTAssertEqual(events[2].step, 300)   // a two-byte varint
        XCTAssertEqual(events[2].scalars.map(\.value), [Float(1.0 / 3)])
    }

    func testDamagedRecordIsCaughtByTheIndependentReader() throws {
        var record = TensorBoardEventWriter.record(Array("abc".utf8))
        XCTAssertEqual(record.count, 8 + 4 + 3 + 4)
        XCTAssertEqual(Array(record[0..<8]), [3, 0, 0, 0, 0, 0, 0, 0])
        XCTAssertNoThrow(try Self.records(record))
        record[13] ^= 1
        XCTAssertThrowsError(try Self.records(record))
    }

    /// A resumed run's file sorts after the earlier one (readers load files in name order) and
    /// opens with a SessionLog START at the first step it makes again.
    func testResumedFileComesAfterAndAnnouncesTheRestart() throws {
        let dir = TempDir()
        let first = try TensorBoardEventWriter(directory: dir.path, wallTime: 1_800_000_000)
        let second = try TensorBoardEventWriter(directory: dir.path, restartAt: 4, wallTime: 1_700_000_000)   // clock went back
        XCTAssertLessThan(first.path, second.path)
        let events = try Self.readEvents(second.path)
        XCTAssertEqual(events.map(\.fileVersion), ["brain.Event:2", nil])
        XCTAssertEqual(events[1].step, 4)
        XCTAssertEqual(events[1].sessionStatus, 1)
    }

    // MARK: An independent reader

    struct DecodedEvent {
        var wallTime = 0.0, step = 0, fileVersion: String?, sessionStatus: UInt64?
        var scalars: [(tag: String, value: Float)] = []
    }

    enum DecodeError: Error { case truncated(Int), badCRC(Int), badWireType(UInt64) }

    static func crc32cBitwise(_ bytes: [UInt8]) -> UInt32 {
        var c: UInt32 = 0xFFFF_FFFF
        for b in bytes {
            c ^= UInt32(b)
            for _ in 0..<8 { c = (c >> 1) ^ (0x82F6_3B78 & (0 &- (c & 1))) }
        }
        return ~c
    }

    static func maskedBitwise(_ bytes: [UInt8]) -> UInt32 {
        let c = crc32cBitwise(bytes)
        return ((c >> 15) | (c << 17)) &+ 0xA282_EAD8
    }

    static func le<T: FixedWidthInteger>(_ b: ArraySlice<UInt8>) -> T {
        b.reversed().reduce(T(0)) { $0 << 8 | T($1) }
    }

    /// The payloads of a TFRecord stream, every CRC checked.
    static func records(_ bytes: [UInt8]) throws -> [[UInt8]] {
        var out: [[UInt8]] = [], at = 0
        while at < bytes.count {
            guard at + 12 <= bytes.count else { throw DecodeError.truncated(at) }
            let length = Int(le(bytes[at..<at + 8]) as UInt64)
            guard maskedBitwise(Array(bytes[at..<at + 8])) == le(bytes[at + 8..<at + 12]) as UInt32 else { throw DecodeError.badCRC(at) }
            let start = at + 12, end = start + length
            guard end + 4 <= bytes.count else { throw DecodeError.truncated(at) }
            let data = Array(bytes[start..<end])
            guard maskedBitwise(data) == le(bytes[end..<end + 4]) as UInt32 else { throw DecodeError.badCRC(start) }
            out.append(data)
            at = end + 4
        }
        return out
    }

    enum Field { case varint(UInt64), fixed64(UInt64), fixed32(UInt32), bytes([UInt8]) }

    /// (field number, value) of each field of a protobuf message.
    static func fields(_ m: [UInt8]) throws -> [(Int, Field)] {
        var at = 0, out: [(Int, Field)] = []
        func varint() throws -> UInt64 {
            var v: UInt64 = 0, shift: UInt64 = 0
            while true {
                guard at < m.count else { throw DecodeError.truncated(at) }
                let b = m[at]
                at += 1
                v |= UInt64(b & 0x7F) << shift
                if b < 0x80 { return v }
                shift += 7
            }
        }
        while at < m.count {
            let key = try varint()
            switch key & 7 {
            case 0: out.append((Int(key >> 3), .varint(try varint())))
            case 1:
                guard at + 8 <= m.count else { throw DecodeError.truncated(at) }
                out.append((Int(key >> 3), .fixed64(le(m[at..<at + 8]))))
                at += 8
            case 2:
                let n = Int(try varint())
                guard at + n <= m.count else { throw DecodeError.truncated(at) }
                out.append((Int(key >> 3), .bytes(Array(m[at..<at + n]))))
                at += n
            case 5:
                guard at + 4 <= m.count else { throw DecodeError.truncated(at) }
                out.append((Int(key >> 3), .fixed32(le(m[at..<at + 4]))))
                at += 4
            default: throw DecodeError.badWireType(key & 7)
            }
        }
        return out
    }

    /// The Events of an event file (event.proto's field numbers, checked against tensorboard 2.21.0's
    /// event_pb2 and summary_pb2 descriptors).
    static func readEvents(_ path: String) throws -> [DecodedEvent] {
        let bytes = [UInt8](try Data(contentsOf: URL(fileURLWithPath: path)))
        return try records(bytes).map { data in
            var e = DecodedEvent()
            for (field, value) in try fields(data) {
                switch (field, value) {
                case let (1, .fixed64(v)): e.wallTime = Double(bitPattern: v)
                case let (2, .varint(v)): e.step = Int(Int64(bitPattern: v))
                case let (3, .bytes(v)): e.fileVersion = String(decoding: v, as: UTF8.self)
                case let (5, .bytes(summary)):
                    for case let (1, .bytes(value)) in try fields(summary) {
                        var tag = "", simple: Float = .nan
                        for (f, v) in try fields(value) {
                            if f == 1, case let .bytes(t) = v { tag = String(decoding: t, as: UTF8.self) }
                            if f == 2, case let .fixed32(bits) = v { simple = Float(bitPattern: bits) }
                        }
                        e.scalars.append((tag, simple))
                    }
                case let (7, .bytes(log)):
                    for case let (1, .varint(status)) in try fields(log) { e.sessionStatus = status }
                default: XCTFail("unexpected Event field \(field)")
                }
            }
            return e
        }
    }
}
