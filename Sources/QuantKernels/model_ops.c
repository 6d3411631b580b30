/* model_ops.c — the Llama decoder's element-wise kernels (model_ops.h; the attention is in
 * attention.c). Plain loops: reductions are marked reassociable so that clang
 * vectorizes them (the target is built with -ffp-contract=off, so a·b + c stays two
 * roundings, as in PyTorch's CPU kernels). exp is libm's expf.
 */
#include "model_ops.h"
#include "reductions.h"
#include <math.h>

static float sum_squares(const float *x, int64_t n) {
#pragma clang fp reassociate(on)
    float s = 0;
    for (int64_t i = 0; i < n; i++) s += x[i] * x[i];
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

void qk_softmax_forward(float *x, int64_t rows, int64_t N) {
    for (int64_t r = 0; r < rows; r++) qk_softmax_row(x + r * N, N);
}

int qk_swiglu_forward_simd(float *h, const float *gate, const float *up, int64_t n); /* activations_avx512.c */

void qk_swiglu_forward(float *h, const float *gate, const float *up, int64_t n) {
    if (qk_swiglu_forward_simd(h, gate, up, n) == 0) return;
    for (int64_t i = 0; i < n; i++) h[i] = gate[i] / (1.0f + expf(-gate[i])) * up[i];
}

/* gelu_pytorch_tanh(g) = ½g(1 + tanh(√(2/π)(g + 0.044715g³))), as torch computes it in fp32. */
static inline float gelu_tanh(float g) {
    const float k = 0.7978845608028654f, c = 0.044715f;
    return 0.5f * g * (1.0f + tanhf(k * (g + c * g * g * g)));
}

void qk_geglu_forward(float *h, const float *gate, const float *up, int64_t n) {
    for (int64_t i = 0; i < n; i++) h[i] = gelu_tanh(gate[i]) * up[i];
}

void qk_add_bias(float *y, const float *b, int64_t T, int64_t N) {
    for (int64_t t = 0; t < T; t++)
        for (int64_t i = 0; i < N; i++) y[t * N + i] += b[i];
}
