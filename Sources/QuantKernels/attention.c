/* attention.c — causal grouped-query attention: qk_attention_forward (model_ops.h) beside
 * qk_attention_backward (model_ops_backward.h). Both run over blocks of QB query rows of one
 * head, so that every step is a small dense product with the head dim D as the contiguous
 * inner or outer dimension (attention.h), cut into tiles of QK_ATTN_TILE_ROWS rows that
 * stop at the causal limit of their last row:
 *
 *   forward   s = q·kᵀ · 1/√D        p = softmax(s) by rows       out = p·v
 *   backward  dp = dout·vᵀ           ds = p ⊙ (dp − Σ_j dp·p) / √D
 *             dq = ds·k              dk += dsᵀ·q                  dv += pᵀ·dout
 *
 * q·kᵀ and dout·vᵀ read k and v transposed into [D, S] panels; from PACK_MIN_T query rows
 * on, the panel is built once per call and shared by all heads of a KV group; below that
 * (decoding: one query per head) the scores are dot products of k's rows instead.
 * Softmax as before: max subtracted, exp (qk_exp_shifted: AVX-512 where there is one), one reciprocal.
 * A product's elements never depend on the tiling (attention.h) and each block belongs to one
 * thread, so results do not depend on the thread count.
 */
#include "attention.h"
#include "model_ops.h"
#include "model_ops_backward.h"
#include "quant_kernels.h"
#include "reductions.h"
#include <math.h>
#include <stdlib.h>
#include <string.h>

/* The OpenMP runtime calls used here (omp.h is not on the include path; see qgemm.c).
 * Static schedules only. */
int omp_get_thread_num(void);
int omp_get_max_threads(void);

enum {
    QB = 64,         /* query rows per block */
    PACK_MIN_T = 4,  /* query rows from which q·kᵀ reads a transposed panel of k */
    TR = QK_ATTN_TILE_ROWS,
};

static int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }
static int64_t round16(int64_t n) { return (n + 15) / 16 * 16; }

static void *alloc_floats(int64_t n) {
    return aligned_alloc(64, (size_t)round16(n > 0 ? n : 1) * sizeof(float));
}

/* The algorithmic reference of qk_attn_gemm_avx512 (attention.h), and the fallback. */
static void attn_gemm_ref(float *restrict C, int64_t ldc, const float *restrict A, int64_t a_rs, int64_t a_ks,
                          const float *restrict B, int64_t ldb, int64_t m, int64_t n, int64_t k, int accumulate) {
    for (int64_t r = 0; r < m; r++) {
        float *c = C + r * ldc;
        if (!accumulate)
            for (int64_t j = 0; j < n; j++) c[j] = 0;
        for (int64_t p = 0; p < k; p++) {
            const float a = A[r * a_rs + p * a_ks], *b = B + p * ldb;
            for (int64_t j = 0; j < n; j++) c[j] += a * b[j];
        }
    }
}

static void gemm(int simd, float *C, int64_t ldc, const float *A, int64_t a_rs, int64_t a_ks, const float *B,
                 int64_t ldb, int64_t m, int64_t n, int64_t k, int accumulate) {
    if (simd) qk_attn_gemm_avx512(C, ldc, A, a_rs, a_ks, B, ldb, m, n, k, accumulate);
    else attn_gemm_ref(C, ldc, A, a_rs, a_ks, B, ldb, m, n, k, accumulate);
}

/* panel[D, ldp] = x[0 ..< n, 0 ..< D]ᵀ, x's rows ldx apart; columns n ..< ldp are zero. */
static void transpose_rows(float *restrict panel, int64_t ldp, const float *restrict x, int64_t ldx, int64_t n,
                           int64_t D) {
    for (int64_t j0 = 0; j0 < n; j0 += 16)
        for (int64_t d = 0; d < D; d++)
            for (int64_t j = j0; j < min64(j0 + 16, n); j++) panel[d * ldp + j] = x[j * ldx + d];
    for (int64_t d = 0; d < D; d++)
        for (int64_t j = n; j < ldp; j++) panel[d * ldp + j] = 0;
}

/* Probabilities of the m query rows i0 ..< i0+m of one head into p[m, ld]: row r sees the
 * keys 0 ..< P + i0 + r + 1 and is zero from there to `zero_to`. qh: the head's query rows
 * (qw apart); the keys are kt [D, ldkt] (a transposed panel) or, when kt is NULL, kg's rows
 * (kw apart). With soft-capping and `t`, t[r, j] (ld apart) receives tanh(s·scale / softcap),
 * which the backward's chain rule needs. Shared by the forward and the backward's recomputation. */
static void probabilities_block(float *p, int64_t ld, int64_t zero_to, const float *qh, int64_t qw, const float *kt,
                                int64_t ldkt, const float *kg, int64_t kw, int64_t i0, int64_t m, int64_t P, int64_t D,
                                qk_attention_options o, float *t, int simd) {
    const float scale = o.scale;
    for (int64_t r0 = 0; r0 < m; r0 += TR) {
        const int64_t mr = min64(TR, m - r0), keys = P + i0 + r0 + mr;
        if (kt) {
            gemm(simd, p + r0 * ld, ld, qh + (i0 + r0) * qw, qw, 1, kt, ldkt, mr, keys, D, 0);
        } else {
            for (int64_t r = r0; r < r0 + mr; r++) {
                const float *qt = qh + (i0 + r) * qw;
                if (simd) qk_attn_dots_avx512(p + r * ld, qt, kg, kw, P + i0 + r + 1, D);
                else
                    for (int64_t j = 0; j <= P + i0 + r; j++) p[r * ld + j] = qk_dot(qt, kg + j * kw, D);
            }
        }
    }
    for (int64_t r = 0; r < m; r++) {
        float *x = p + r * ld;
        const int64_t n = P + i0 + r + 1, lo = o.window > 0 && n > o.window ? n - o.window : 0;
        for (int64_t j = 0; j < n; j++) x[j] *= scale;
        if (o.softcap > 0) {
            const float cap = o.softcap, inv = 1.0f / o.softcap;
            for (int64_t j = 0; j < n; j++) {
                const float th = tanhf(x[j] * inv);
                if (t) t[r * ld + j] = th;
                x[j] = cap * th;
            }
        }
        for (int64_t j = 0; j < lo; j++) x[j] = -INFINITY;   /* outside the sliding window */
        qk_softmax_row(x, n);
        for (int64_t j = n; j < zero_to; j++) x[j] = 0;
    }
}

/* out rows i0 ..< i0+m of head h: probabilities (into probs or the scratch rows), then p·v. */
static void forward_block(float *out, float *probs, float *scratch, const float *q, const float *kt, int64_t ldkt,
                          const float *k, const float *v, int64_t h, int64_t qb, int64_t T, int64_t P, int64_t H,
                          int64_t Hkv, int64_t D, qk_attention_options o, int simd) {
    const int64_t S = P + T, g = h / (H / Hkv), qw = H * D, kw = Hkv * D;
    const int64_t i0 = qb * QB, m = min64(QB, T - i0);
    float *p = probs ? probs + (h * T + i0) * S : scratch;
    const int64_t ld = probs ? S : ldkt, zero_to = probs ? S : P + i0 + m;
    probabilities_block(p, ld, zero_to, q + h * D, qw, kt ? kt + g * D * ldkt : NULL, ldkt, k + g * D, kw, i0, m, P,
                        D, o, NULL, simd);
    for (int64_t r0 = 0; r0 < m; r0 += TR) {
        const int64_t mr = min64(TR, m - r0);
        gemm(simd, out + (i0 + r0) * qw + h * D, qw, p + r0 * ld, ld, 1, v + g * D, kw, mr, D, P + i0 + r0 + mr, 0);
    }
}

qk_attention_options qk_attention_defaults(int64_t D) {
    const qk_attention_options o = {1.0f / sqrtf((float)D), 0, 0.0f};
    return o;
}

int qk_attention_forward(float *out, float *probs, const float *q, const float *k, const float *v,
                         int64_t T, int64_t P, int64_t H, int64_t Hkv, int64_t D, int threads) {
    return qk_attention_forward_with(out, probs, q, k, v, T, P, H, Hkv, D, qk_attention_defaults(D), threads);
}

int qk_attention_forward_with(float *out, float *probs, const float *q, const float *k, const float *v,
                              int64_t T, int64_t P, int64_t H, int64_t Hkv, int64_t D, qk_attention_options o,
                              int threads) {
    if (T <= 0 || H <= 0) return 0;
    const int64_t S = P + T, Sp = round16(S), kw = Hkv * D;
    const int simd = qk_isa_get() == QK_ISA_AVX512;
    const int packed = T >= PACK_MIN_T;
    /* Blocks paired first with last, so that every work item costs about the same. */
    const int64_t blocks = (T + QB - 1) / QB, pairs = (blocks + 1) / 2, items = H * pairs;
    int nt = threads > 0 ? threads : omp_get_max_threads();
    if (nt > items) nt = (int)items;
    float *kt = packed ? alloc_floats(Hkv * D * Sp) : NULL;
    float *scratch = probs ? NULL : alloc_floats((int64_t)nt * min64(QB, T) * Sp);
    if ((packed && !kt) || (!probs && !scratch)) {
        free(kt);
        free(scratch);
        return -1;
    }
#pragma omp parallel num_threads(nt)
    {
        if (packed) {
#pragma omp for schedule(static)
            for (int64_t g = 0; g < Hkv; g++) transpose_rows(kt + g * D * Sp, Sp, k + g * D, kw, S, D);
        }
        float *rows = probs ? NULL : scratch + (int64_t)omp_get_thread_num() * min64(QB, T) * Sp;
#pragma omp for schedule(static, 1)
        for (int64_t i = 0; i < items; i++) {
            const int64_t h = i / pairs, first = i % pairs, last = blocks - 1 - first;
            forward_block(out, probs, rows, q, kt, Sp, k, v, h, first, T, P, H, Hkv, D, o, simd);
            if (last != first) forward_block(out, probs, rows, q, kt, Sp, k, v, h, last, T, P, H, Hkv, D, o, simd);
        }
    }
    free(kt);
    free(scratch);
    return 0;
}

/* Per-thread scratch of the backward: v's panel, k's panel (for recomputed probabilities),
 * a block of probabilities and one of dp, then ds; with soft-capping a block of tanh values. */
typedef struct { float *vt, *kt, *p, *ds, *t; } backward_scratch;

/* One (sequence, KV group) pair: dk, dv of the group's T rows, dq of its rep heads, heads in
 * order and query blocks in order, so each dk and dv row is summed in a fixed order. */
static void backward_pair(float *dq, float *dk, float *dv, const float *dout, const float *q, const float *k,
                          const float *v, const float *probs, int64_t b, int64_t g, int64_t T, int64_t H, int64_t Hkv,
                          int64_t D, qk_attention_options o, backward_scratch s, int simd) {
    const int64_t rep = H / Hkv, qw = H * D, kw = Hkv * D, Tp = round16(T), base = b * T;
    const float scale = o.scale;
    const float *kg = k + base * kw + g * D, *vg = v + base * kw + g * D;
    float *dkg = dk + base * kw + g * D, *dvg = dv + base * kw + g * D;
    for (int64_t j = 0; j < T; j++) {
        memset(dkg + j * kw, 0, (size_t)D * sizeof(float));
        memset(dvg + j * kw, 0, (size_t)D * sizeof(float));
    }
    transpose_rows(s.vt, Tp, vg, kw, T, D);
    const int packed = T >= PACK_MIN_T;
    /* Soft-capping's chain rule needs tanh of every score: recompute them, as the forward did. */
    const int recompute = !probs || o.softcap > 0;
    if (recompute && packed) transpose_rows(s.kt, Tp, kg, kw, T, D);
    for (int64_t h = g * rep; h < (g + 1) * rep; h++) {
        const float *qh = q + base * qw + h * D, *doh = dout + base * qw + h * D;
        float *dqh = dq + base * qw + h * D;
        for (int64_t i0 = 0; i0 < T; i0 += QB) {
            const int64_t m = min64(QB, T - i0), i1 = i0 + m;
            /* p rows i0 ..< i1, zero past the diagonal up to i1. */
            if (!recompute) {
                const float *ph = probs + ((b * H + h) * T + i0) * T;
                for (int64_t r = 0; r < m; r++) {
                    memcpy(s.p + r * Tp, ph + r * T, (size_t)(i0 + r + 1) * sizeof(float));
                    memset(s.p + r * Tp + i0 + r + 1, 0, (size_t)(m - r - 1) * sizeof(float));
                }
            } else {
                probabilities_block(s.p, Tp, i1, qh, qw, packed ? s.kt : NULL, Tp, kg, kw, i0, m, 0, D, o, s.t, simd);
            }
            /* dp = dout·vᵀ, then ds in place. */
            for (int64_t r0 = 0; r0 < m; r0 += TR) {
                const int64_t mr = min64(TR, m - r0);
                gemm(simd, s.ds + r0 * Tp, Tp, doh + (i0 + r0) * qw, qw, 1, s.vt, Tp, mr, i0 + r0 + mr, D, 0);
            }
            for (int64_t r = 0; r < m; r++) {
                float *ds = s.ds + r * Tp;
                const float *p = s.p + r * Tp;
                const int64_t n = i0 + r + 1;
                const float c = qk_dot(ds, p, n);
                if (o.softcap > 0) {
                    const float *th = s.t + r * Tp;
                    for (int64_t j = 0; j < n; j++) ds[j] = p[j] * (ds[j] - c) * scale * (1.0f - th[j] * th[j]);
                } else {
                    for (int64_t j = 0; j < n; j++) ds[j] = p[j] * (ds[j] - c) * scale;
                }
                for (int64_t j = n; j < i1; j++) ds[j] = 0;
            }
            /* dq = ds·k, row tiles stopping at their causal limit. */
            for (int64_t r0 = 0; r0 < m; r0 += TR) {
                const int64_t mr = min64(TR, m - r0);
                gemm(simd, dqh + (i0 + r0) * qw, qw, s.ds + r0 * Tp, Tp, 1, kg, kw, mr, D, i0 + r0 + mr, 0);
            }
            /* dk += dsᵀ·q and dv += pᵀ·dout over the block's rows i ≥ the tile's first key. */
            for (int64_t j0 = 0; j0 < i1; j0 += TR) {
                const int64_t jm = min64(TR, i1 - j0), from = j0 > i0 ? j0 : i0;
                const int64_t at = (from - i0) * Tp + j0;
                gemm(simd, dkg + j0 * kw, kw, s.ds + at, 1, Tp, qh + from * qw, qw, jm, D, i1 - from, 1);
                gemm(simd, dvg + j0 * kw, kw, s.p + at, 1, Tp, doh + from * qw, qw, jm, D, i1 - from, 1);
            }
        }
    }
}

int qk_attention_backward(float *dq, float *dk, float *dv, const float *dout, const float *q, const float *k,
                          const float *v, const float *probs, int64_t B, int64_t T, int64_t H, int64_t Hkv,
                          int64_t D, int threads) {
    return qk_attention_backward_with(dq, dk, dv, dout, q, k, v, probs, B, T, H, Hkv, D, qk_attention_defaults(D),
                                      threads);
}

int qk_attention_backward_with(float *dq, float *dk, float *dv, const float *dout, const float *q, const float *k,
                               const float *v, const float *probs, int64_t B, int64_t T, int64_t H, int64_t Hkv,
                               int64_t D, qk_attention_options o, int threads) {
    if (B <= 0 || T <= 0 || H <= 0 || Hkv <= 0) return 0;
    const int64_t pairs = B * Hkv, Tp = round16(T), per_thread = 2 * D * Tp + (o.softcap > 0 ? 3 : 2) * min64(QB, T) * Tp;
    const int simd = qk_isa_get() == QK_ISA_AVX512;
    int nt = threads > 0 ? threads : omp_get_max_threads();
    if (nt > pairs) nt = (int)pairs;
    float *scratch = alloc_floats((int64_t)nt * per_thread);
    if (!scratch) return -1;
    /* Pairs dealt round-robin; all pairs cost the same. */
#pragma omp parallel for schedule(static, 1) num_threads(nt)
    for (int64_t i = 0; i < pairs; i++) {
        float *mine = scratch + (int64_t)omp_get_thread_num() * per_thread;
        const backward_scratch s = {mine, mine + D * Tp, mine + 2 * D * Tp, mine + 2 * D * Tp + min64(QB, T) * Tp,
                                    o.softcap > 0 ? mine + 2 * D * Tp + 2 * min64(QB, T) * Tp : NULL};
        backward_pair(dq, dk, dv, dout, q, k, v, probs, i / Hkv, i % Hkv, T, H, Hkv, D, o, s, simd);
    }
    free(scratch);
    return 0;
}
