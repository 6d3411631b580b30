/// A table-driven CRC-32 over a reflected polynomial (initial value and final xor all ones),
/// the form both CRC-32 and CRC-32C take.
public struct ReflectedCRC32: Sendable {
    let table: [UInt32]

    public init(polynomial: UInt32) {
        table = (0..<256).map { n in
            var c = UInt32(n)
            for _ in 0..<8 { c = c & 1 != 0 ? polynomial ^ (c >> 1) : c >> 1 }
            return c
        }
    }

    public func checksum(_ bytes: UnsafeRawBufferPointer) -> UInt32 {
        var c: UInt32 = 0xFFFF_FFFF
        table.withUnsafeBufferPointer { t in
            for b in bytes { c = t[Int((c ^ UInt32(b)) & 0xFF)] ^ (c >> 8) }
        }
        return c ^ 0xFFFF_FFFF
    }
}

/// CRC-32 (IEEE 802.3, reflected polynomial 0xEDB88320, as zlib's crc32), used to tell a
/// checkpoint file that was written whole from one that was torn or damaged afterwards.
/// CRC32("123456789") = 0xCBF43926.
public enum CRC32 {
    static let crc = ReflectedCRC32(polynomial: 0xEDB8_8320)

    public static func checksum(_ bytes: UnsafeRawBufferPointer) -> UInt32 { crc.checksum(bytes) }

    public static func checksum(_ bytes: [UInt8]) -> UInt32 { bytes.withUnsafeBytes { checksum($0) } }
}
