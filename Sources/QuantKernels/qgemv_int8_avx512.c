/* qgemv_int8_avx512.c — decoding's products with 8-bit activations, the way llama.cpp takes
 * them: each row of X is quantized per block of 32 (d_x = amax/32-block / 127, q = round(x/d_x),
 * ties away from zero: llama.cpp's Q8_0 with d_x kept in fp32), and each block's dot product
 * with W's codes is an exact integer sum (vpdpbusd) scaled in fp32:
 *
 *   Q8_0   y += d_w d_x Σ w_j q_j
 *   Q4_0   y += d_w d_x Σ (c_j − 8) q_j  =  d_w d_x Σ c_j q_j − 8 d_w s_x      s_x = d_x Σ q_j
 *   Q4_1   y += d_w d_x Σ c_j q_j + m_w s_x
 *
 * W is read once per token and never dequantized: two blocks' nibbles become 64 bytes of one
 * register (4 instructions) and meet X's bytes in one vpdpbusd, where the fp32 row path
 * converts, scales and stores 32 floats per block before its dot product. Error against the
 * fp32 product: |Σ_j ŵ_j (x_j − x̂_j)| ≤ Σ_b d_x,b/2 · Σ_j∈b |ŵ_j|, plus fp32 rounding of the
 * per-block terms and their sum. A block of X holding NaN or ±Inf gets d_x = NaN, so the
 * outputs it reaches are NaN as in fp32 (never a silently dropped NaN).
 *
 * X's bytes are laid out for W's registers: for Q4 pairs of blocks a, b as
 * [a0..15, b0..15, a16..31, b16..31] (low nibbles of both, then high), a lone last block and
 * Q8_0 in element order. */
#include "blocks.h"
#include <immintrin.h>
#include <math.h>
#include <stdlib.h>

#define VNNI __attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni,f16c")))

int qk_int8_decode_applies(const qk_matrix *w) {
    if (w->format != QK_FORMAT_Q4_0 && w->format != QK_FORMAT_Q4_1 && w->format != QK_FORMAT_Q8_0) return 0;
    if (w->cols % QK_GGML_BLOCK != 0 || qk_isa_get() != QK_ISA_AVX512) return 0;
    static int vnni = -1;
    if (vnni < 0) {
        qk_cpu_info i;
        qk_cpu_detect(&i);
        vnni = i.avx512_vnni && i.os_avx512 && i.avx512bw && i.avx512vl && i.f16c;
    }
    return vnni;
}

/* One row of X, n a multiple of 32: q [n] in the layout W's format reads; ds [2·n/32]: d_x and
 * s_x = d_x Σq of each block, side by side so that a pair's four load as one vector. */
void qk_quantize_activations_q8(const float *x, int64_t n, int pair_layout, int8_t *q, float *ds) {
    const int64_t nb = n / QK_GGML_BLOCK;
    for (int64_t b = 0; b < nb; b++) {
        const float *xb = x + b * QK_GGML_BLOCK;
        float amax = 0;
        int bad = 0;
        for (int j = 0; j < QK_GGML_BLOCK; j++) {
            const float a = fabsf(xb[j]);
            bad |= !(a <= 3.4028234663852886e38f); /* NaN or ±Inf */
            amax = a > amax ? a : amax;
        }
        int8_t v[QK_GGML_BLOCK];
        int sum = 0;
        const float db = bad ? NAN : amax / 127.0f;
        for (int j = 0; j < QK_GGML_BLOCK; j++) {
            const float r = bad || db == 0 ? 0.0f : roundf(xb[j] / db);
            v[j] = (int8_t)(r > 127 ? 127 : r < -127 ? -127 : r);
            sum += v[j];
        }
        ds[2 * b] = db;
        ds[2 * b + 1] = db * (float)sum;
        const int64_t first = b - b % 2; /* the pair's first block */
        if (pair_layout && first + 1 < nb) {
            int8_t *pair = q + first * QK_GGML_BLOCK;
            const int at = b % 2 ? 16 : 0;
            memcpy(pair + at, v, 16);
            memcpy(pair + 32 + at, v + 16, 16);
        } else {
            memcpy(q + b * QK_GGML_BLOCK, v, QK_GGML_BLOCK);
        }
    }
}

/* The 64 code bytes of Q4 blocks a, b as [a_lo | b_lo | a_hi | b_hi], each 0..15. */
static inline VNNI __m512i q4_pair(const uint8_t *qa, const uint8_t *qb) {
    const __m256i ab = _mm256_inserti128_si256(_mm256_castsi128_si256(_mm_loadu_si128((const __m128i *)qa)),
                                               _mm_loadu_si128((const __m128i *)qb), 1);
    const __m512i z = _mm512_inserti64x4(_mm512_castsi256_si512(ab), _mm256_srli_epi16(ab, 4), 1);
    return _mm512_and_si512(z, _mm512_set1_epi8(0x0F));
}

/* The 32 code bytes of a lone Q4 block in element order. */
static inline VNNI __m256i q4_one(const uint8_t *qs) {
    const __m128i v = _mm_loadu_si128((const __m128i *)qs);
    const __m256i z = _mm256_inserti128_si256(_mm256_castsi128_si256(v), _mm_srli_epi16(v, 4), 1);
    return _mm256_and_si256(z, _mm256_set1_epi8(0x0F));
}

/* u8 × s8 products summed by 4 where W's bytes are signed (Q8_0): |w| × (x with w's sign). */
static inline VNNI __m512i dot_signed(__m512i w, __m512i x) {
    const __mmask64 neg = _mm512_movepi8_mask(w);
    return _mm512_dpbusd_epi32(_mm512_setzero_si512(), _mm512_abs_epi8(w), _mm512_mask_sub_epi8(x, neg, _mm512_setzero_si512(), x));
}
static inline VNNI __m256i dot_signed256(__m256i w, __m256i x) {
    const __mmask32 neg = _mm256_movepi8_mask(w);
    return _mm256_dpbusd_epi32(_mm256_setzero_si256(), _mm256_abs_epi8(w), _mm256_mask_sub_epi8(x, neg, _mm256_setzero_si256(), x));
}

/* A block's two fp16 words [d_w, c_w], c_w the factor of s_x: Q4_1 its min, Q4_0 d_w (the −8
 * is applied once at the end), Q8_0 d_w (its s term is multiplied by 0 at the end). */
static inline uint32_t scale_words(qk_format f, const uint8_t *blk) {
    uint32_t v;
    if (f == QK_FORMAT_Q4_1) {
        memcpy(&v, blk, 4);
    } else {
        uint16_t d;
        memcpy(&d, blk, 2);
        v = (uint32_t)d * 0x10001u;
    }
    return v;
}

/* Y[r] for one row of X: Σ over blocks of d_w d_x Σ c q, plus offset · Σ c_w s_x. */
static inline VNNI float row_dot(qk_format f, size_t stride, size_t qs_at, const uint8_t *row, int64_t nb,
                                 const int8_t *xq, const float *ds) {
    /* which lane of [d_w d_x, c_w s_x] (a, then b) scales each int32 lane of a pair's dot */
    const __m512i pick = f == QK_FORMAT_Q8_0 ? _mm512_set_epi32(2, 2, 2, 2, 2, 2, 2, 2, 0, 0, 0, 0, 0, 0, 0, 0)
                                             : _mm512_set_epi32(2, 2, 2, 2, 0, 0, 0, 0, 2, 2, 2, 2, 0, 0, 0, 0);
    __m512 acc0 = _mm512_setzero_ps(), acc1 = _mm512_setzero_ps();
    __m128 terms = _mm_setzero_ps();
    int64_t b = 0;
    for (; b + 2 <= nb; b += 2) {
        const uint8_t *ba = row + b * stride, *bb = ba + stride;
        const __m512i wv = f == QK_FORMAT_Q8_0
            ? _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_loadu_si256((const __m256i *)(ba + qs_at))),
                                 _mm256_loadu_si256((const __m256i *)(bb + qs_at)), 1)
            : q4_pair(ba + qs_at, bb + qs_at);
        const __m512i xv = _mm512_loadu_si512((const void *)(xq + b * QK_GGML_BLOCK));
        const __m512i dot = f == QK_FORMAT_Q8_0 ? dot_signed(wv, xv) : _mm512_dpbusd_epi32(_mm512_setzero_si512(), wv, xv);
        const __m128i words = _mm_cvtsi64_si128((long long)((uint64_t)scale_words(f, bb) << 32 | scale_words(f, ba)));
        const __m128 p = _mm_mul_ps(_mm_cvtph_ps(words), _mm_loadu_ps(ds + 2 * b));
        terms = _mm_add_ps(terms, p);
        const __m512 scale = _mm512_permutexvar_ps(pick, _mm512_castps128_ps512(p));
        if (b & 2) acc1 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), scale, acc1);
        else acc0 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), scale, acc0);
    }
    if (b < nb) { /* a lone last block, X in element order */
        const uint8_t *ba = row + b * stride;
        const __m256i wv = f == QK_FORMAT_Q8_0 ? _mm256_loadu_si256((const __m256i *)(ba + qs_at)) : q4_one(ba + qs_at);
        const __m256i xv = _mm256_loadu_si256((const __m256i *)(xq + b * QK_GGML_BLOCK));
        const __m256i dot = f == QK_FORMAT_Q8_0 ? dot_signed256(wv, xv) : _mm256_dpbusd_epi32(_mm256_setzero_si256(), wv, xv);
        const __m128 p = _mm_mul_ps(_mm_cvtph_ps(_mm_cvtsi32_si128((int)scale_words(f, ba))),
                                    _mm_castpd_ps(_mm_load_sd((const double *)(ds + 2 * b))));
        terms = _mm_add_ps(terms, p);
        acc0 = _mm512_add_ps(acc0, _mm512_zextps256_ps512(_mm256_mul_ps(_mm256_cvtepi32_ps(dot), _mm256_set1_ps(_mm_cvtss_f32(p)))));
    }
    const float sum = _mm512_reduce_add_ps(_mm512_add_ps(acc0, acc1));
    if (f == QK_FORMAT_Q8_0) return sum;
    float t[4];
    _mm_storeu_ps(t, terms);
    return sum + (f == QK_FORMAT_Q4_1 ? 1.0f : -8.0f) * (t[1] + t[3]);
}

/* Rows r0 ..< r1 of Y[T, out] (+ beta·Y) from X quantized (q [T, in], ds [T, 2·in/32]). Each row
 * of W is read from memory once and stays in L1 for the T rows of X. */
VNNI void qk_gemv_int8_rows(const qk_matrix *w, const int8_t *xq, const float *xds, int64_t T, int64_t r0, int64_t r1,
                            float *y, float beta) {
    const int64_t in = w->cols, out = w->rows, nb = in / QK_GGML_BLOCK;
    const qk_format f = w->format;
#define ROWS(F, BLOCK)                                                                                                   \
    for (int64_t r = r0; r < r1; r++) {                                                                                  \
        const uint8_t *row = w->data + (size_t)(r * nb) * sizeof(BLOCK);                                                \
        for (int64_t k = 0; k < T; k++) {                                                                                \
            const float v = row_dot(F, sizeof(BLOCK), offsetof(BLOCK, qs), row, nb, xq + k * in, xds + k * 2 * nb);      \
            float *o = y + k * out + r;                                                                                  \
            *o = beta == 0.0f ? v : v + beta * *o;                                                                       \
        }                                                                                                                \
    }
    switch (f) {
    case QK_FORMAT_Q4_0: ROWS(QK_FORMAT_Q4_0, block_q4_0) break;
    case QK_FORMAT_Q4_1: ROWS(QK_FORMAT_Q4_1, block_q4_1) break;
    default: ROWS(QK_FORMAT_Q8_0, block_q8_0) break;
    }
#undef ROWS
}
