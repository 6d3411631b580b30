/* dequant_avx2.c — AVX2 twins of qk_dequantize_blocks_scalar: `vpermps` looks 8 codes up
 * at a time in each half of the codebook, and a blend picks the half. Bit-exact with the
 * scalar reference. */
#include "blocks.h"
#include <immintrin.h>

#define AVX2 __attribute__((target("avx2,fma")))

/* 4 bitsandbytes bytes -> 8 codes in element order (high nibble first). */
AVX2 static inline __m256i nibbles_bnb(const uint8_t *q) {
    uint32_t word;
    memcpy(&word, q, 4);
    __m128i b = _mm_cvtsi32_si128((int)word);
    __m128i dup = _mm_unpacklo_epi8(b, b);
    __m256i v = _mm256_cvtepu8_epi32(dup);
    const __m256i shifts = _mm256_set_epi32(0, 4, 0, 4, 0, 4, 0, 4);
    return _mm256_and_si256(_mm256_srlv_epi32(v, shifts), _mm256_set1_epi32(0x0F));
}

AVX2 static inline __m256 lookup16(__m256i idx, __m256 lo, __m256 hi) {
    __m256 a = _mm256_permutevar8x32_ps(lo, idx);
    __m256 b = _mm256_permutevar8x32_ps(hi, idx);
    __m256 use_hi = _mm256_castsi256_ps(_mm256_slli_epi32(idx, 28)); /* bit 3 -> sign bit */
    return _mm256_blendv_ps(a, b, use_hi);
}

AVX2 void qk_dequantize_blocks_avx2(const qk_matrix *w, int64_t b0, int64_t nb, float *y) {
    const int64_t bs = w->block_size;
    switch (w->format) {
    case QK_FORMAT_NF4:
    case QK_FORMAT_FP4: {
        const __m256 lo = _mm256_loadu_ps(w->code), hi = _mm256_loadu_ps(w->code + 8);
        for (int64_t b = b0; b < b0 + nb; b++) {
            const __m256 a = _mm256_set1_ps(block_absmax(w, b));
            const uint8_t *q = w->data + b * bs / 2;
            for (int64_t i = 0; i < bs; i += 8, y += 8)
                _mm256_storeu_ps(y, _mm256_mul_ps(lookup16(nibbles_bnb(q + i / 2), lo, hi), a));
        }
        break;
    }
    case QK_FORMAT_Q4_0:
    case QK_FORMAT_Q4_1: {
        const int is_q4_1 = w->format == QK_FORMAT_Q4_1;
        const size_t stride = is_q4_1 ? sizeof(block_q4_1) : sizeof(block_q4_0);
        const size_t qs_at = is_q4_1 ? offsetof(block_q4_1, qs) : offsetof(block_q4_0, qs);
        const __m256i mask = _mm256_set1_epi32(0x0F), eight = _mm256_set1_epi32(8);
        for (int64_t b = b0; b < b0 + nb; b++, y += QK_GGML_BLOCK) {
            const uint8_t *blk = w->data + b * stride;
            uint16_t dh, mh = 0;
            memcpy(&dh, blk, 2);
            if (is_q4_1) memcpy(&mh, blk + 2, 2);
            const __m256 d = _mm256_set1_ps(fp16_to_fp32(dh));
            const __m256 m = _mm256_set1_ps(fp16_to_fp32(mh));
            for (int h = 0; h < 16; h += 8) {
                __m256i v = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(blk + qs_at + h)));
                __m256i lo = _mm256_and_si256(v, mask), hi = _mm256_srli_epi32(v, 4);
                if (is_q4_1) {
                    _mm256_storeu_ps(y + h, _mm256_add_ps(_mm256_mul_ps(_mm256_cvtepi32_ps(lo), d), m));
                    _mm256_storeu_ps(y + 16 + h, _mm256_add_ps(_mm256_mul_ps(_mm256_cvtepi32_ps(hi), d), m));
                } else {
                    _mm256_storeu_ps(y + h, _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_sub_epi32(lo, eight)), d));
                    _mm256_storeu_ps(y + 16 + h, _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_sub_epi32(hi, eight)), d));
                }
            }
        }
        break;
    }
    case QK_FORMAT_Q8_0: {
        for (int64_t b = b0; b < b0 + nb; b++, y += QK_GGML_BLOCK) {
            const block_q8_0 *x = (const block_q8_0 *)w->data + b;
            const __m256 d = _mm256_set1_ps(fp16_to_fp32(x->d));
            for (int h = 0; h < QK_GGML_BLOCK; h += 8) {
                __m256i v = _mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)(x->qs + h)));
                _mm256_storeu_ps(y + h, _mm256_mul_ps(_mm256_cvtepi32_ps(v), d));
            }
        }
        break;
    }
    default: /* Q5_0, Q5_1, K-quants: the scalar reference (AVX-512 machines have their own twin) */
        qk_dequantize_blocks_scalar(w, b0, nb, y);
        break;
    }
}
