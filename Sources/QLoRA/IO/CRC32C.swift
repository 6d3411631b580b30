/// CRC-32C (Castagnoli: reflected polynomial 0x82F63B78, as SSE 4.2's `crc32` instruction and
/// iSCSI), the checksum of TFRecord files (TensorBoard event files, TensorBoardEvents).
/// CRC32C("123456789") = 0xE3069283.
///
/// TFRecord stores it *masked*, so that a CRC computed over data that itself holds CRCs does
/// not degenerate: rotate right by 15 bits, then add 0xa282ead8 (wrapping). TensorFlow's
/// `crc32c::Mask`, tensorboard's `masked_crc32c`.
public enum CRC32C {
    static let crc = ReflectedCRC32(polynomial: 0x82F6_3B78)

    public static func checksum(_ bytes: UnsafeRawBufferPointer) -> UInt32 { crc.checksum(bytes) }

    public static func checksum(_ bytes: [UInt8]) -> UInt32 { bytes.withUnsafeBytes { checksum($0) } }

    /// ((crc >> 15) | (crc << 17)) + 0xa282ead8, the form TFRecord writes.
    public static func mask(_ crc: UInt32) -> UInt32 { ((crc >> 15) | (crc << 17)) &+ 0xA282_EAD8 }

    public static func masked(_ bytes: [UInt8]) -> UInt32 { mask(checksum(bytes)) }
}
