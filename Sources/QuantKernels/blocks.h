/* blocks.h — ggml's block structs (ggml-common.h: block_q4_0 … block_q8_0 and the K-quants
 * block_q2_K … block_q6_K), reproduced by layout so ggml files are used as they are, and
 * internal helpers shared by the dequantizers. Not part of the public API. */
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

/* 32-element blocks with a 5th bit per element: bit j of the little-endian qh is the 5th bit
 * of element j (the low 4 bits in Q4's nibble order, below). */
typedef struct { uint16_t d; uint8_t qh[4]; uint8_t qs[QK_GGML_BLOCK / 2]; } block_q5_0;              /* delta, high bits, nibbles */
typedef struct { uint16_t d; uint16_t m; uint8_t qh[4]; uint8_t qs[QK_GGML_BLOCK / 2]; } block_q5_1; /* delta, min, high bits, nibbles */
_Static_assert(sizeof(block_q5_0) == QK_Q5_0_BYTES, "wrong q5_0 block size/padding");
_Static_assert(sizeof(block_q5_1) == QK_Q5_1_BYTES, "wrong q5_1 block size/padding");

/* K-quant super-blocks of QK_K_BLOCK = 256. Q2_K, Q3_K, Q6_K: 16 groups of 16 with one scale
 * each; Q4_K, Q5_K: 8 groups of 32 with a 6-bit scale and a 6-bit min each, packed into 12
 * bytes. Where each code's bits sit is written down once, in dequant_ggml_types.c. */
enum { K_SCALE_SIZE = 12 };
typedef struct {
    uint8_t scales[QK_K_BLOCK / 16]; /* low nibble: scale, high nibble: min */
    uint8_t qs[QK_K_BLOCK / 4];      /* 2-bit codes */
    uint16_t d, dmin;                /* fp16 super-scales of scales and mins */
} block_q2_K;
typedef struct {
    uint8_t hmask[QK_K_BLOCK / 8];   /* 3rd bit of each code (set means +0, clear means -4) */
    uint8_t qs[QK_K_BLOCK / 4];      /* low 2 bits */
    uint8_t scales[K_SCALE_SIZE];    /* 16 6-bit scales, offset by 32 */
    uint16_t d;
} block_q3_K;
typedef struct {
    uint16_t d, dmin;
    uint8_t scales[K_SCALE_SIZE];    /* 8 6-bit scales and 8 6-bit mins */
    uint8_t qs[QK_K_BLOCK / 2];      /* 4-bit codes */
} block_q4_K;
typedef struct {
    uint16_t d, dmin;
    uint8_t scales[K_SCALE_SIZE];
    uint8_t qh[QK_K_BLOCK / 8];      /* 5th bit: bit g of qh[l] for element 32g + l */
    uint8_t qs[QK_K_BLOCK / 2];      /* low 4 bits */
} block_q5_K;
typedef struct {
    uint8_t ql[QK_K_BLOCK / 2];      /* low 4 bits */
    uint8_t qh[QK_K_BLOCK / 4];      /* high 2 bits */
    int8_t scales[QK_K_BLOCK / 16];  /* 8-bit scales */
    uint16_t d;
} block_q6_K;
_Static_assert(sizeof(block_q2_K) == QK_Q2_K_BYTES, "wrong q2_K block size/padding");
_Static_assert(sizeof(block_q3_K) == QK_Q3_K_BYTES, "wrong q3_K block size/padding");
_Static_assert(sizeof(block_q4_K) == QK_Q4_K_BYTES, "wrong q4_K block size/padding");
_Static_assert(sizeof(block_q5_K) == QK_Q5_K_BYTES, "wrong q5_K block size/padding");
_Static_assert(sizeof(block_q6_K) == QK_Q6_K_BYTES, "wrong q6_K block size/padding");

/* Q4_K and Q5_K: 6-bit scale and min of group g (ggml's get_scale_min_k4). Groups 0..3 use
 * the low 6 bits of bytes g and g+4; groups 4..7 take their low 4 bits from the nibbles of
 * byte g+4 and their high 2 bits from the top of bytes g-4 (scale) and g (min). */
static inline void scale_min_k4(const uint8_t s[K_SCALE_SIZE], int g, int *sc, int *m) {
    if (g < 4) {
        *sc = s[g] & 63;
        *m = s[g + 4] & 63;
    } else {
        *sc = (s[g + 4] & 0x0F) | (s[g - 4] >> 6) << 4;
        *m = (s[g + 4] >> 4) | (s[g] >> 6) << 4;
    }
}

/* Bytes of one block of a ggml format; 0 for bitsandbytes formats. */
static inline int64_t ggml_block_bytes(qk_format f) {
    switch (f) {
    case QK_FORMAT_Q4_0: return QK_Q4_0_BYTES;
    case QK_FORMAT_Q4_1: return QK_Q4_1_BYTES;
    case QK_FORMAT_Q8_0: return QK_Q8_0_BYTES;
    case QK_FORMAT_Q5_0: return QK_Q5_0_BYTES;
    case QK_FORMAT_Q5_1: return QK_Q5_1_BYTES;
    case QK_FORMAT_Q2_K: return QK_Q2_K_BYTES;
    case QK_FORMAT_Q3_K: return QK_Q3_K_BYTES;
    case QK_FORMAT_Q4_K: return QK_Q4_K_BYTES;
    case QK_FORMAT_Q5_K: return QK_Q5_K_BYTES;
    case QK_FORMAT_Q6_K: return QK_Q6_K_BYTES;
    case QK_FORMAT_NF4:
    case QK_FORMAT_FP4: return 0;
    }
    return 0;
}

/* The scalar dequantizers of Q5_0, Q5_1 and the K-quants (dequant_ggml_types.c), bit for bit
 * as ggml's dequantize_row_*: nb whole blocks from src (2-byte aligned) into y[nb · block]. */
void qk_dequantize_blocks_q5_0_ref(const void *src, float *restrict y, int64_t nb);
void qk_dequantize_blocks_q5_1_ref(const void *src, float *restrict y, int64_t nb);
void qk_dequantize_blocks_q2_K_ref(const void *src, float *restrict y, int64_t nb);
void qk_dequantize_blocks_q3_K_ref(const void *src, float *restrict y, int64_t nb);
void qk_dequantize_blocks_q4_K_ref(const void *src, float *restrict y, int64_t nb);
void qk_dequantize_blocks_q5_K_ref(const void *src, float *restrict y, int64_t nb);
void qk_dequantize_blocks_q6_K_ref(const void *src, float *restrict y, int64_t nb);

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
