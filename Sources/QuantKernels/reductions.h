/* reductions.h — the row reductions and the row softmax the model kernels share (model_ops.c,
 * model_ops_backward.c, attention.c, qgemm.c). Plain loops marked reassociable so that clang
 * vectorizes them; the target is built with -ffp-contract=off, so a·b + c stays two roundings.
 * Static inline: each kernel file gets the same code it had as its own copy.
 */
#ifndef QK_REDUCTIONS_H
#define QK_REDUCTIONS_H

#include <math.h>
#include <stdint.h>

static inline float qk_dot(const float *a, const float *b, int64_t n) {
#pragma clang fp reassociate(on)
    float s = 0;
    for (int64_t i = 0; i < n; i++) s += a[i] * b[i];
    return s;
}

static inline float qk_sum(const float *x, int64_t n) {
#pragma clang fp reassociate(on)
    float s = 0;
    for (int64_t i = 0; i < n; i++) s += x[i];
    return s;
}

static inline float qk_max(const float *x, int64_t n) {
    float m = -INFINITY;
    for (int64_t i = 0; i < n; i++) m = x[i] > m ? x[i] : m;
    return m;
}

/* x[i] ← exp(x[i] − m) for i < n, returning their sum: 16 elements at a time with
 * activations_avx512.c's exp where qk_isa_get() says AVX-512, else libm's expf and qk_sum. */
float qk_exp_shifted(float *x, int64_t n, float m);

/* x ← softmax(x) in place: max subtracted, exp (qk_exp_shifted), one reciprocal of the sum. */
static inline void qk_softmax_row(float *x, int64_t n) {
    const float m = qk_max(x, n);
    const float r = 1.0f / qk_exp_shifted(x, n, m);
    for (int64_t i = 0; i < n; i++) x[i] *= r;
}

#endif
