/* model_ops.c — the Llama decoder's element-wise kernels and its causal grouped-query
 * attention (model_ops.h). Plain loops: reductions are marked reassociable so that clang
 * vectorizes them (the target is built with -ffp-contract=off, so a·b + c stays two
 * roundings, as in PyTorch's CPU kernels). exp is libm's expf.
 */
#include "model_ops.h"
#include <math.h>
#include <stdlib.h>

/* The OpenMP runtime calls used here (omp.h is not on the include path; see qgemm.c).
 * Static schedules only. */
int omp_get_thread_num(void);
int omp_get_max_threads(void);

static float sum_squares(const float *x, int64_t n) {
#pragma clang fp reassociate(on)
    float s = 0;
    for (int64_t i = 0; i < n; i++) s += x[i] * x[i];
    return s;
}

static float dot(const float *a, const float *b, int64_t n) {
#pragma clang fp reassociate(on)
    float s = 0;
    for (int64_t i = 0; i < n; i++) s += a[i] * b[i];
    return s;
}

static float sum(const float *x, int64_t n) {
#pragma clang fp reassociate(on)
    float s = 0;
    for (int64_t i = 0; i < n; i++) s += x[i];
    return s;
}

void qk_rmsnorm_forward(float *y, float *rstd, const float *x, const float *w, int64_t T, int64_t C, float eps) {
    for (int64_t t = 0; t < T; t++) {
        const float *xt = x + t * C;
        float *yt = y + t * C;
        const float r = 1.0f / sqrtf(sum_squares(xt, C) / (float)C + eps);
        rstd[t] = r;
        for (int64_t i = 0; i < C; i++) yt[i] = w[i] * (xt[i] * r);
    }
}

void qk_rope_tables(float *cos_t, float *sin_t, const float *inv_freq, int64_t half, int64_t P, int64_t T) {
    for (int64_t t = 0; t < T; t++) {
        const float pos = (float)(P + t);
        for (int64_t i = 0; i < half; i++) {
            const float angle = pos * inv_freq[i];
            cos_t[t * half + i] = cosf(angle);
            sin_t[t * half + i] = sinf(angle);
        }
    }
}

void qk_rope_forward(float *x, const float *cos_t, const float *sin_t, int64_t T, int64_t heads, int64_t D) {
    const int64_t half = D / 2;
    for (int64_t t = 0; t < T; t++) {
        const float *c = cos_t + t * half, *s = sin_t + t * half;
        for (int64_t h = 0; h < heads; h++) {
            float *x1 = x + (t * heads + h) * D, *x2 = x1 + half;
            for (int64_t i = 0; i < half; i++) {
                const float a = x1[i], b = x2[i];
                x1[i] = a * c[i] - b * s[i];
                x2[i] = b * c[i] + a * s[i];
            }
        }
    }
}

static void softmax_row(float *x, int64_t n) {
    float m = -INFINITY;
    for (int64_t i = 0; i < n; i++) m = x[i] > m ? x[i] : m;
    for (int64_t i = 0; i < n; i++) x[i] = expf(x[i] - m);
    const float r = 1.0f / sum(x, n);
    for (int64_t i = 0; i < n; i++) x[i] *= r;
}

void qk_softmax_forward(float *x, int64_t rows, int64_t N) {
    for (int64_t r = 0; r < rows; r++) softmax_row(x + r * N, N);
}

void qk_swiglu_forward(float *h, const float *gate, const float *up, int64_t n) {
    for (int64_t i = 0; i < n; i++) h[i] = gate[i] / (1.0f + expf(-gate[i])) * up[i];
}

void qk_add_bias(float *y, const float *b, int64_t T, int64_t N) {
    for (int64_t t = 0; t < T; t++)
        for (int64_t i = 0; i < N; i++) y[t * N + i] += b[i];
}

int qk_attention_forward(float *out, float *probs, const float *q, const float *k, const float *v,
                         int64_t T, int64_t P, int64_t H, int64_t Hkv, int64_t D, int threads) {
    if (T <= 0 || H <= 0) return 0;
    const int64_t S = P + T, rep = H / Hkv, qw = H * D, kw = Hkv * D;
    const float scale = 1.0f / sqrtf((float)D);
    int nt = threads > 0 ? threads : omp_get_max_threads();
    if (nt > H * T) nt = (int)(H * T);
    /* Score rows of the threads when the caller keeps no probabilities. */
    float *scratch = probs ? NULL : malloc((size_t)nt * (size_t)S * sizeof(float));
    if (!probs && !scratch) return -1;
    /* Pairs (h, t) dealt round-robin: the causal rows grow with t, and every thread gets
     * rows of every length. */
#pragma omp parallel for schedule(static, 1) num_threads(nt)
    for (int64_t i = 0; i < H * T; i++) {
        const int64_t h = i / T, t = i % T, g = h / rep, n = P + t + 1;
        const float *qh = q + t * qw + h * D;
        float *p = probs ? probs + (h * T + t) * S : scratch + (int64_t)omp_get_thread_num() * S;
        for (int64_t j = 0; j < n; j++) p[j] = dot(qh, k + j * kw + g * D, D) * scale;
        softmax_row(p, n);
        float *o = out + t * qw + h * D;
        for (int64_t d = 0; d < D; d++) o[d] = 0;
        for (int64_t j = 0; j < n; j++) {
            const float pj = p[j], *vj = v + j * kw + g * D;
            for (int64_t d = 0; d < D; d++) o[d] += pj * vj[d];
        }
        if (probs)
            for (int64_t j = n; j < S; j++) p[j] = 0;
    }
    free(scratch);
    return 0;
}
