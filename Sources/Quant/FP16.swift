import QuantKernels

/// IEEE binary16 conversions as ggml does them on x86 (F16C semantics: round to nearest even).
public enum FP16 {
    public static func float(fromBits h: UInt16) -> Float { qk_fp16_to_fp32(h) }
    public static func bits(from f: Float) -> UInt16 { qk_fp32_to_fp16(f) }

    /// Every value converted as `bits(from:)` does, in one C loop (a call per value is most of
    /// the cost of an f16 export otherwise).
    public static func bits(from values: [Float]) -> [UInt16] {
        [UInt16](unsafeUninitializedCapacity: values.count) { out, count in
            if let base = out.baseAddress { qk_fp32_to_fp16_row(values, base, Int64(values.count)) }
            count = values.count
        }
    }

    /// The same halves as little-endian bytes (safetensors' and GGUF's F16), made in place.
    public static func bytes(from values: [Float]) -> [UInt8] {
        [UInt8](unsafeUninitializedCapacity: values.count * 2) { out, count in
            if let base = out.baseAddress {
                base.withMemoryRebound(to: UInt16.self, capacity: values.count) { qk_fp32_to_fp16_row(values, $0, Int64(values.count)) }
            }
            count = values.count * 2
        }
    }
}

/// bfloat16 conversions: the top 16 bits of a float, rounded to nearest even as torch's
/// float → bfloat16 conversion does (NaN stays a quiet NaN).
public enum BF16 {
    public static func float(fromBits h: UInt16) -> Float { Float(bitPattern: UInt32(h) << 16) }

    public static func bits(from x: Float) -> UInt16 {
        if x.isNaN { return 0x7FC0 }
        let b = x.bitPattern
        return UInt16((b + 0x7FFF + ((b >> 16) & 1)) >> 16)
    }
}
