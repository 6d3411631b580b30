import QuantKernels

/// IEEE binary16 conversions as ggml does them on x86 (F16C semantics: round to nearest even).
public enum FP16 {
    public static func float(fromBits h: UInt16) -> Float { qk_fp16_to_fp32(h) }
    public static func bits(from f: Float) -> UInt16 { qk_fp32_to_fp16(f) }
}
