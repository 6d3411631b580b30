/* attention_avx512.c — AVX-512 twins of the attention's small products (attention.h):
 * register tiles of 6 rows × 64 columns (24 zmm accumulators), one broadcast of A and four
 * loads of B per step of the inner index. Each element of C is one fused multiply-add chain
 * over the inner index in order, whatever the tile or the size of the call, so a result
 * never depends on how a product is cut into calls. */
#include "attention.h"
#include <immintrin.h>

#define AVX512 __attribute__((target("avx512f")))
#define INLINE __attribute__((always_inline)) static inline

enum { MR = QK_ATTN_TILE_ROWS, NV = 4 }; /* rows, 16-float vectors per tile */

/* One tile: rows `mr`, vectors `nv` (the last one masked by `tail`), both constants after
 * inlining, so the accumulators stay in registers. */
AVX512 INLINE void tile(float *C, int64_t ldc, const float *A, int64_t a_rs, int64_t a_ks, const float *B,
                        int64_t ldb, int64_t k, int accumulate, const int mr, const int nv, __mmask16 tail) {
    __m512 acc[MR][NV];
    for (int r = 0; r < mr; r++)
        for (int v = 0; v < nv; v++) {
            const __mmask16 m = v == nv - 1 ? tail : 0xFFFF;
            acc[r][v] = accumulate ? _mm512_maskz_loadu_ps(m, C + r * ldc + 16 * v) : _mm512_setzero_ps();
        }
    for (int64_t p = 0; p < k; p++) {
        __m512 b[NV];
        for (int v = 0; v < nv; v++) {
            const __mmask16 m = v == nv - 1 ? tail : 0xFFFF;
            b[v] = _mm512_maskz_loadu_ps(m, B + p * ldb + 16 * v);
        }
        for (int r = 0; r < mr; r++) {
            const __m512 a = _mm512_set1_ps(A[r * a_rs + p * a_ks]);
            for (int v = 0; v < nv; v++) acc[r][v] = _mm512_fmadd_ps(a, b[v], acc[r][v]);
        }
    }
    for (int r = 0; r < mr; r++)
        for (int v = 0; v < nv; v++) {
            const __mmask16 m = v == nv - 1 ? tail : 0xFFFF;
            _mm512_mask_storeu_ps(C + r * ldc + 16 * v, m, acc[r][v]);
        }
}

/* The tile for any row count up to MR and any vector count up to NV, each a constant. */
AVX512 INLINE void tile_rows(float *C, int64_t ldc, const float *A, int64_t a_rs, int64_t a_ks, const float *B,
                             int64_t ldb, int64_t k, int accumulate, const int mr, int nv, __mmask16 tail) {
    switch (nv) {
    case 1: tile(C, ldc, A, a_rs, a_ks, B, ldb, k, accumulate, mr, 1, tail); break;
    case 2: tile(C, ldc, A, a_rs, a_ks, B, ldb, k, accumulate, mr, 2, tail); break;
    case 3: tile(C, ldc, A, a_rs, a_ks, B, ldb, k, accumulate, mr, 3, tail); break;
    default: tile(C, ldc, A, a_rs, a_ks, B, ldb, k, accumulate, mr, 4, tail); break;
    }
}

AVX512 static void tile_any(float *C, int64_t ldc, const float *A, int64_t a_rs, int64_t a_ks, const float *B,
                            int64_t ldb, int64_t k, int accumulate, int mr, int nv, __mmask16 tail) {
    switch (mr) {
    case 1: tile_rows(C, ldc, A, a_rs, a_ks, B, ldb, k, accumulate, 1, nv, tail); break;
    case 2: tile_rows(C, ldc, A, a_rs, a_ks, B, ldb, k, accumulate, 2, nv, tail); break;
    case 3: tile_rows(C, ldc, A, a_rs, a_ks, B, ldb, k, accumulate, 3, nv, tail); break;
    case 4: tile_rows(C, ldc, A, a_rs, a_ks, B, ldb, k, accumulate, 4, nv, tail); break;
    case 5: tile_rows(C, ldc, A, a_rs, a_ks, B, ldb, k, accumulate, 5, nv, tail); break;
    default: tile_rows(C, ldc, A, a_rs, a_ks, B, ldb, k, accumulate, 6, nv, tail); break;
    }
}

AVX512 void qk_attn_gemm_avx512(float *C, int64_t ldc, const float *A, int64_t a_rs, int64_t a_ks, const float *B,
                                int64_t ldb, int64_t m, int64_t n, int64_t k, int accumulate) {
    for (int64_t c0 = 0; c0 < n; c0 += 16 * NV) {
        const int64_t nc = n - c0 < 16 * NV ? n - c0 : 16 * NV;
        const int nv = (int)((nc + 15) / 16);
        const int rem = (int)(nc - 16 * (nv - 1));
        const __mmask16 tail = (__mmask16)(rem == 16 ? 0xFFFF : (1u << rem) - 1);
        for (int64_t r0 = 0; r0 < m; r0 += MR) {
            const int mr = (int)(m - r0 < MR ? m - r0 : MR);
            tile_any(C + r0 * ldc + c0, ldc, A + r0 * a_rs, a_rs, a_ks, B + c0, ldb, k, accumulate, mr, nv, tail);
        }
    }
}

AVX512 void qk_attn_dots_avx512(float *out, const float *x, const float *Y, int64_t ldy, int64_t n, int64_t k) {
    for (int64_t j = 0; j < n; j++) {
        const float *y = Y + j * ldy;
        __m512 acc = _mm512_setzero_ps();
        for (int64_t d = 0; d < k; d += 16) {
            const __mmask16 m = k - d >= 16 ? 0xFFFF : (__mmask16)((1u << (k - d)) - 1);
            acc = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, x + d), _mm512_maskz_loadu_ps(m, y + d), acc);
        }
        out[j] = _mm512_reduce_add_ps(acc);
    }
}
