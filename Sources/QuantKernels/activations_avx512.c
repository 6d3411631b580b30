/* activations_avx512.c — SwiGLU forward and backward, 16 elements per AVX-512 vector on the
 * OpenMP threads. The scalar loops call libm's expf one element at a time on one thread:
 * about 8% of a SmolLM2 training step (1024 tokens × 1536 × 30 blocks, twice). exp here is
 * Cephes' expf (range reduction by n·ln2 in two parts, a degree-6 polynomial, 2ⁿ by scalef):
 * within 2 ulp of the exact value, where libm's is within 1; NaN stays NaN, large arguments
 * go to 0 and +inf as expf does. The operations around it are the scalar loops', in order. */
#include "model_ops.h"
#include "model_ops_backward.h"
#include "quant_kernels.h"
#include "reductions.h"
#include <immintrin.h>
#include <math.h>

int omp_get_max_threads(void);

#define AVX512 __attribute__((target("avx512f")))

enum { CHUNK = 8192 }; /* elements per OpenMP work item, a multiple of 16 */

AVX512 static inline __m512 exp16(__m512 x) {
    const __m512 hi = _mm512_set1_ps(89.0f), lo = _mm512_set1_ps(-104.0f); /* past them: +inf, 0 */
    /* clamp (NaN passes: min/max return the second operand when the first is NaN) */
    __m512 v = _mm512_min_ps(x, hi);
    v = _mm512_max_ps(v, lo);
    v = _mm512_mask_blend_ps(_mm512_cmp_ps_mask(x, x, _CMP_UNORD_Q), v, x);
    const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(v, _mm512_set1_ps(1.44269504088896341f)),
                                          _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), v);
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
    __m512 p = _mm512_set1_ps(1.9875691500E-4f);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507E-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073E-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894E-2f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459E-1f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201E-1f));
    p = _mm512_fmadd_ps(p, _mm512_mul_ps(r, r), _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
    return _mm512_scalef_ps(p, n); /* p·2ⁿ, overflowing to +inf and underflowing to 0 */
}

AVX512 static void swiglu_forward_range(float *h, const float *gate, const float *up, int64_t i0, int64_t i1) {
    const __m512 one = _mm512_set1_ps(1.0f), zero = _mm512_setzero_ps();
    int64_t i = i0;
    for (; i < i1; i += 16) {
        const __mmask16 m = i1 - i >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (i1 - i)) - 1);
        const __m512 g = _mm512_maskz_loadu_ps(m, gate + i), u = _mm512_maskz_loadu_ps(m, up + i);
        const __m512 e = exp16(_mm512_sub_ps(zero, g));
        _mm512_mask_storeu_ps(h + i, m, _mm512_mul_ps(_mm512_div_ps(g, _mm512_add_ps(one, e)), u));
    }
}

AVX512 static void swiglu_backward_range(float *dgate, float *dup, const float *dh, const float *gate, const float *up, int64_t i0,
                                         int64_t i1) {
    const __m512 one = _mm512_set1_ps(1.0f), zero = _mm512_setzero_ps();
    for (int64_t i = i0; i < i1; i += 16) {
        const __mmask16 m = i1 - i >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (i1 - i)) - 1);
        const __m512 g = _mm512_maskz_loadu_ps(m, gate + i), u = _mm512_maskz_loadu_ps(m, up + i), d = _mm512_maskz_loadu_ps(m, dh + i);
        const __m512 e = _mm512_add_ps(one, exp16(_mm512_sub_ps(zero, g)));
        const __m512 sig = _mm512_div_ps(one, e);
        _mm512_mask_storeu_ps(dup + i, m, _mm512_mul_ps(d, _mm512_div_ps(g, e)));
        const __m512 ds = _mm512_mul_ps(sig, _mm512_add_ps(one, _mm512_mul_ps(g, _mm512_sub_ps(one, sig))));
        _mm512_mask_storeu_ps(dgate + i, m, _mm512_mul_ps(_mm512_mul_ps(d, u), ds));
    }
}

/* The softmax's exp (attention rows, the LM head's cross-entropy rows): one row on the
 * calling thread, its sum kept in 16 lanes and added in a fixed order at the end. */
AVX512 static float exp_shifted_avx512(float *x, int64_t n, float m) {
    const __m512 vm = _mm512_set1_ps(m);
    __m512 sum = _mm512_setzero_ps();
    for (int64_t i = 0; i < n; i += 16) {
        const __mmask16 k = n - i >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (n - i)) - 1);
        const __m512 e = exp16(_mm512_sub_ps(_mm512_maskz_loadu_ps(k, x + i), vm));
        _mm512_mask_storeu_ps(x + i, k, e);
        sum = _mm512_add_ps(sum, _mm512_maskz_mov_ps(k, e));
    }
    return _mm512_reduce_add_ps(sum);
}

float qk_exp_shifted(float *x, int64_t n, float m) {
    if (qk_isa_get() == QK_ISA_AVX512) return exp_shifted_avx512(x, n, m);
    for (int64_t i = 0; i < n; i++) x[i] = expf(x[i] - m);
    return qk_sum(x, n);
}

static int threads_for(int64_t n) {
    const int64_t chunks = (n + CHUNK - 1) / CHUNK;
    const int nt = omp_get_max_threads();
    return chunks < nt ? (int)chunks : nt;
}

int qk_swiglu_forward_simd(float *h, const float *gate, const float *up, int64_t n) {
    if (qk_isa_get() != QK_ISA_AVX512) return -1;
    const int64_t chunks = (n + CHUNK - 1) / CHUNK;
#pragma omp parallel for num_threads(threads_for(n)) schedule(static)
    for (int64_t c = 0; c < chunks; c++) swiglu_forward_range(h, gate, up, c * CHUNK, c * CHUNK + CHUNK < n ? c * CHUNK + CHUNK : n);
    return 0;
}

int qk_swiglu_backward_simd(float *dgate, float *dup, const float *dh, const float *gate, const float *up, int64_t n) {
    if (qk_isa_get() != QK_ISA_AVX512) return -1;
    const int64_t chunks = (n + CHUNK - 1) / CHUNK;
#pragma omp parallel for num_threads(threads_for(n)) schedule(static)
    for (int64_t c = 0; c < chunks; c++)
        swiglu_backward_range(dgate, dup, dh, gate, up, c * CHUNK, c * CHUNK + CHUNK < n ? c * CHUNK + CHUNK : n);
    return 0;
}
