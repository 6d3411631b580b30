/* panels_avx512.h — what the AVX-512 micro-kernel GEMMs (qgemm_avx512.c in fp32,
 * qgemm_bf16_avx512.c in bf16) share to fill their packed panels: 16 dequantized elements of
 * a row at a time, the same values as the scalar reference, and a 16×16 transpose of 32-bit
 * lanes. Internal. */
#ifndef QK_PANELS_AVX512_H
#define QK_PANELS_AVX512_H

#include "ggml16_avx512.h"

#define AVX512 __attribute__((target("avx512f,avx512bw,avx512vl")))

/* ---- 16 consecutive elements of row r, columns [c, c+16), c % 16 == 0 --------------------- */
AVX512 static inline __m512i nibbles_bnb(const uint8_t *q) {
    __m128i b = _mm_loadl_epi64((const __m128i *)q);
    __m512i v = _mm512_cvtepu8_epi32(_mm_unpacklo_epi8(b, b));
    const __m512i shifts = _mm512_set_epi32(0, 4, 0, 4, 0, 4, 0, 4, 0, 4, 0, 4, 0, 4, 0, 4);
    return _mm512_and_si512(_mm512_srlv_epi32(v, shifts), _mm512_set1_epi32(0x0F));
}

#define ALWAYS_INLINE __attribute__((always_inline))

/* How a micro-kernel writes its accumulators to C: C = acc; C += acc; C = acc + beta·C. */
enum { STORE = 0, ADD = 1, SCALE_ADD = 2 };

/* The first `cols` (1 ≤ cols, at most 16 taken) columns of C at p from accumulator r, per
 * mode; vb = beta in every lane. Every micro-kernel's store. */
AVX512 ALWAYS_INLINE static inline void store_c(float *p, int cols, __m512 r, int mode, __m512 vb) {
    const __mmask16 m = cols >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << cols) - 1);
    if (mode == ADD) r = _mm512_add_ps(r, _mm512_maskz_loadu_ps(m, p));
    else if (mode == SCALE_ADD) r = _mm512_add_ps(r, _mm512_mul_ps(vb, _mm512_maskz_loadu_ps(m, p)));
    _mm512_mask_storeu_ps(p, m, r);
}

/* The same values as the scalar reference (dequant_scalar.c), 16 at a time. `f` is w's format
 * as a constant (WITH_FORMAT below): inlined, the switch folds to that format's case. */
AVX512 ALWAYS_INLINE static inline __m512 dequantize16(qk_format f, const qk_matrix *w, __m512 code, int64_t r, int64_t c) {
    switch (f) {
    case QK_FORMAT_NF4:
    case QK_FORMAT_FP4: {
        const int64_t e = r * w->cols + c; /* 16 elements never straddle a block */
        const int64_t b = e >> __builtin_ctzll((unsigned long long)w->block_size); /* power of two */
        const float a = block_absmax(w, b);
        return _mm512_mul_ps(_mm512_permutexvar_ps(nibbles_bnb(w->data + (e >> 1)), code), _mm512_set1_ps(a));
    }
    case QK_FORMAT_Q4_0:
    case QK_FORMAT_Q4_1: {
        /* columns c..c+15 are the low (c % 32 == 0) or high nibbles of the block's 16 bytes */
        const int q41 = f == QK_FORMAT_Q4_1;
        const size_t bytes = q41 ? sizeof(block_q4_1) : sizeof(block_q4_0);
        const uint8_t *blk = w->data + (size_t)(r * (w->cols / QK_GGML_BLOCK) + c / QK_GGML_BLOCK) * bytes;
        uint16_t dh, mh = 0;
        memcpy(&dh, blk, 2);
        if (q41) memcpy(&mh, blk + 2, 2);
        __m512i v = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(blk + (q41 ? 4 : 2))));
        v = (c & 16) ? _mm512_srli_epi32(v, 4) : _mm512_and_si512(v, _mm512_set1_epi32(0x0F));
        const __m512 d = _mm512_set1_ps(fp16_to_fp32(dh));
        if (q41) return _mm512_add_ps(_mm512_mul_ps(_mm512_cvtepi32_ps(v), d), _mm512_set1_ps(fp16_to_fp32(mh)));
        return _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_sub_epi32(v, _mm512_set1_epi32(8))), d);
    }
    case QK_FORMAT_Q8_0: {
        const block_q8_0 *x = (const block_q8_0 *)w->data + r * (w->cols / QK_GGML_BLOCK) + c / QK_GGML_BLOCK;
        const __m512i v = _mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(x->qs + (c & 16))));
        return _mm512_mul_ps(_mm512_cvtepi32_ps(v), _mm512_set1_ps(fp16_to_fp32(x->d)));
    }
    case QK_FORMAT_Q5_0:
    case QK_FORMAT_Q5_1: {
        const uint8_t *blk = w->data + (size_t)(r * (w->cols / QK_GGML_BLOCK) + c / QK_GGML_BLOCK) * ggml_block_bytes(f);
        return dequantize16_ggml(f, blk, (int)(c % QK_GGML_BLOCK));
    }
    case QK_FORMAT_Q2_K:
    case QK_FORMAT_Q3_K:
    case QK_FORMAT_Q4_K:
    case QK_FORMAT_Q5_K:
    case QK_FORMAT_Q6_K: { /* a K-tile may start anywhere 16-aligned: find the super-block and its sub-group */
        const uint8_t *blk = w->data + (size_t)(r * (w->cols / QK_K_BLOCK) + c / QK_K_BLOCK) * ggml_block_bytes(f);
        return dequantize16_ggml(f, blk, (int)(c % QK_K_BLOCK));
    }
    }
    return _mm512_setzero_ps();
}

/* Asks for the cache line holding element (r, c) of w's blocks (a K-quant's: the line at the
 * same fraction of its super-block), when r is a row of w. The panels read W from memory
 * (a model's frozen weights do not stay in cache from one step to the next), 16 rows or two
 * rows at a time, a pattern the hardware prefetchers follow late. */
AVX512 ALWAYS_INLINE static inline void prefetch_block(qk_format f, const qk_matrix *w, int64_t r, int64_t c) {
    if (r >= w->rows) return;
    const uint8_t *p;
    switch (f) {
    case QK_FORMAT_NF4:
    case QK_FORMAT_FP4: p = w->data + ((r * w->cols + c) >> 1); break;
    case QK_FORMAT_Q4_0:
    case QK_FORMAT_Q4_1:
    case QK_FORMAT_Q8_0:
    case QK_FORMAT_Q5_0:
    case QK_FORMAT_Q5_1: p = w->data + (size_t)(r * (w->cols / QK_GGML_BLOCK) + c / QK_GGML_BLOCK) * ggml_block_bytes(f); break;
    default: {
        const int64_t bytes = ggml_block_bytes(f);
        p = w->data + (size_t)(r * (w->cols / QK_K_BLOCK) + c / QK_K_BLOCK) * bytes + (c % QK_K_BLOCK) * bytes / QK_K_BLOCK;
    }
    }
    _mm_prefetch((const char *)p, _MM_HINT_T0);
}

/* Runs AS(F) with F the constant for `format`, so that each format gets its own copy of a
 * packing loop, dequantize16 folded to its case: one switch per panel instead of one per 16
 * elements, and no call where the cases would make dequantize16 too big to inline (keeping
 * them all in one loop cost the bf16 kernel 5–15% on Q4_0/Q4_1/Q8_0). NF4 and FP4 share. */
#define WITH_FORMAT(format, AS)                        \
    switch (format) {                                  \
    case QK_FORMAT_NF4: case QK_FORMAT_FP4: AS(QK_FORMAT_NF4); break; \
    case QK_FORMAT_Q4_0: AS(QK_FORMAT_Q4_0); break;    \
    case QK_FORMAT_Q4_1: AS(QK_FORMAT_Q4_1); break;    \
    case QK_FORMAT_Q8_0: AS(QK_FORMAT_Q8_0); break;    \
    case QK_FORMAT_Q5_0: AS(QK_FORMAT_Q5_0); break;    \
    case QK_FORMAT_Q5_1: AS(QK_FORMAT_Q5_1); break;    \
    case QK_FORMAT_Q2_K: AS(QK_FORMAT_Q2_K); break;    \
    case QK_FORMAT_Q3_K: AS(QK_FORMAT_Q3_K); break;    \
    case QK_FORMAT_Q4_K: AS(QK_FORMAT_Q4_K); break;    \
    case QK_FORMAT_Q5_K: AS(QK_FORMAT_Q5_K); break;    \
    case QK_FORMAT_Q6_K: AS(QK_FORMAT_Q6_K); break;    \
    }

AVX512 static inline void transpose16(__m512 r[16]) {
    __m512 t[16], o[16];
    for (int i = 0; i < 8; i++) {
        t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
        t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
    }
    for (int i = 0; i < 4; i++) {
        __m512d a = _mm512_castps_pd(t[4 * i]), b = _mm512_castps_pd(t[4 * i + 1]);
        __m512d c = _mm512_castps_pd(t[4 * i + 2]), d = _mm512_castps_pd(t[4 * i + 3]);
        r[4 * i + 0] = _mm512_castpd_ps(_mm512_unpacklo_pd(a, c));
        r[4 * i + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(a, c));
        r[4 * i + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(b, d));
        r[4 * i + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(b, d));
    }
    /* r[4i + j], 128-bit lane L, holds column 4L + j of rows 4i .. 4i+3 */
    for (int j = 0; j < 4; j++) {
        __m512 u0 = _mm512_shuffle_f32x4(r[j], r[4 + j], 0x44), u1 = _mm512_shuffle_f32x4(r[j], r[4 + j], 0xEE);
        __m512 u2 = _mm512_shuffle_f32x4(r[8 + j], r[12 + j], 0x44), u3 = _mm512_shuffle_f32x4(r[8 + j], r[12 + j], 0xEE);
        o[j] = _mm512_shuffle_f32x4(u0, u2, 0x88);
        o[4 + j] = _mm512_shuffle_f32x4(u0, u2, 0xDD);
        o[8 + j] = _mm512_shuffle_f32x4(u1, u3, 0x88);
        o[12 + j] = _mm512_shuffle_f32x4(u1, u3, 0xDD);
    }
    for (int i = 0; i < 16; i++) r[i] = o[i];
}

#endif
