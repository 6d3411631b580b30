/* fp16.c — IEEE binary16 conversions, bit-exact with F16C's vcvtph2ps / vcvtps2ph (round to
 * nearest even; NaNs come out quiet), which ggml uses on x86 (GGML_FP16_TO_FP32 /
 * GGML_FP32_TO_FP16). */
#include "blocks.h"
#include <string.h>

static inline uint32_t bits_of(float f) { uint32_t u; memcpy(&u, &f, 4); return u; }
static inline float float_of(uint32_t u) { float f; memcpy(&f, &u, 4); return f; }

float qk_fp16_to_fp32(uint16_t h) { return fp16_to_fp32(h); }

static inline uint16_t fp32_to_fp16(float f) {
    uint32_t u = bits_of(f);
    uint16_t sign = (uint16_t)((u >> 16) & 0x8000);
    uint32_t a = u & 0x7fffffff;
    if (a > 0x7f800000) return sign | 0x7e00 | (uint16_t)((a >> 13) & 0x3ff); /* nan stays nan */
    if (a >= 0x47800000) return sign | 0x7c00;                               /* >= 65536: inf */
    if (a < 0x38800000) {                                                    /* half subnormal or zero */
        /* Adding 0.5 aligns the value's bits so that the float adder rounds to nearest even at
         * the half-subnormal ulp (2^-24); the low bits are then the half's mantissa. */
        float v = float_of(a) + 0.5f;
        return sign | (uint16_t)(bits_of(v) - 0x3f000000);
    }
    uint32_t odd = (a >> 13) & 1;
    a += 0xc8000fffu + odd; /* rebias the exponent by (15 - 127) and round to nearest even */
    return sign | (uint16_t)(a >> 13);
}

uint16_t qk_fp32_to_fp16(float f) { return fp32_to_fp16(f); }

void qk_fp32_to_fp16_row(const float *x, uint16_t *y, int64_t n) {
    for (int64_t i = 0; i < n; i++) y[i] = fp32_to_fp16(x[i]);
}
