/* blocks.h — ggml's block structs (ggml-common.h: block_q4_0, block_q4_1, block_q8_0),
 * reproduced by layout so ggml files are used as they are, and internal helpers shared by
 * the dequantizers. Not part of the public API. */
#ifndef QK_BLOCKS_H
#define QK_BLOCKS_H

#include "quant_kernels.h"
#include <string.h>

typedef struct { uint16_t d; uint8_t qs[QK_GGML_BLOCK / 2]; } block_q4_0;            /* delta, nibbles */
typedef struct { uint16_t d; uint16_t m; uint8_t qs[QK_GGML_BLOCK / 2]; } block_q4_1; /* delta, min, nibbles */
typedef struct { uint16_t d; int8_t qs[QK_GGML_BLOCK]; } block_q8_0;                  /* delta, int8 */
_Static_assert(sizeof(block_q4_0) == QK_Q4_0_BYTES, "wrong q4_0 block size/padding");
_Static_assert(sizeof(block_q4_1) == QK_Q4_1_BYTES, "wrong q4_1 block size/padding");
_Static_assert(sizeof(block_q8_0) == QK_Q8_0_BYTES, "wrong q8_0 block size/padding");

/* ggml nibble order: in a block of 32, element j < 16 is the LOW nibble of qs[j] and
 * element j + 16 its HIGH nibble (ggml-quants.c, dequantize_row_q4_0). bitsandbytes packs
 * consecutive elements: element 2i in the HIGH nibble of byte i, 2i+1 in the LOW one. */
static inline int qk_is_ggml(qk_format f) { return f >= QK_FORMAT_Q4_0; }

/* IEEE half → float, bit-exact with F16C's vcvtph2ps (NaNs come out quiet); inline for the
 * kernels, which convert one or two scales per block. */
static inline float fp16_to_fp32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000) << 16, em = h & 0x7fff, u;
    if (em == 0x7c00) u = sign | 0x7f800000;                               /* inf */
    else if (em > 0x7c00) u = sign | 0x7fc00000 | ((em & 0x3ff) << 13);    /* nan, quieted */
    else if (em >= 0x0400) u = sign | ((em << 13) + 0x38000000);           /* normal */
    else {                                                                  /* subnormal: em · 2^-24, exact */
        float v = (float)em * 5.9604644775390625e-8f;
        memcpy(&u, &v, 4);
        u |= sign;
    }
    float f;
    memcpy(&f, &u, 4);
    return f;
}

/* Absmax of block b of a bitsandbytes matrix. Double-quantized as bitsandbytes'
 * dequantize_4bit with compress_statistics does it: dequantize_blockwise(absmax_q, state2),
 * code[q] * absmax2 in fp32, then `absmax += offset`, also fp32. Inline for the kernels. */
static inline float block_absmax(const qk_matrix *w, int64_t b) {
    if (w->absmax) return w->absmax[b];
    const float a = w->nested_code[w->absmax_q[b]] * w->nested_absmax[b / QK_NESTED_BLOCK];
    return a + w->offset;
}

/* Dequantizes whole blocks [b0, b0+nb) of a matrix (element b0*block_size onwards) into y.
 * For bitsandbytes formats block_size must be a multiple of 16. One per ISA. */
void qk_dequantize_blocks_scalar(const qk_matrix *w, int64_t b0, int64_t nb, float *y);
void qk_dequantize_blocks_avx2(const qk_matrix *w, int64_t b0, int64_t nb, float *y);
void qk_dequantize_blocks_avx512(const qk_matrix *w, int64_t b0, int64_t nb, float *y);

/* The AVX-512 micro-kernel GEMMs (qgemm_avx512.c), and whether they can take a matrix. */
int qk_gemm_avx512_applies(const qk_matrix *w);
int qk_gemm_forward_avx512(const qk_matrix *w, const float *x, float *y, int64_t T, float beta, int threads);
float qk_dot_avx512(const float *a, const float *b, int64_t n);
int qk_gemm_backward_avx512(const qk_matrix *w, const float *dy, float *dx, int64_t T, float beta, int threads);

/* One element of the flattened matrix, scalar. */
float qk_dequantize_element(const qk_matrix *w, int64_t e);

#endif
