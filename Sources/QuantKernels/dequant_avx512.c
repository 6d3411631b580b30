/* dequant_avx512.c — AVX-512 twins of qk_dequantize_blocks_scalar. The 16-entry codebook
 * sits in one zmm register and `vpermps` looks 16 codes up at once. Bit-exact with the
 * scalar reference (same single fp32 multiply per element; Q4_1 multiply then add; Q5_0,
 * Q5_1 and the K-quants through ggml16_avx512.h, the same operations as their reference). */
#include "ggml16_avx512.h"

#define AVX512 __attribute__((target("avx512f,avx512bw,avx512vl")))

/* 8 bitsandbytes bytes -> 16 codes in element order (high nibble first). */
AVX512 static inline __m512i nibbles_bnb(const uint8_t *q) {
    __m128i b = _mm_loadl_epi64((const __m128i *)q);
    __m128i dup = _mm_unpacklo_epi8(b, b);                    /* b0 b0 b1 b1 ... b7 b7 */
    __m512i v = _mm512_cvtepu8_epi32(dup);
    const __m512i shifts = _mm512_set_epi32(0, 4, 0, 4, 0, 4, 0, 4, 0, 4, 0, 4, 0, 4, 0, 4);
    return _mm512_and_si512(_mm512_srlv_epi32(v, shifts), _mm512_set1_epi32(0x0F));
}

/* Q5_0, Q5_1 and K-quant blocks 16 elements at a time, as the micro-kernels read them, one
 * loop per format (f constant: dequantize16_ggml folds to its case). Kept out of
 * qk_dequantize_blocks_avx512: inlined there it slowed the Q4_0/Q4_1 loops. */
AVX512 __attribute__((always_inline)) static inline void blocks16_as(qk_format f, const uint8_t *data, int64_t b0, int64_t nb, float *y) {
    const int64_t bytes = ggml_block_bytes(f), bs = f == QK_FORMAT_Q5_0 || f == QK_FORMAT_Q5_1 ? QK_GGML_BLOCK : QK_K_BLOCK;
    for (int64_t b = b0; b < b0 + nb; b++) {
        const uint8_t *blk = data + b * bytes;
        for (int j = 0; j < bs; j += 16, y += 16) _mm512_storeu_ps(y, dequantize16_ggml(f, blk, j));
    }
}

AVX512 __attribute__((noinline)) static void dequantize_blocks_ggml16(const qk_matrix *w, int64_t b0, int64_t nb, float *y) {
    switch (w->format) {
    case QK_FORMAT_Q5_0: blocks16_as(QK_FORMAT_Q5_0, w->data, b0, nb, y); break;
    case QK_FORMAT_Q5_1: blocks16_as(QK_FORMAT_Q5_1, w->data, b0, nb, y); break;
    case QK_FORMAT_Q2_K: blocks16_as(QK_FORMAT_Q2_K, w->data, b0, nb, y); break;
    case QK_FORMAT_Q3_K: blocks16_as(QK_FORMAT_Q3_K, w->data, b0, nb, y); break;
    case QK_FORMAT_Q4_K: blocks16_as(QK_FORMAT_Q4_K, w->data, b0, nb, y); break;
    case QK_FORMAT_Q5_K: blocks16_as(QK_FORMAT_Q5_K, w->data, b0, nb, y); break;
    case QK_FORMAT_Q6_K: blocks16_as(QK_FORMAT_Q6_K, w->data, b0, nb, y); break;
    default: break;
    }
}

AVX512 void qk_dequantize_blocks_avx512(const qk_matrix *w, int64_t b0, int64_t nb, float *y) {
    const int64_t bs = w->block_size;
    switch (w->format) {
    case QK_FORMAT_NF4:
    case QK_FORMAT_FP4: {
        const __m512 code = _mm512_loadu_ps(w->code);
        for (int64_t b = b0; b < b0 + nb; b++) {
            const __m512 a = _mm512_set1_ps(block_absmax(w, b));
            const uint8_t *q = w->data + b * bs / 2;
            for (int64_t i = 0; i < bs; i += 16, y += 16) {
                __m512 v = _mm512_permutexvar_ps(nibbles_bnb(q + i / 2), code);
                _mm512_storeu_ps(y, _mm512_mul_ps(v, a));
            }
        }
        break;
    }
    case QK_FORMAT_Q4_0:
    case QK_FORMAT_Q4_1: {
        const int is_q4_1 = w->format == QK_FORMAT_Q4_1;
        const size_t stride = is_q4_1 ? sizeof(block_q4_1) : sizeof(block_q4_0);
        const size_t qs_at = is_q4_1 ? offsetof(block_q4_1, qs) : offsetof(block_q4_0, qs);
        const __m512i mask = _mm512_set1_epi32(0x0F);
        for (int64_t b = b0; b < b0 + nb; b++, y += QK_GGML_BLOCK) {
            const uint8_t *blk = w->data + b * stride;
            uint16_t dh, mh = 0;
            memcpy(&dh, blk, 2);
            if (is_q4_1) memcpy(&mh, blk + 2, 2);
            const __m512 d = _mm512_set1_ps(fp16_to_fp32(dh));
            __m512i v = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(blk + qs_at)));
            __m512i lo = _mm512_and_si512(v, mask), hi = _mm512_srli_epi32(v, 4);
            if (is_q4_1) {
                const __m512 m = _mm512_set1_ps(fp16_to_fp32(mh));
                _mm512_storeu_ps(y, _mm512_add_ps(_mm512_mul_ps(_mm512_cvtepi32_ps(lo), d), m));
                _mm512_storeu_ps(y + 16, _mm512_add_ps(_mm512_mul_ps(_mm512_cvtepi32_ps(hi), d), m));
            } else {
                const __m512i eight = _mm512_set1_epi32(8);
                _mm512_storeu_ps(y, _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_sub_epi32(lo, eight)), d));
                _mm512_storeu_ps(y + 16, _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_sub_epi32(hi, eight)), d));
            }
        }
        break;
    }
    case QK_FORMAT_Q8_0: {
        for (int64_t b = b0; b < b0 + nb; b++, y += QK_GGML_BLOCK) {
            const block_q8_0 *x = (const block_q8_0 *)w->data + b;
            const __m512 d = _mm512_set1_ps(fp16_to_fp32(x->d));
            __m512i v0 = _mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)x->qs));
            __m512i v1 = _mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(x->qs + 16)));
            _mm512_storeu_ps(y, _mm512_mul_ps(_mm512_cvtepi32_ps(v0), d));
            _mm512_storeu_ps(y + 16, _mm512_mul_ps(_mm512_cvtepi32_ps(v1), d));
        }
        break;
    }
    default: /* Q5_0, Q5_1, K-quants */
        dequantize_blocks_ggml16(w, b0, nb, y);
        break;
    }
}
