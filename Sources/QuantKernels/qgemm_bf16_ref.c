/* qgemm_bf16_ref.c — the bf16 GEMMs as plain loops: the reference the AVX512_BF16 kernels
 * (qgemm_bf16_avx512.c) are tested against, and a statement of what they compute. The inputs
 * are rounded exactly as the kernels round them; the sums are fp64, so the kernels differ
 * from these only by their fp32 accumulation.
 *
 *   forward   Y[T, out] = bf16(X)[T, in] · bf16(W)ᵀ + beta·Y
 *   backward dX[T, in] = bf16(dY)[T, out] · bf16(W) + beta·dX
 */
#include "blocks.h"
#include <stdlib.h>

/* fp32 → bf16 as vcvtneps2bf16 does it: nearest even; a NaN keeps its sign and top payload
 * bits and becomes quiet; a subnormal becomes a zero of its sign (checked on Zen 4). */
static float round_bf16(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7FFFFFFF) > 0x7F800000) u = (u | 0x00400000) & 0xFFFF0000;
    else if ((u & 0x7F800000) == 0) u &= 0x80000000;
    else u = (u + 0x7FFF + ((u >> 16) & 1)) & 0xFFFF0000;
    memcpy(&f, &u, 4);
    return f;
}

static double *rounded(const float *x, int64_t n) {
    double *r = malloc((size_t)n * sizeof(double));
    if (r)
        for (int64_t i = 0; i < n; i++) r[i] = round_bf16(x[i]);
    return r;
}

/* W rounded to bf16, [rows, cols] as fp64. */
static double *rounded_weights(const qk_matrix *w) {
    float *f = malloc((size_t)(w->rows * w->cols) * sizeof(float));
    double *r = NULL;
    if (f) {
        qk_dequantize_range(w, 0, w->rows * w->cols, f);
        r = rounded(f, w->rows * w->cols);
    }
    free(f);
    return r;
}

static float with_beta(double s, float beta, float old) { return beta == 0.0f ? (float)s : (float)(s + (double)beta * old); }

int qk_gemm_forward_bf16_ref(const qk_matrix *w, const float *x, float *y, int64_t T, float beta) {
    const int64_t out = w->rows, in = w->cols;
    double *wr = rounded_weights(w), *xr = rounded(x, T * in);
    const int ok = wr && xr;
    for (int64_t t = 0; t < T && ok; t++)
        for (int64_t o = 0; o < out; o++) {
            double s = 0;
            for (int64_t i = 0; i < in; i++) s += xr[t * in + i] * wr[o * in + i];
            y[t * out + o] = with_beta(s, beta, y[t * out + o]);
        }
    free(wr);
    free(xr);
    return ok ? 0 : QK_GEMM_NO_MEMORY;
}

int qk_gemm_backward_bf16_ref(const qk_matrix *w, const float *dy, float *dx, int64_t T, float beta) {
    const int64_t out = w->rows, in = w->cols;
    double *wr = rounded_weights(w), *dyr = rounded(dy, T * out);
    const int ok = wr && dyr;
    for (int64_t t = 0; t < T && ok; t++)
        for (int64_t i = 0; i < in; i++) {
            double s = 0;
            for (int64_t o = 0; o < out; o++) s += dyr[t * out + o] * wr[o * in + i];
            dx[t * in + i] = with_beta(s, beta, dx[t * in + i]);
        }
    free(wr);
    free(dyr);
    return ok ? 0 : QK_GEMM_NO_MEMORY;
}
