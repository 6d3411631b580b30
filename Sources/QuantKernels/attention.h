/* attention.h — the small dense products of the causal attention (attention.c), one twin
 * per ISA. Internal, not part of the public API.
 *
 *   qk_attn_gemm_*:  C[m, n] = A·B, or C += A·B when `accumulate`, A m × k, B [k, n]
 * A's element (r, p) is A[r·a_rs + p·a_ks], so A may be read transposed; B and C are
 * row-major with row strides ldb, ldc. Each element of C is one multiply-add chain over p in
 * order (fused on AVX-512), whatever m and n: a product cut into smaller calls gives the
 * same bits.
 *   qk_attn_dots_*:  out[j] = x[k] · Y[j, k] for j < n, Y's rows ldy apart.
 */
#ifndef QK_ATTENTION_H
#define QK_ATTENTION_H

#include <stdint.h>

/* Rows of C per register tile of qk_attn_gemm_avx512; callers cut causal blocks to it. */
enum { QK_ATTN_TILE_ROWS = 6 };

void qk_attn_gemm_avx512(float *C, int64_t ldc, const float *A, int64_t a_rs, int64_t a_ks, const float *B,
                         int64_t ldb, int64_t m, int64_t n, int64_t k, int accumulate);
void qk_attn_dots_avx512(float *out, const float *x, const float *Y, int64_t ldy, int64_t n, int64_t k);

#endif
