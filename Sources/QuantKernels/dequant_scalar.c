/* dequant_scalar.c — the scalar reference dequantizers ("_ref" in ggml's terms) and the
 * range/tile entry points that pick the SIMD level. Every SIMD twin must match these bit for
 * bit: the arithmetic is the same single multiply (and add, for Q4_1). Q5_0, Q5_1 and the
 * K-quants take their block functions from dequant_ggml_types.c, the same code that reads
 * GGUF tensors at load, so a block dequantizes alike wherever it is read. */
#include "blocks.h"

typedef void (*ggml_blocks_fn)(const void *, float *restrict, int64_t);

/* The scalar block function of Q5_0, Q5_1 or a K-quant; NULL for the other formats. */
static ggml_blocks_fn ggml_blocks_ref(qk_format f) {
    switch (f) {
    case QK_FORMAT_Q5_0: return qk_dequantize_blocks_q5_0_ref;
    case QK_FORMAT_Q5_1: return qk_dequantize_blocks_q5_1_ref;
    case QK_FORMAT_Q2_K: return qk_dequantize_blocks_q2_K_ref;
    case QK_FORMAT_Q3_K: return qk_dequantize_blocks_q3_K_ref;
    case QK_FORMAT_Q4_K: return qk_dequantize_blocks_q4_K_ref;
    case QK_FORMAT_Q5_K: return qk_dequantize_blocks_q5_K_ref;
    case QK_FORMAT_Q6_K: return qk_dequantize_blocks_q6_K_ref;
    default: return NULL;
    }
}

float qk_block_absmax(const qk_matrix *w, int64_t b) { return block_absmax(w, b); }

float qk_dequantize_element(const qk_matrix *w, int64_t e) {
    switch (w->format) {
    case QK_FORMAT_NF4:
    case QK_FORMAT_FP4: {
        uint8_t byte = w->data[e >> 1];
        uint8_t q = (e & 1) ? (byte & 0x0F) : (byte >> 4);
        return w->code[q] * block_absmax(w, e / w->block_size);
    }
    case QK_FORMAT_Q4_0: {
        const block_q4_0 *x = (const block_q4_0 *)w->data + e / QK_GGML_BLOCK;
        int j = (int)(e % QK_GGML_BLOCK);
        int q = j < 16 ? (x->qs[j] & 0x0F) : (x->qs[j - 16] >> 4);
        return (float)(q - 8) * fp16_to_fp32(x->d);
    }
    case QK_FORMAT_Q4_1: {
        const block_q4_1 *x = (const block_q4_1 *)w->data + e / QK_GGML_BLOCK;
        int j = (int)(e % QK_GGML_BLOCK);
        int q = j < 16 ? (x->qs[j] & 0x0F) : (x->qs[j - 16] >> 4);
        return (float)q * fp16_to_fp32(x->d) + fp16_to_fp32(x->m);
    }
    case QK_FORMAT_Q8_0: {
        const block_q8_0 *x = (const block_q8_0 *)w->data + e / QK_GGML_BLOCK;
        return (float)x->qs[e % QK_GGML_BLOCK] * fp16_to_fp32(x->d);
    }
    default: { /* Q5_0, Q5_1, K-quants: its whole block, then the one element (the kernels
                * never take this path: ggml blocks never straddle rows or tiles) */
        float block[QK_K_BLOCK];
        const int64_t bs = w->block_size;
        ggml_blocks_ref(w->format)(w->data + e / bs * ggml_block_bytes(w->format), block, 1);
        return block[e % bs];
    }
    }
}

void qk_dequantize_blocks_scalar(const qk_matrix *w, int64_t b0, int64_t nb, float *y) {
    const int64_t bs = w->block_size;
    const ggml_blocks_fn ref = ggml_blocks_ref(w->format);
    if (ref) {
        ref(w->data + b0 * ggml_block_bytes(w->format), y, nb);
        return;
    }
    for (int64_t b = b0; b < b0 + nb; b++, y += bs) {
        switch (w->format) {
        case QK_FORMAT_NF4:
        case QK_FORMAT_FP4: {
            const float a = block_absmax(w, b);
            const uint8_t *q = w->data + b * bs / 2;
            for (int64_t i = 0; i < bs / 2; i++) {
                y[2 * i + 0] = w->code[q[i] >> 4] * a;
                y[2 * i + 1] = w->code[q[i] & 0x0F] * a;
            }
            break;
        }
        case QK_FORMAT_Q4_0: {
            const block_q4_0 *x = (const block_q4_0 *)w->data + b;
            const float d = fp16_to_fp32(x->d);
            for (int j = 0; j < 16; j++) {
                y[j] = (float)((x->qs[j] & 0x0F) - 8) * d;
                y[j + 16] = (float)((x->qs[j] >> 4) - 8) * d;
            }
            break;
        }
        case QK_FORMAT_Q4_1: {
            const block_q4_1 *x = (const block_q4_1 *)w->data + b;
            const float d = fp16_to_fp32(x->d), m = fp16_to_fp32(x->m);
            for (int j = 0; j < 16; j++) {
                y[j] = (float)(x->qs[j] & 0x0F) * d + m;
                y[j + 16] = (float)(x->qs[j] >> 4) * d + m;
            }
            break;
        }
        case QK_FORMAT_Q8_0: {
            const block_q8_0 *x = (const block_q8_0 *)w->data + b;
            const float d = fp16_to_fp32(x->d);
            for (int j = 0; j < QK_GGML_BLOCK; j++) y[j] = (float)x->qs[j] * d;
            break;
        }
        default: break; /* the formats ggml_blocks_ref took above */
        }
    }
}

typedef void (*blocks_fn)(const qk_matrix *, int64_t, int64_t, float *);

static blocks_fn blocks_for(qk_isa isa) {
    switch (isa) {
    case QK_ISA_AVX512: return qk_dequantize_blocks_avx512;
    case QK_ISA_AVX2: return qk_dequantize_blocks_avx2;
    default: return qk_dequantize_blocks_scalar;
    }
}

void qk_dequantize_range_isa(const qk_matrix *w, int64_t start, int64_t count, float *y, qk_isa isa) {
    const int64_t bs = w->block_size, end = start + count;
    /* Head: elements before the first whole block (only when a range starts mid-block, which
     * bitsandbytes layouts allow when cols is not a multiple of the block size). */
    int64_t e = start;
    int64_t first = (start + bs - 1) / bs * bs;
    if (first > end) first = end;
    for (; e < first; e++) *y++ = qk_dequantize_element(w, e);
    /* Whole blocks; a partial last block of the tensor is left to the tail. */
    int64_t nb = (end - e) / bs;
    if (nb > 0) {
        blocks_for(isa)(w, e / bs, nb, y);
        y += nb * bs;
        e += nb * bs;
    }
    for (; e < end; e++) *y++ = qk_dequantize_element(w, e);
}

void qk_dequantize_range(const qk_matrix *w, int64_t start, int64_t count, float *y) {
    qk_dequantize_range_isa(w, start, count, y, qk_isa_get());
}

void qk_dequantize_tile(const qk_matrix *w, int64_t r0, int64_t r1, int64_t c0, int64_t c1, float *y) {
    const int64_t width = c1 - c0;
    if (c0 == 0 && c1 == w->cols) { /* whole rows: one contiguous range */
        qk_dequantize_range(w, r0 * w->cols, (r1 - r0) * width, y);
        return;
    }
    for (int64_t r = r0; r < r1; r++, y += width) qk_dequantize_range(w, r * w->cols + c0, width, y);
}
