/* model_ops_backward.c — the backward of the Llama decoder's kernels (model_ops.c) and the
 * LM head's softmax cross-entropy (model_ops_backward.h). Same conventions as the forwards:
 * plain loops, reductions marked reassociable so that clang vectorizes them, libm's expf,
 * static OpenMP schedules. Every result is deterministic and, where OpenMP is used, does not
 * depend on the thread count: each output element is summed by one thread in a fixed order.
 */
#include "model_ops_backward.h"
#include <math.h>
#include <stdlib.h>

/* The OpenMP runtime calls used here (omp.h is not on the include path; see qgemm.c). */
int omp_get_thread_num(void);
int omp_get_max_threads(void);

static float dot(const float *a, const float *b, int64_t n) {
#pragma clang fp reassociate(on)
    float s = 0;
    for (int64_t i = 0; i < n; i++) s += a[i] * b[i];
    return s;
}

static float dot3(const float *a, const float *b, const float *c, int64_t n) {
#pragma clang fp reassociate(on)
    float s = 0;
    for (int64_t i = 0; i < n; i++) s += a[i] * b[i] * c[i];
    return s;
}

static float sum(const float *x, int64_t n) {
#pragma clang fp reassociate(on)
    float s = 0;
    for (int64_t i = 0; i < n; i++) s += x[i];
    return s;
}

static float max_of(const float *x, int64_t n) {
    float m = -INFINITY;
    for (int64_t i = 0; i < n; i++) m = x[i] > m ? x[i] : m;
    return m;
}

/* y[n] += a · x[n] */
static void axpy(float *restrict y, float a, const float *restrict x, int64_t n) {
    for (int64_t i = 0; i < n; i++) y[i] += a * x[i];
}

/* The forward's softmax_row (model_ops.c), operation for operation, so that recomputed
 * attention probabilities equal the kept ones. */
static void softmax_row(float *x, int64_t n) {
    const float m = max_of(x, n);
    for (int64_t i = 0; i < n; i++) x[i] = expf(x[i] - m);
    const float r = 1.0f / sum(x, n);
    for (int64_t i = 0; i < n; i++) x[i] *= r;
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

void qk_swiglu_backward(float *dgate, float *dup, const float *dh, const float *gate, const float *up, int64_t n) {
    for (int64_t i = 0; i < n; i++) {
        const float g = gate[i], e = 1.0f + expf(-g);
        const float sig = 1.0f / e;
        /* silu as the forward rounds it; σ → 0 or 1 for large |g| keeps both finite. */
        dup[i] = dh[i] * (g / e);
        dgate[i] = dh[i] * up[i] * (sig * (1.0f + g * (1.0f - sig)));
    }
}

/* One (sequence, KV group) pair: dk, dv of the group's T rows, dq of its rep heads.
 * Head by head, query row by query row t, with p the causal row of t+1 probabilities:
 *   dv[j] += p[j]·dout[t]                      dp[j] = dout[t]·v[j]
 *   ds[j] = p[j]·(dp[j] − Σ_i dp[i]·p[i]) / √D
 *   dq[t] = Σ_j ds[j]·k[j]                     dk[j] += ds[j]·q[t]
 * Every inner loop runs over D contiguous floats. `row` and `ds` are T floats of scratch. */
static void attention_backward_pair(float *dq, float *dk, float *dv, const float *dout, const float *q,
                                    const float *k, const float *v, const float *probs, int64_t b, int64_t g,
                                    int64_t T, int64_t H, int64_t Hkv, int64_t D, float *row, float *ds) {
    const int64_t rep = H / Hkv, qw = H * D, kw = Hkv * D;
    const float scale = 1.0f / sqrtf((float)D);
    const int64_t base = b * T; /* first row of the sequence */
    for (int64_t j = 0; j < T; j++)
        for (int64_t d = 0; d < D; d++) {
            dk[(base + j) * kw + g * D + d] = 0;
            dv[(base + j) * kw + g * D + d] = 0;
        }
    const float *kg = k + base * kw + g * D, *vg = v + base * kw + g * D;
    float *dkg = dk + base * kw + g * D, *dvg = dv + base * kw + g * D;
    for (int64_t h = g * rep; h < (g + 1) * rep; h++) {
        for (int64_t t = 0; t < T; t++) {
            const int64_t n = t + 1;
            const float *qt = q + (base + t) * qw + h * D, *dout_t = dout + (base + t) * qw + h * D;
            const float *p;
            if (probs) {
                p = probs + ((b * H + h) * T + t) * T;
            } else {
                for (int64_t j = 0; j < n; j++) row[j] = dot(qt, kg + j * kw, D) * scale;
                softmax_row(row, n);
                p = row;
            }
            for (int64_t j = 0; j < n; j++) {
                axpy(dvg + j * kw, p[j], dout_t, D);
                ds[j] = dot(dout_t, vg + j * kw, D);
            }
            const float c = dot(ds, p, n);
            for (int64_t j = 0; j < n; j++) ds[j] = p[j] * (ds[j] - c) * scale;
            float *dqt = dq + (base + t) * qw + h * D;
            for (int64_t d = 0; d < D; d++) dqt[d] = 0;
            for (int64_t j = 0; j < n; j++) {
                axpy(dqt, ds[j], kg + j * kw, D);
                axpy(dkg + j * kw, ds[j], qt, D);
            }
        }
    }
}

int qk_attention_backward(float *dq, float *dk, float *dv, const float *dout, const float *q, const float *k,
                          const float *v, const float *probs, int64_t B, int64_t T, int64_t H, int64_t Hkv,
                          int64_t D, int threads) {
    if (B <= 0 || T <= 0 || H <= 0 || Hkv <= 0) return 0;
    const int64_t pairs = B * Hkv;
    int nt = threads > 0 ? threads : omp_get_max_threads();
    if (nt > pairs) nt = (int)pairs;
    /* Per thread: a recomputed probability row and the ds row. */
    float *scratch = malloc((size_t)nt * 2 * (size_t)T * sizeof(float));
    if (!scratch) return -1;
    /* Pairs dealt round-robin; all pairs cost the same. */
#pragma omp parallel for schedule(static, 1) num_threads(nt)
    for (int64_t i = 0; i < pairs; i++) {
        float *row = scratch + (int64_t)omp_get_thread_num() * 2 * T;
        attention_backward_pair(dq, dk, dv, dout, q, k, v, probs, i / Hkv, i % Hkv, T, H, Hkv, D, row, row + T);
    }
    free(scratch);
    return 0;
}

/* One row of cross-entropy, in place: logits → dlogits; returns the row's loss, 0 for an
 * ignored row (label −100) and NAN for a label outside 0 ..< V (both rows are zeroed). */
static double cross_entropy_row(float *x, int32_t label, int64_t V, float grad_scale) {
    if (label < 0 || label >= V) {
        for (int64_t i = 0; i < V; i++) x[i] = 0;
        return label == -100 ? 0 : NAN;
    }
    const float m = max_of(x, V), xl = x[label];
    for (int64_t i = 0; i < V; i++) x[i] = expf(x[i] - m);
    const float s = sum(x, V), f = grad_scale / s;
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
