/* quantize_ggml.c — reference quantizers of ggml's Q4_0, Q4_1 and Q8_0 (the algorithm of
 * ggml-quants.c quantize_row_q4_0_ref / _q4_1_ref / _q8_0_ref: "reference implementation for
 * deterministic creation of model files"), so qlora writes the bytes llama.cpp would. */
#include "blocks.h"
#include <float.h>
#include <math.h>

void qk_quantize_row_q4_0_ref(const float *x, uint8_t *blocks, int64_t k) {
    block_q4_0 *y = (block_q4_0 *)blocks;
    for (int64_t i = 0; i < k / QK_GGML_BLOCK; i++, x += QK_GGML_BLOCK) {
        float amax = 0.0f, max = 0.0f; /* the value of largest magnitude, with its sign */
        for (int j = 0; j < QK_GGML_BLOCK; j++)
            if (amax < fabsf(x[j])) { amax = fabsf(x[j]); max = x[j]; }
        const float d = max / -8;
        const float id = d ? 1.0f / d : 0.0f;
        y[i].d = qk_fp32_to_fp16(d);
        for (int j = 0; j < 16; j++) {
            int q0 = (int8_t)(x[j] * id + 8.5f), q1 = (int8_t)(x[j + 16] * id + 8.5f);
            q0 = q0 < 15 ? q0 : 15;
            q1 = q1 < 15 ? q1 : 15;
            y[i].qs[j] = (uint8_t)(q0 | (q1 << 4));
        }
    }
}

void qk_quantize_row_q4_1_ref(const float *x, uint8_t *blocks, int64_t k) {
    block_q4_1 *y = (block_q4_1 *)blocks;
    for (int64_t i = 0; i < k / QK_GGML_BLOCK; i++, x += QK_GGML_BLOCK) {
        float min = FLT_MAX, max = -FLT_MAX;
        for (int j = 0; j < QK_GGML_BLOCK; j++) {
            if (x[j] < min) min = x[j];
            if (x[j] > max) max = x[j];
        }
        const float d = (max - min) / 15;
        const float id = d ? 1.0f / d : 0.0f;
        y[i].d = qk_fp32_to_fp16(d);
        y[i].m = qk_fp32_to_fp16(min);
        for (int j = 0; j < 16; j++) {
            int q0 = (int8_t)((x[j] - min) * id + 0.5f), q1 = (int8_t)((x[j + 16] - min) * id + 0.5f);
            q0 = q0 < 15 ? q0 : 15;
            q1 = q1 < 15 ? q1 : 15;
            y[i].qs[j] = (uint8_t)(q0 | (q1 << 4));
        }
    }
}

/* roundf (half away from zero) without libm calls, so the loop below vectorizes on plain x86-64
 * (truncf needs SSE4.1 to be inlined): for |v| < 2³¹ the int cast is trunc(v), and v − trunc(v) is
 * exact, so the comparison with 0.5 decides exactly as roundf does. Q8_0 has |v| ≤ 127. */
static inline float round_half_away(float v) {
    const float t = (float)(int32_t)v;
    return fabsf(v - t) >= 0.5f ? t + copysignf(1.0f, v) : t;
}

void qk_quantize_row_q8_0_ref(const float *x, uint8_t *blocks, int64_t k) {
    block_q8_0 *y = (block_q8_0 *)blocks;
    for (int64_t i = 0; i < k / QK_GGML_BLOCK; i++, x += QK_GGML_BLOCK) {
        float amax = 0.0f;
        for (int j = 0; j < QK_GGML_BLOCK; j++) amax = fmaxf(amax, fabsf(x[j]));
        const float d = amax / 127;
        const float id = d ? 1.0f / d : 0.0f;
        y[i].d = qk_fp32_to_fp16(d);
        for (int j = 0; j < QK_GGML_BLOCK; j++) y[i].qs[j] = (int8_t)round_half_away(x[j] * id);
    }
}
