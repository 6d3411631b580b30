/* ggml16_avx512.h — 16 consecutive elements of one Q5_0, Q5_1 or K-quant block, dequantized
 * in one zmm register: what the micro-kernels' panels (panels_avx512.h, dequantize16) and
 * the AVX-512 block dequantizer (dequant_avx512.c) share. Internal.
 *
 * Element j0 + l (l < 16) of a block, j0 a multiple of 16: every 16-aligned run of 16 lies in
 * one sub-group of one scale (and min), so the scale is decoded once (its 4-, 6- or 8-bit field
 * in scalar code, the fp16 super-scale by vcvtph2ps), and the codes are widened byte → 32-bit
 * lanes and shifted into place. The arithmetic is the scalar
 * reference's (dequant_ggml_types.c), one operation at a time in the same order, so the
 * values are the same bits:
 *   Q5_0  (q − 16)·d          Q5_1  q·d + m
 *   Q2_K  (d·sc)·q − dmin·m   Q3_K  (d·(sc − 32))·q      Q4_K, Q5_K  (d·sc)·q − dmin·m
 *   Q6_K  (d·sc)·(q − 32)
 */
#ifndef QK_GGML16_AVX512_H
#define QK_GGML16_AVX512_H

#include "blocks.h"
#include <immintrin.h>

#define GGML16 __attribute__((target("avx512f,avx512bw,avx512vl")))

/* 16 bytes → 16 lanes. */
GGML16 static inline __m512i widen16(const uint8_t *p) { return _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)p)); }

/* (v >> shift) & mask in every lane. */
GGML16 static inline __m512i bits16(__m512i v, unsigned shift, int mask) {
    return _mm512_and_si512(_mm512_srli_epi32(v, shift), _mm512_set1_epi32(mask));
}

/* An fp16 scale in all 16 lanes, converted by vcvtph2ps (the same bits as fp16_to_fp32, in
 * one instruction instead of a branchy scalar routine per 16 elements). */
GGML16 static inline __m512 half16(uint16_t h) { return _mm512_cvtph_ps(_mm256_set1_epi16((short)h)); }

/* d·s, ggml's sub-block scale (one fp32 multiply), in all 16 lanes. */
GGML16 static inline __m512 scaled16(uint16_t d, int s) { return _mm512_mul_ps(half16(d), _mm512_set1_ps((float)s)); }

/* Q5_0 and Q5_1: the low (j0 = 0) or high (j0 = 16) nibbles of qs, plus 16 where bit j0 + l
 * of qh is set. */
GGML16 static inline __m512i codes_q5(const uint8_t *qh4, const uint8_t *qs, int j0) {
    uint32_t qh;
    memcpy(&qh, qh4, 4);
    const __m512i low = bits16(widen16(qs), j0 ? 4 : 0, 0x0F);
    return _mm512_mask_add_epi32(low, (__mmask16)(qh >> j0), low, _mm512_set1_epi32(16));
}

/* Elements j0 .. j0+15 of the block at blk, for Q5_0, Q5_1 and the K-quants. Always inlined:
 * callers pass a constant format, and the switch folds to its case. */
GGML16 __attribute__((always_inline)) static inline __m512 dequantize16_ggml(qk_format format, const uint8_t *blk, int j0) {
    switch (format) {
    case QK_FORMAT_Q5_0: {
        const block_q5_0 *x = (const block_q5_0 *)blk;
        const __m512i q = _mm512_sub_epi32(codes_q5(x->qh, x->qs, j0), _mm512_set1_epi32(16));
        return _mm512_mul_ps(_mm512_cvtepi32_ps(q), half16(x->d));
    }
    case QK_FORMAT_Q5_1: {
        const block_q5_1 *x = (const block_q5_1 *)blk;
        return _mm512_add_ps(_mm512_mul_ps(_mm512_cvtepi32_ps(codes_q5(x->qh, x->qs, j0)), half16(x->d)), half16(x->m));
    }
    case QK_FORMAT_Q2_K: {
        /* group g = 8h + 2s + t: the 2 bits at 2s of qs[32h + 16t + l] */
        const block_q2_K *x = (const block_q2_K *)blk;
        const int g = j0 / 16, h = g / 8, s = (g % 8) / 2, t = g % 2;
        const __m512 dl = scaled16(x->d, x->scales[g] & 0x0F), ml = scaled16(x->dmin, x->scales[g] >> 4);
        const __m512i q = bits16(widen16(x->qs + 32 * h + 16 * t), (unsigned)(2 * s), 3);
        return _mm512_sub_ps(_mm512_mul_ps(dl, _mm512_cvtepi32_ps(q)), ml);
    }
    case QK_FORMAT_Q3_K: {
        /* codes as Q2_K's, less 4 where bit g/2 of hmask[16·(g%2) + l] is clear */
        const block_q3_K *x = (const block_q3_K *)blk;
        const int g = j0 / 16, h = g / 8, s = (g % 8) / 2, t = g % 2;
        const int low = g < 8 ? (x->scales[g] & 0x0F) : (x->scales[g - 8] >> 4);
        const int high = (x->scales[8 + g % 4] >> (2 * (g / 4))) & 3;
        const __m512 dl = scaled16(x->d, (low | high << 4) - 32);
        const __m512i q2 = bits16(widen16(x->qs + 32 * h + 16 * t), (unsigned)(2 * s), 3);
        const __mmask16 set = _mm512_test_epi32_mask(widen16(x->hmask + 16 * t), _mm512_set1_epi32(1 << (g / 2)));
        const __m512i q = _mm512_mask_sub_epi32(q2, (__mmask16)~set, q2, _mm512_set1_epi32(4));
        return _mm512_mul_ps(dl, _mm512_cvtepi32_ps(q));
    }
    case QK_FORMAT_Q4_K:
    case QK_FORMAT_Q5_K: {
        /* group G of 32: low (even G) or high (odd G) nibbles of qs[32·(G/2) + l], Q5_K adding
         * 16 where bit G of qh[l] is set; l = j0 % 32 + 0..15 */
        const int five = format == QK_FORMAT_Q5_K;
        const block_q4_K *x4 = (const block_q4_K *)blk;
        const block_q5_K *x5 = (const block_q5_K *)blk;
        const uint8_t *scales = five ? x5->scales : x4->scales, *qs = five ? x5->qs : x4->qs;
        const int G = j0 / 32, l0 = j0 % 32;
        int sc, m;
        scale_min_k4(scales, G, &sc, &m);
        const __m512 dl = scaled16(x4->d, sc), ml = scaled16(x4->dmin, m);
        __m512i q = bits16(widen16(qs + 32 * (G / 2) + l0), (unsigned)(4 * (G % 2)), 0x0F);
        if (five) {
            const __mmask16 set = _mm512_test_epi32_mask(widen16(x5->qh + l0), _mm512_set1_epi32(1 << G));
            q = _mm512_mask_add_epi32(q, set, q, _mm512_set1_epi32(16));
        }
        return _mm512_sub_ps(_mm512_mul_ps(dl, _mm512_cvtepi32_ps(q)), ml);
    }
    case QK_FORMAT_Q6_K: {
        /* element 128h + 32t + l: nibble t/2 of ql[64h + 32·(t%2) + l], the 2 bits at 2t of
         * qh[32h + l] above it; scale scales[j0 / 16] */
        const block_q6_K *x = (const block_q6_K *)blk;
        const int h = j0 / 128, t = (j0 % 128) / 32, l0 = j0 % 32;
        const __m512 ds = scaled16(x->d, x->scales[j0 / 16]);
        const __m512i lo = bits16(widen16(x->ql + 64 * h + 32 * (t % 2) + l0), (unsigned)(4 * (t / 2)), 0x0F);
        const __m512i hi = bits16(widen16(x->qh + 32 * h + l0), (unsigned)(2 * t), 3);
        const __m512i q = _mm512_sub_epi32(_mm512_or_si512(lo, _mm512_slli_epi32(hi, 4)), _mm512_set1_epi32(32));
        return _mm512_mul_ps(ds, _mm512_cvtepi32_ps(q));
    }
    default: return _mm512_setzero_ps(); /* the other formats are read by their own code */
    }
}

#endif
