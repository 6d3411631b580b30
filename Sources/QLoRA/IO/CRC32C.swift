/// CRC-32C (Castagnoli: reflected polynomial 0x82F63B78, as SSE 4.2's `crc32` instruction and
/// iSCSI), the checksum of TFRecord files (TensorBoard event files, TensorBoardEvents).
/// CRC32C("123456789") = 0xE3069283.
///
/// TFRecord stores it *masked*, so that a CRC computed over data that itself holds CRCs does
/// not degenerate: rotate right by 15 bits, then add 0xa282ead8 (wrapping). TensorFlow's
/// `crc32c::Mask`, tensorboard's `masked_crc32c`.
public enum CRC32C {
    static let table: [UInt32] = (0..<256).map { n in
        var c = UInt32(n)
        for _ in 0..<8 { c = c & 1 != 0 ? 0x82F6_3B78 ^ (c >> 1) : c >> 1 }
        return c
    }

    public static func checksum(_ bytes: UnsafeRawBufferPointer) -> UInt32 {
        var c: UInt32 = 0xFFFF_FFFF
        table.withUnsafeBufferPointer { t in
            for b in bytes { c = t[Int((c ^ UInt32(b)) & 0xFF)] ^ (c >> 8) }
        }
        return c ^ 0xFFFF_FFFF
    }

    public static func checksum(_ bytes: [UInt8]) -> UInt32 { bytes.withUnsafeBytes { checksum($0) } }

    /// ((crc >> 15) | (crc << 17)) + 0xa282ead8, the form TFRecord writes.
    public static func mask(_ crc: UInt32) -> UInt32 { ((crc >> 15) | (crc << 17)) &+ 0xA282_EAD8 }

    public static func masked(_ bytes: [UInt8]) -> UInt32 { mask(checksum(bytes)) }
}
