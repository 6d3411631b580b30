/* qgemv_int8_avx512.c — decoding's products with 8-bit activations, the way llama.cpp takes
 * them: each row of X is quantized per block of 32 (d_x = amax/32-block / 127, q = round(x/d_x),
 * ties away from zero: llama.cpp's Q8_0 with d_x kept in fp32), and each block's dot product
 * with W's codes is an exact integer sum (vpdpbusd) scaled in fp32:
 *
 *   Q8_0   y += d_w d_x Σ w_j q_j
 *   Q4_0   y += d_w d_x Σ (c_j − 8) q_j  =  d_w d_x Σ c_j q_j − 8 d_w s_x      s_x = d_x Σ q_j
 *   Q4_1   y += d_w d_x Σ c_j q_j + m_w s_x
 *   Q5_0, Q5_1   as Q4_0 (offset 16) and Q4_1, with the 5th bit added to the codes
 *   Q4_K, Q5_K   y += Σ_g d·sc_g d_x Σ c q − dmin·m_g s_x  (8 groups of 32 per 256)
 *   Q6_K   y += Σ d·sc_16 d_x Σ (c − 32) q                  (16 groups of 16 per 256)
 *
 * W is read once per token and never dequantized: two blocks' nibbles become 64 bytes of one
 * register (4 instructions) and meet X's bytes in one vpdpbusd, where the fp32 row path
 * converts, scales and stores 32 floats per block before its dot product. Error against the
 * fp32 product: |Σ_j ŵ_j (x_j − x̂_j)| ≤ Σ_b d_x,b/2 · Σ_j∈b |ŵ_j|, plus fp32 rounding of the
 * per-block terms and their sum. A block of X holding NaN or ±Inf gets d_x = NaN, so the
 * outputs it reaches are NaN as in fp32 (never a silently dropped NaN).
 *
 * X's bytes are laid out for W's registers: for Q4 and Q5 pairs of blocks a, b as
 * [a0..15, b0..15, a16..31, b16..31] (low nibbles of both, then high), a lone last block, Q8_0
 * and the K-quants in element order. */
#include "blocks.h"
#include <immintrin.h>
#include <math.h>

#define VNNI __attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni,f16c")))

int qk_int8_available(void) {
    static int vnni = -1; /* every thread that races here stores the same answer */
    int v = __atomic_load_n(&vnni, __ATOMIC_RELAXED);
    if (v < 0) {
        qk_cpu_info i;
        qk_cpu_detect(&i);
        v = i.avx512_vnni && i.os_avx512 && i.avx512bw && i.avx512vl && i.f16c;
        __atomic_store_n(&vnni, v, __ATOMIC_RELAXED);
    }
    return v && qk_isa_get() == QK_ISA_AVX512;
}

int qk_int8_decode_applies(const qk_matrix *w) {
    switch (w->format) {
    case QK_FORMAT_Q4_0: case QK_FORMAT_Q4_1: case QK_FORMAT_Q5_0: case QK_FORMAT_Q5_1: case QK_FORMAT_Q8_0:
    case QK_FORMAT_Q4_K: case QK_FORMAT_Q5_K: case QK_FORMAT_Q6_K: break;
    default: return 0;
    }
    return w->cols % w->block_size == 0 && qk_int8_available();
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

/* The T rows of X for W's format: q [T, in], ds [T, 2·in/32]; Q4 and Q5 pairs interleaved. */
void qk_gemv_int8_quantize(const qk_matrix *w, const float *x, int64_t T, int8_t *xq, float *xds) {
    const qk_format f = w->format;
    const int pairs = f == QK_FORMAT_Q4_0 || f == QK_FORMAT_Q4_1 || f == QK_FORMAT_Q5_0 || f == QK_FORMAT_Q5_1;
    const int64_t in = w->cols, nb = in / QK_GGML_BLOCK;
    for (int64_t k = 0; k < T; k++) qk_quantize_activations_q8(x + k * in, in, pairs, xq + k * in, xds + 2 * k * nb);
}

static inline VNNI float h2f(uint16_t h) { return _cvtsh_ss(h); }

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

/* A block's two fp16 words [d_w, c_w], c_w the factor of s_x: Q4_1 and Q5_1 their min, Q4_0
 * and Q5_0 d_w (the −8 or −16 is applied once at the end), Q8_0 d_w (its s term is unused). */
static inline uint32_t scale_words(qk_format f, const uint8_t *blk) {
    uint32_t v;
    if (f == QK_FORMAT_Q4_1 || f == QK_FORMAT_Q5_1) {
        memcpy(&v, blk, 4);
    } else {
        uint16_t d;
        memcpy(&d, blk, 2);
        v = (uint32_t)d * 0x10001u;
    }
    return v;
}

/* Q5's 5th bits (bit j of the little-endian qh: element j) at the bytes of a pair [a_lo | b_lo |
 * a_hi | b_hi], or of a lone block in element order. */
static inline uint64_t q5_pair_bits(const uint8_t *qha, const uint8_t *qhb) {
    uint32_t a, b;
    memcpy(&a, qha, 4);
    memcpy(&b, qhb, 4);
    return (uint64_t)(a & 0xFFFF) | (uint64_t)(b & 0xFFFF) << 16 | (uint64_t)(a >> 16) << 32 | (uint64_t)(b >> 16) << 48;
}

/* Y[r] for one row of X: Σ over blocks of d_w d_x Σ c q, plus offset · Σ c_w s_x. Q5_0 and
 * Q5_1 are Q4_0 and Q4_1 with a 5th bit (qh_at) and codes 0..31 (offset −16 for Q5_0). */
static inline VNNI float row_dot(qk_format f, size_t stride, size_t qs_at, size_t qh_at, const uint8_t *row, int64_t nb,
                                 const int8_t *xq, const float *ds) {
    const int q5 = f == QK_FORMAT_Q5_0 || f == QK_FORMAT_Q5_1;
    /* which lane of [d_w d_x, c_w s_x] (a, then b) scales each int32 lane of a pair's dot */
    const __m512i pick = f == QK_FORMAT_Q8_0 ? _mm512_set_epi32(2, 2, 2, 2, 2, 2, 2, 2, 0, 0, 0, 0, 0, 0, 0, 0)
                                             : _mm512_set_epi32(2, 2, 2, 2, 0, 0, 0, 0, 2, 2, 2, 2, 0, 0, 0, 0);
    __m512 acc0 = _mm512_setzero_ps(), acc1 = _mm512_setzero_ps();
    __m128 terms = _mm_setzero_ps();
    int64_t b = 0;
    for (; b + 2 <= nb; b += 2) {
        const uint8_t *ba = row + b * stride, *bb = ba + stride;
        __m512i wv = f == QK_FORMAT_Q8_0
            ? _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_loadu_si256((const __m256i *)(ba + qs_at))),
                                 _mm256_loadu_si256((const __m256i *)(bb + qs_at)), 1)
            : q4_pair(ba + qs_at, bb + qs_at);
        if (q5) wv = _mm512_mask_add_epi8(wv, q5_pair_bits(ba + qh_at, bb + qh_at), wv, _mm512_set1_epi8(16));
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
        __m256i wv = f == QK_FORMAT_Q8_0 ? _mm256_loadu_si256((const __m256i *)(ba + qs_at)) : q4_one(ba + qs_at);
        if (q5) {
            uint32_t bits;
            memcpy(&bits, ba + qh_at, 4);
            wv = _mm256_mask_add_epi8(wv, bits, wv, _mm256_set1_epi8(16));
        }
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
    const float offset = f == QK_FORMAT_Q4_1 || f == QK_FORMAT_Q5_1 ? 1.0f : f == QK_FORMAT_Q4_0 ? -8.0f : -16.0f;
    return sum + offset * (t[1] + t[3]);
}

/* Q4_K and Q5_K: per super-block of 256, d and dmin, eight 6-bit scales sc and mins m, one per
 * group of 32 (an x block): y += Σ_g d·sc_g · d_x Σ c q − dmin·m_g · s_x. Each 64 elements are
 * 32 bytes of qs, group 2j in the low nibbles and 2j+1 in the high: one register in element
 * order; Q5_K adds 16 where bit g of qh[l] is set (element l of group g). */
static inline VNNI float row_dot_k4(int q5, const uint8_t *row, int64_t nsb, const int8_t *xq, const float *ds) {
    __m512 acc0 = _mm512_setzero_ps(), acc1 = _mm512_setzero_ps();
    float mins = 0;
    for (int64_t i = 0; i < nsb; i++) {
        uint16_t dh, dminh;
        const uint8_t *scales, *qs, *qhp = NULL;
        if (q5) {
            const block_q5_K *blk = (const block_q5_K *)row + i;
            dh = blk->d, dminh = blk->dmin, scales = blk->scales, qs = blk->qs, qhp = blk->qh;
        } else {
            const block_q4_K *blk = (const block_q4_K *)row + i;
            dh = blk->d, dminh = blk->dmin, scales = blk->scales, qs = blk->qs;
        }
        const float d = h2f(dh), dmin = h2f(dminh);
        const float *dsb = ds + 16 * i;
        const int8_t *xb = xq + 256 * i;
        const __m256i qh = q5 ? _mm256_loadu_si256((const __m256i *)qhp) : _mm256_setzero_si256();
        for (int j = 0; j < 4; j++) {
            int sa, ma, sb, mb;
            scale_min_k4(scales, 2 * j, &sa, &ma);
            scale_min_k4(scales, 2 * j + 1, &sb, &mb);
            const __m256i q = _mm256_loadu_si256((const __m256i *)(qs + 32 * j));
            __m512i wv = _mm512_and_si512(_mm512_inserti64x4(_mm512_castsi256_si512(q), _mm256_srli_epi16(q, 4), 1),
                                          _mm512_set1_epi8(0x0F));
            if (q5) {
                const uint64_t lo = _mm256_test_epi8_mask(qh, _mm256_set1_epi8((char)(1 << (2 * j))));
                const uint64_t hi = _mm256_test_epi8_mask(qh, _mm256_set1_epi8((char)(1 << (2 * j + 1))));
                wv = _mm512_mask_add_epi8(wv, lo | hi << 32, wv, _mm512_set1_epi8(16));
            }
            const __m512i dot = _mm512_dpbusd_epi32(_mm512_setzero_si512(), wv, _mm512_loadu_si512((const void *)(xb + 64 * j)));
            const __m512 scale = _mm512_mask_blend_ps(0xFF00, _mm512_set1_ps(d * (float)sa * dsb[4 * j]),
                                                      _mm512_set1_ps(d * (float)sb * dsb[4 * j + 2]));
            if (j & 1) acc1 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), scale, acc1);
            else acc0 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), scale, acc0);
            mins += dmin * (float)ma * dsb[4 * j + 1] + dmin * (float)mb * dsb[4 * j + 3];
        }
    }
    return _mm512_reduce_add_ps(_mm512_add_ps(acc0, acc1)) - mins;
}

/* Q6_K: per super-block d and sixteen int8 scales, one per 16 elements; codes c of 6 bits,
 * y += Σ d·sc_16 · d_x Σ (c − 32) q. Half h, quarter t (an x block): low 4 bits from nibble
 * t/2 of ql[64h + 32·(t%2) + l], high 2 from bits 2t of qh[32h + l] (as the dequantizer). Two
 * quarters per register: (0, 1) from the low nibbles of ql's two rows, (2, 3) from the high. */
static inline VNNI float row_dot_q6_K(const block_q6_K *row, int64_t nsb, const int8_t *xq, const float *ds) {
    __m512 acc0 = _mm512_setzero_ps(), acc1 = _mm512_setzero_ps();
    const __m512i low_shift = _mm512_set_epi64(2, 2, 2, 2, 4, 4, 4, 4);      /* qh bits 0-1 / 2-3 up to 4-5 */
    const __m512i high_shift = _mm512_set_epi64(2, 2, 2, 2, 0, 0, 0, 0);     /* qh bits 4-5 / 6-7 down to 4-5 */
    /* the scale of each int32 lane: lanes 0-3 scale 0, 4-7 scale 1, 8-11 scale 2, 12-15 scale 3 */
    const __m128i spread = _mm_set_epi8(3, 3, 3, 3, 2, 2, 2, 2, 1, 1, 1, 1, 0, 0, 0, 0);
    for (int64_t i = 0; i < nsb; i++) {
        const block_q6_K *blk = row + i;
        const float d = h2f(blk->d);
        for (int h = 0; h < 2; h++) {
            const __m512i ql = _mm512_loadu_si512((const void *)(blk->ql + 64 * h));   /* [row a | row b] */
            const __m256i qh = _mm256_loadu_si256((const __m256i *)(blk->qh + 32 * h));
            const __m512i qh2 = _mm512_inserti64x4(_mm512_castsi256_si512(qh), qh, 1);
            const __m512i m4 = _mm512_set1_epi8(0x0F), m30 = _mm512_set1_epi8(0x30), c32 = _mm512_set1_epi8(32);
            const __m512i codes[2] = {
                _mm512_or_si512(_mm512_and_si512(ql, m4), _mm512_and_si512(_mm512_sllv_epi64(qh2, low_shift), m30)),
                _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi16(ql, 4), m4), _mm512_and_si512(_mm512_srlv_epi64(qh2, high_shift), m30)),
            };
            for (int p = 0; p < 2; p++) {  /* quarters 2p, 2p+1 */
                const int t = 2 * p;
                const __m512i w = _mm512_sub_epi8(codes[p], c32);
                const __m512i x = _mm512_loadu_si512((const void *)(xq + 256 * i + 128 * h + 32 * t));
                const __m512i dot = dot_signed(w, x);
                int32_t four;
                memcpy(&four, blk->scales + 8 * h + 2 * t, 4);
                const __m128i sc4 = _mm_cvtsi32_si128(four);
                const __m512 sc = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_shuffle_epi8(sc4, spread)));
                const float *dst = ds + 2 * (8 * i + 4 * h + t);  /* x blocks 8i + 4h + t and the next */
                const __m512 scale = _mm512_mul_ps(sc, _mm512_mask_blend_ps(0xFF00, _mm512_set1_ps(d * dst[0]), _mm512_set1_ps(d * dst[2])));
                if (p) acc1 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), scale, acc1);
                else acc0 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), scale, acc0);
            }
        }
    }
    return _mm512_reduce_add_ps(_mm512_add_ps(acc0, acc1));
}

/* Rows r0 ..< r1 of Y[T, out] (+ beta·Y) from X quantized (q [T, in], ds [T, 2·in/32]). Each row
 * of W is read from memory once and stays in L1 for the T rows of X. */
VNNI void qk_gemv_int8_rows(const qk_matrix *w, const int8_t *xq, const float *xds, int64_t T, int64_t r0, int64_t r1,
                            float *y, float beta) {
    const int64_t in = w->cols, out = w->rows, nb = in / QK_GGML_BLOCK;
    const qk_format f = w->format;
#define ROWS(F, BLOCK, QH_AT)                                                                                                   \
    for (int64_t r = r0; r < r1; r++) {                                                                                  \
        const uint8_t *row = w->data + (size_t)(r * nb) * sizeof(BLOCK);                                                \
        for (int64_t k = 0; k < T; k++) {                                                                                \
            const float v = row_dot(F, sizeof(BLOCK), offsetof(BLOCK, qs), QH_AT, row, nb, xq + k * in,          \
                                    xds + k * 2 * nb);                                                                    \
            float *o = y + k * out + r;                                                                                  \
            *o = beta == 0.0f ? v : v + beta * *o;                                                                       \
        }                                                                                                                \
    }
    if (f == QK_FORMAT_Q4_K || f == QK_FORMAT_Q5_K || f == QK_FORMAT_Q6_K) {
        const int64_t nsb = in / QK_K_BLOCK;
        for (int64_t r = r0; r < r1; r++) {
            const uint8_t *row = w->data + (size_t)(r * nsb) * (size_t)ggml_block_bytes(f);
            for (int64_t k = 0; k < T; k++) {
                const int8_t *x = xq + k * in;
                const float *xd = xds + k * 2 * nb;
                const float v = f == QK_FORMAT_Q4_K ? row_dot_k4(0, row, nsb, x, xd)
                              : f == QK_FORMAT_Q5_K ? row_dot_k4(1, row, nsb, x, xd)
                                                    : row_dot_q6_K((const block_q6_K *)row, nsb, x, xd);
                float *o = y + k * out + r;
                *o = beta == 0.0f ? v : v + beta * *o;
            }
        }
        return;
    }
    switch (f) {
    case QK_FORMAT_Q4_0: ROWS(QK_FORMAT_Q4_0, block_q4_0, 0) break;
    case QK_FORMAT_Q4_1: ROWS(QK_FORMAT_Q4_1, block_q4_1, 0) break;
    case QK_FORMAT_Q5_0: ROWS(QK_FORMAT_Q5_0, block_q5_0, offsetof(block_q5_0, qh)) break;
    case QK_FORMAT_Q5_1: ROWS(QK_FORMAT_Q5_1, block_q5_1, offsetof(block_q5_1, qh)) break;
    default: ROWS(QK_FORMAT_Q8_0, block_q8_0, 0) break;
    }
#undef ROWS
}
