/* quantize_bnb.c — reference quantizers of bitsandbytes' 4-bit formats and of its 8-bit
 * blockwise quantization with the dynamic map (used to double-quantize absmax), following
 * bitsandbytes 0.50's CPU path so the bytes match (tools/make_quant_fixtures.py checks them):
 *  - 4-bit (backends/default/ops.py, quantize_4bit and _get_4bit_quantize_bounds): codes
 *    chosen by the float32 midpoints between the sorted codebook values, a value exactly on a
 *    midpoint taking the lower code (torch.bucketize, right=False); whole blocks are scaled
 *    by the reciprocal of absmax (clamped to 1e-38), the partial last block is divided by its
 *    clamped absmax, which is also what it stores.
 *  - 8-bit (csrc/cpu_ops.cpp, quantize_cpu_impl): a 65536-entry table maps the scaled value,
 *    rounded to 16 bits, to the number of map midpoints below it. */
#include "blocks.h"
#include <math.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    float bounds[15];
    uint8_t order[16]; /* code index of each sorted position */
} bucket_table;

static bucket_table make_buckets(const float *code) {
    bucket_table t;
    for (int i = 0; i < 16; i++) t.order[i] = (uint8_t)i;
    for (int i = 1; i < 16; i++) /* stable insertion sort of indices by value */
        for (int j = i; j > 0 && code[t.order[j - 1]] > code[t.order[j]]; j--) {
            uint8_t s = t.order[j];
            t.order[j] = t.order[j - 1];
            t.order[j - 1] = s;
        }
    for (int i = 0; i < 15; i++) t.bounds[i] = (code[t.order[i]] + code[t.order[i + 1]]) / 2.0f;
    return t;
}

/* The code of the bucket holding v: the number of bounds strictly below it. The bounds are
 * sorted, so counting every comparison gives what stopping at the first bound ≥ v gives (a NaN is
 * below none), without a branch per bound: the block loop below then vectorizes. */
static inline uint8_t bucket(const bucket_table *t, float v) {
    int i = 0;
    for (int k = 0; k < 15; k++) i += t->bounds[k] < v;
    return t->order[i];
}

static float clamp1(float v) { return fminf(fmaxf(v, -1.0f), 1.0f); }

void qk_quantize_4bit_ref(const float *x, int64_t n, int64_t block_size, const float *code, uint8_t *packed,
                          float *absmax) {
    const bucket_table t = make_buckets(code);
    const float tiny = 1e-38f; /* torch's clamp(min=1e-38) on float32 */
    const int64_t nb = (n + block_size - 1) / block_size;
    for (int64_t b = 0; b < nb; b++) {
        const int64_t e0 = b * block_size, e1 = e0 + block_size < n ? e0 + block_size : n;
        const int partial = e1 - e0 < block_size;
        float a = 0.0f;
        for (int64_t e = e0; e < e1; e++) a = fmaxf(a, fabsf(x[e]));
        const float clamped = fmaxf(a, tiny), inv = 1.0f / clamped;
        absmax[b] = partial ? clamped : a;
        /* Two values a byte, the first in the high nibble, written a whole byte at a time (the
         * loop vectorizes); a block starting or ending mid-byte finishes or starts its byte. */
#define CODE(i) bucket(&t, clamp1(partial ? x[i] / clamped : x[i] * inv))
        int64_t e = e0;
        if (e & 1) { packed[e >> 1] |= CODE(e); e++; }
        for (; e + 1 < e1; e += 2) packed[e >> 1] = (uint8_t)(CODE(e) << 4 | CODE(e + 1));
        if (e < e1) packed[e >> 1] = (uint8_t)(CODE(e) << 4);
#undef CODE
    }
    if (n & 1) packed[n >> 1] |= bucket(&t, 0.0f); /* padding: the code of zero */
}

void qk_blockwise8_table(const float *code, uint8_t *lut) {
    float mids[255];
    for (int k = 0; k < 255; k++) mids[k] = 0.5f * (code[k] + code[k + 1]);
    for (int i = 0, below = 0; i < 65536; i++) {
        const float val = (2.0f * (float)i) / 65535.0f - 1.0f; /* increasing in i */
        while (below < 255 && mids[below] < val) below++;
        lut[i] = (uint8_t)below;
    }
}

void qk_quantize_blockwise8(const float *v, int64_t n, float offset, const uint8_t *lut, uint8_t *codes, float *absmax) {
    const int64_t nb = (n + QK_NESTED_BLOCK - 1) / QK_NESTED_BLOCK;
    for (int64_t b = 0; b < nb; b++) {
        const int64_t e0 = b * QK_NESTED_BLOCK, e1 = e0 + QK_NESTED_BLOCK < n ? e0 + QK_NESTED_BLOCK : n;
        float a = 0.0f;
        for (int64_t e = e0; e < e1; e++) a = fmaxf(a, fabsf(v[e] - offset));
        absmax[b] = a;
        const float inv = 1.0f / a;
        for (int64_t e = e0; e < e1; e++) {
            if (a == 0.0f) { codes[e] = 0; continue; }
            const float t = (clamp1((v[e] - offset) * inv) + 1.0f) * 0.5f;
            codes[e] = lut[(uint16_t)(int)fmaf(t, 65535.0f, 0.5f)];
        }
    }
}

void qk_quantize_nested_ref(const float *v, int64_t n, float offset, const float *nested_code, uint8_t *codes,
                            float *nested_absmax) {
    uint8_t *lut = malloc(65536);
    if (!lut) return;
    qk_blockwise8_table(nested_code, lut);
    qk_quantize_blockwise8(v, n, offset, lut, codes, nested_absmax);
    free(lut);
}

/* torch.Tensor.mean() of a contiguous float32 CPU tensor as torch computes it, so that the
 * double-quantization offset (bitsandbytes: absmax.mean()) matches to the last bit: the
 * cascade sum of ATen's SumKernel.cpp (vectors of 8 floats, 4-way ILP, a 4-level cascade
 * with steps of at least 16), then a float32 division by n. */
enum { SUM_LEVELS = 4, SUM_ILP = 4, SUM_LANES = 8 };

/* Rows k < SUM_ILP of `size` vectors of w floats; element (i, k) at x + (i * SUM_ILP + k) * w. */
static void cascade_rows(const float *x, int64_t size, int w, float out[SUM_ILP][SUM_LANES]) {
    int clog2 = 0;
    for (uint64_t v = size > 1 ? (uint64_t)(size - 1) : 0; v; v >>= 1) clog2++;
    const int power = clog2 / SUM_LEVELS > 4 ? clog2 / SUM_LEVELS : 4;
    const int64_t step = (int64_t)1 << power, mask = step - 1;
    float acc[SUM_LEVELS][SUM_ILP][SUM_LANES] = {{{0}}};
    int64_t i = 0;
    while (i + step <= size) {
        for (int64_t s = 0; s < step; s++, i++)
            for (int k = 0; k < SUM_ILP; k++)
                for (int l = 0; l < w; l++) acc[0][k][l] += x[(i * SUM_ILP + k) * w + l];
        for (int j = 1; j < SUM_LEVELS; j++) {
            for (int k = 0; k < SUM_ILP; k++)
                for (int l = 0; l < w; l++) {
                    acc[j][k][l] += acc[j - 1][k][l];
                    acc[j - 1][k][l] = 0.0f;
                }
            if ((i & (mask << (j * power))) != 0) break;
        }
    }
    for (; i < size; i++)
        for (int k = 0; k < SUM_ILP; k++)
            for (int l = 0; l < w; l++) acc[0][k][l] += x[(i * SUM_ILP + k) * w + l];
    for (int j = 1; j < SUM_LEVELS; j++)
        for (int k = 0; k < SUM_ILP; k++)
            for (int l = 0; l < w; l++) acc[0][k][l] += acc[j][k][l];
    memcpy(out, acc[0], sizeof acc[0]);
}

/* Sum of `size` vectors of w floats, as ATen's row_sum. */
static void row_sum(const float *x, int64_t size, int w, float *result) {
    float ps[SUM_ILP][SUM_LANES];
    const int64_t size_ilp = size / SUM_ILP;
    cascade_rows(x, size_ilp, w, ps);
    for (int64_t i = size_ilp * SUM_ILP; i < size; i++)
        for (int l = 0; l < w; l++) ps[0][l] += x[i * w + l];
    for (int k = 1; k < SUM_ILP; k++)
        for (int l = 0; l < w; l++) ps[0][l] += ps[k][l];
    memcpy(result, ps[0], (size_t)w * sizeof(float));
}

float qk_torch_mean_f32(const float *x, int64_t n) {
    if (n <= 0) return 0.0f;
    float total = 0.0f;
    if (n >= SUM_LANES) {
        const int64_t nv = n / SUM_LANES;
        float lanes[SUM_LANES];
        row_sum(x, nv, SUM_LANES, lanes);
        for (int64_t k = nv * SUM_LANES; k < n; k++) total += x[k];
        for (int l = 0; l < SUM_LANES; l++) total += lanes[l];
    } else {
        row_sum(x, n, 1, &total);
    }
    return total / (float)n;
}
