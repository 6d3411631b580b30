import Foundation

/// A scratch directory removed when the test case ends.
final class TempDir {
    let path: String

    init() {
        path = NSTemporaryDirectory() + "qlora-test-" + UUID().uuidString
        try! FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
    }

    deinit { try? FileManager.default.removeItem(atPath: path) }

    @discardableResult
    func write(_ name: String, _ bytes: [UInt8]) -> String {
        let p = (path as NSString).appendingPathComponent(name)
        _ = FileManager.default.createFile(atPath: p, contents: Data(bytes))
        return p
    }

    @discardableResult
    func write(_ name: String, _ text: String) -> String { write(name, Array(text.utf8)) }
}

/// Little-endian byte building for hand-made (and hand-broken) files.
struct Bytes {
    var data: [UInt8] = []
    mutating func u8(_ v: UInt8) { data.append(v) }
    mutating func u32(_ v: UInt32) { withUnsafeBytes(of: v.littleEndian) { data += $0 } }
    mutating func u64(_ v: UInt64) { withUnsafeBytes(of: v.littleEndian) { data += $0 } }
    mutating func str(_ s: String) { u64(UInt64(s.utf8.count)); data += s.utf8 }
    mutating func raw(_ b: [UInt8]) { data += b }
    mutating func pad(to alignment: Int) { while data.count % alignment != 0 { data.append(0) } }
}
