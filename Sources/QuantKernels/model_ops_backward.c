/* model_ops_backward.c — the backward of the Llama decoder's element-wise kernels
 * (model_ops.c; the attention's is in attention.c) and the LM head's softmax cross-entropy
 * (model_ops_backward.h). Same conventions as the forwards:
 * plain loops, reductions marked reassociable so that clang vectorizes them, libm's expf
 * (the cross-entropy's softmax: qk_exp_shifted, AVX-512 where there is one),
 * static OpenMP schedules. Every result is deterministic and, where OpenMP is used, does not
 * depend on the thread count: each output element is summed by one thread in a fixed order.
 */
#include "model_ops_backward.h"
#include "reductions.h"
#include <math.h>
#include <stdlib.h>

/* The OpenMP runtime calls used here (omp.h is not on the include path; see qgemm.c). */
int omp_get_max_threads(void);

static float dot3(const float *a, const float *b, const float *c, int64_t n) {
#pragma clang fp reassociate(on)
    float s = 0;
    for (int64_t i = 0; i < n; i++) s += a[i] * b[i] * c[i];
    return s;
}

void qk_rmsnorm_backward(float *dx, float *dw, const float *dy, const float *x, const float *w, const float *rstd,
                         int64_t T, int64_t C, int accumulate) {
    for (int64_t t = 0; t < T; t++) {
        const float *xt = x + t * C, *dyt = dy + t * C;
        float *dxt = dx + t * C;
        const float r = rstd[t];
        /* mean(w ⊙ dy ⊙ x̂) = r · mean(w ⊙ dy ⊙ x) */
        const float a = dot3(w, dyt, xt, C) * r / (float)C;
        if (accumulate)
            for (int64_t i = 0; i < C; i++) dxt[i] += r * (w[i] * dyt[i] - xt[i] * r * a);
        else
            for (int64_t i = 0; i < C; i++) dxt[i] = r * (w[i] * dyt[i] - xt[i] * r * a);
        /* Rows in order: dw is the same for any caller. */
        if (dw)
            for (int64_t i = 0; i < C; i++) dw[i] += dyt[i] * (xt[i] * r);
    }
}

void qk_rope_backward(float *dx, const float *cos_t, const float *sin_t, int64_t T, int64_t heads, int64_t D) {
    const int64_t half = D / 2;
    for (int64_t t = 0; t < T; t++) {
        const float *c = cos_t + t * half, *s = sin_t + t * half;
        for (int64_t h = 0; h < heads; h++) {
            float *x1 = dx + (t * heads + h) * D, *x2 = x1 + half;
            /* The forward is [c −s; s c] on (x1, x2); its transpose is [c s; −s c]. */
            for (int64_t i = 0; i < half; i++) {
                const float a = x1[i], b = x2[i];
                x1[i] = a * c[i] + b * s[i];
                x2[i] = b * c[i] - a * s[i];
            }
        }
    }
}

int qk_swiglu_backward_simd(float *dgate, float *dup, const float *dh, const float *gate, const float *up, int64_t n);

void qk_swiglu_backward(float *dgate, float *dup, const float *dh, const float *gate, const float *up, int64_t n) {
    if (qk_swiglu_backward_simd(dgate, dup, dh, gate, up, n) == 0) return;
    for (int64_t i = 0; i < n; i++) {
        const float g = gate[i], e = 1.0f + expf(-g);
        const float sig = 1.0f / e;
        /* silu as the forward rounds it; σ → 0 or 1 for large |g| keeps both finite. */
        dup[i] = dh[i] * (g / e);
        dgate[i] = dh[i] * up[i] * (sig * (1.0f + g * (1.0f - sig)));
    }
}

void qk_geglu_backward(float *dgate, float *dup, const float *dh, const float *gate, const float *up, int64_t n) {
    const float k = 0.7978845608028654f, c = 0.044715f;
    for (int64_t i = 0; i < n; i++) {
        const float g = gate[i], t = tanhf(k * (g + c * g * g * g));
        dup[i] = dh[i] * (0.5f * g * (1.0f + t));
        dgate[i] = dh[i] * up[i] * (0.5f * (1.0f + t) + 0.5f * g * (1.0f - t * t) * k * (1.0f + 3.0f * c * g * g));
    }
}

/* One row of cross-entropy, in place: logits → dlogits; returns the row's loss, 0 for an
 * ignored row (label −100) and NAN for a label outside 0 ..< V (both rows are zeroed). */
static double cross_entropy_row(float *x, int32_t label, int64_t V, float grad_scale) {
    if (label < 0 || label >= V) {
        for (int64_t i = 0; i < V; i++) x[i] = 0;
        return label == -100 ? 0 : NAN;
    }
    const float m = qk_max(x, V), xl = x[label];
    const float s = qk_exp_shifted(x, V, m), f = grad_scale / s;
    for (int64_t i = 0; i < V; i++) x[i] *= f;
    x[label] -= grad_scale;
    return log((double)s) + (double)m - (double)xl;
}

double qk_cross_entropy(float *logits, const int32_t *labels, int64_t rows, int64_t V, float grad_scale,
                        int64_t *counted, int threads) {
    int64_t n = 0;
    for (int64_t r = 0; r < rows; r++) n += labels[r] != -100;
    *counted = n;
    double total = 0;
    /* Losses per row, summed in row order afterwards, so that the total does not depend on
     * the thread count. Without memory for them the rows run on this thread, same order. */
    double *loss = rows > 0 ? malloc((size_t)rows * sizeof(double)) : NULL;
    if (!loss) {
        for (int64_t r = 0; r < rows; r++) total += cross_entropy_row(logits + r * V, labels[r], V, grad_scale);
        return total;
    }
    int nt = threads > 0 ? threads : omp_get_max_threads();
    if (nt > rows) nt = (int)rows;
#pragma omp parallel for schedule(static) num_threads(nt)
    for (int64_t r = 0; r < rows; r++) loss[r] = cross_entropy_row(logits + r * V, labels[r], V, grad_scale);
    for (int64_t r = 0; r < rows; r++) total += loss[r];
    free(loss);
    return total;
}

double qk_cross_entropy_rows(float *logits, const int32_t *labels, int64_t rows, int64_t V, float grad_scale,
                             double *row_loss, int threads) {
    int nt = threads > 0 ? threads : omp_get_max_threads();
    if (nt > rows) nt = rows > 0 ? (int)rows : 1;
#pragma omp parallel for schedule(static) num_threads(nt)
    for (int64_t r = 0; r < rows; r++) row_loss[r] = cross_entropy_row(logits + r * V, labels[r], V, grad_scale);
    double total = 0;
    for (int64_t r = 0; r < rows; r++) total += row_loss[r];
    return total;
}
