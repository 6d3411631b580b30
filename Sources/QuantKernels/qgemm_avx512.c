/* qgemm_avx512.c — the frozen-path GEMMs with a micro-kernel of our own (GotoBLAS/BLIS
 * style), for AVX-512 CPUs: W is dequantized straight into the packed panels the kernel
 * reads, so dequantization replaces sgemm's packing pass, and X (or dY) is read in place, so
 * no thread packs it at all. The sgemm-per-tile drivers (qgemm.c) re-pack X once per
 * thread; this removes that duplicated work and runs 1.03–1.2× dense 2-thread OpenBLAS at
 * T ≥ 256 (benches/, qlora bench gemm).
 *
 *   forward   Y[T, out] = X[T, in] · Wᵀ + beta·Y     M = T, N = out, K = in
 *   backward dX[T, in] = dY[T, out] · W + beta·dX    M = T, N = in,  K = out
 *
 * One micro-kernel C[MR, NR] += A[MR, kc] · B[kc, NR]: A = X or dY (broadcast side, read in
 * place), B = W packed k-major in panels of NR columns (B[k·NR + j]) — forward through a
 * 16×16 in-register transpose of 16 dequantized W rows, backward directly (W rows are B rows).
 * Threads split N at multiples of 16: no W element is dequantized twice, no reduction.
 * Needs cols % 16 == 0 (bitsandbytes block sizes are multiples of 16, ggml's are 32).
 */
#include "panels_avx512.h"
#include <stdlib.h>

int omp_get_thread_num(void);
int omp_get_num_threads(void);
int omp_get_max_threads(void);

enum { MR = 8, NV = 3, NR = 16 * NV }; /* 8 × 48: 24 accumulators; 6×64 measured the same, 14×32 spills */
enum { KC = 384, NC = 256 };           /* a kc×nc block of B stays in L2; one MR-row A panel in L1 */

static int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }

/* ---- B packing: panels of NR columns, kc rows; columns past the matrix are zero --------- */
/* Forward: B[k][j] = W[n0 + j][k0 + k], i.e. 16 W rows dequantized, then transposed. */
AVX512 ALWAYS_INLINE static inline void pack_forward_as(qk_format f, const qk_matrix *w, __m512 code, int64_t n0, int64_t nc,
                                                        int64_t k0, int64_t kc, float *bp) {
    for (int64_t p = 0; p < nc; p += NR, bp += kc * NR)
        for (int g = 0; g < NV; g++) {
            const int64_t r0 = n0 + p + 16 * g, valid = r0 < n0 + nc ? min64(16, n0 + nc - r0) : 0;
            for (int64_t k = 0; k < kc; k += 16) {
                __m512 v[16];
                for (int i = 0; i < 16; i++) v[i] = i < valid ? dequantize16(f, w, code, r0 + i, k0 + k) : _mm512_setzero_ps();
                transpose16(v);
                for (int i = 0; i < 16; i++) _mm512_store_ps(bp + (k + i) * NR + 16 * g, v[i]);
            }
        }
}

AVX512 static void pack_forward(const qk_matrix *w, __m512 code, int64_t n0, int64_t nc, int64_t k0, int64_t kc, float *bp) {
#define AS(F) pack_forward_as(F, w, code, n0, nc, k0, kc, bp)
    WITH_FORMAT(w->format, AS)
#undef AS
}

/* Backward: B[k][j] = W[k0 + k][n0 + j]: row segments of W are the panel rows. */
AVX512 ALWAYS_INLINE static inline void pack_backward_as(qk_format f, const qk_matrix *w, __m512 code, int64_t n0, int64_t nc,
                                                         int64_t k0, int64_t kc, float *bp) {
    for (int64_t p = 0; p < nc; p += NR, bp += kc * NR) {
        const int groups = (int)((min64(NR, nc - p) + 15) / 16);
        for (int64_t k = 0; k < kc; k++)
            for (int g = 0; g < NV; g++)
                _mm512_store_ps(bp + k * NR + 16 * g, g < groups ? dequantize16(f, w, code, k0 + k, n0 + p + 16 * g) : _mm512_setzero_ps());
    }
}

AVX512 static void pack_backward(const qk_matrix *w, __m512 code, int64_t n0, int64_t nc, int64_t k0, int64_t kc, float *bp) {
#define AS(F) pack_backward_as(F, w, code, n0, nc, k0, kc, bp)
    WITH_FORMAT(w->format, AS)
#undef AS
}

/* ---- micro-kernel: C[mv, nvalid] (ldc) = A[mv, kc] (lda) · B panel, stored per mode -------- */

AVX512 static void kernel(int64_t kc, const float *restrict a, int64_t lda, const float *restrict b, float *c, int64_t ldc,
                          int mv, int nvalid, int mode, float beta) {
    __m512 acc[MR][NV];
    if (mode != STORE)
        for (int i = 0; i < MR; i++)
            for (int v = 0; v < NV; v++) _mm_prefetch((const char *)(c + i * ldc + 16 * v), _MM_HINT_T0);
    for (int i = 0; i < MR; i++)
        for (int v = 0; v < NV; v++) acc[i][v] = _mm512_setzero_ps();
#pragma clang loop unroll_count(4)
    for (int64_t k = 0; k < kc; k++) {
        __m512 bv[NV];
        for (int v = 0; v < NV; v++) bv[v] = _mm512_load_ps(b + k * NR + 16 * v);
        for (int i = 0; i < MR; i++) {
            const __m512 av = _mm512_set1_ps(a[i * lda + k]);
            for (int v = 0; v < NV; v++) acc[i][v] = _mm512_fmadd_ps(av, bv[v], acc[i][v]);
        }
    }
    /* Constant trip counts, the live rows and columns masked: with a loop bound of mv the
     * compiler kept acc in memory, zeroed by a memset per call (2% of a training step). */
    const __m512 vb = _mm512_set1_ps(beta);
#pragma clang loop unroll(full)
    for (int i = 0; i < MR; i++)
#pragma clang loop unroll(full)
        for (int v = 0; v < NV; v++) {
            const int left = nvalid - 16 * v;
            if (i >= mv || left <= 0) continue;
            store_c(c + i * ldc + 16 * v, left, acc[i][v], mode, vb);
        }
}

/* Per-thread buffers, kept between calls (libomp keeps its threads). */
static __thread float *tls_b, *tls_edge;
static __thread size_t tls_b_cap, tls_edge_cap;

static float *grow(float **p, size_t *cap, size_t floats) {
    if (floats > *cap) {
        free(*p);
        *p = aligned_alloc(64, (floats * sizeof(float) + 63) / 64 * 64);
        *cap = *p ? floats : 0;
    }
    return *p;
}

typedef void (*pack_fn)(const qk_matrix *, __m512, int64_t, int64_t, int64_t, int64_t, float *);

/* C[M, N] (ldc) = A[M, K] (lda) · B(W) + beta·C. */
AVX512 static int run(const qk_matrix *w, const float *a, int64_t lda, float *c, int64_t ldc, int64_t M, int64_t N, int64_t K,
                      float beta, int threads, pack_fn pack) {
    if (M <= 0 || N <= 0) return 0;
    const int64_t slices = (K + KC - 1) / KC; /* equal kc slices, multiples of 16 */
    const int64_t kcs = slices > 0 ? ((K + slices - 1) / slices + 15) / 16 * 16 : 16;
    const __m512 code = w->code ? _mm512_loadu_ps(w->code) : _mm512_setzero_ps();
    int failed = 0;
    int nt = threads > 0 ? threads : omp_get_max_threads();
    if (nt > (N + 15) / 16) nt = (int)((N + 15) / 16);
#pragma omp parallel num_threads(nt)
    {
        const int t = omp_get_thread_num(), n = omp_get_num_threads();
        const int64_t units = (N + 15) / 16;
        const int64_t n0 = min64(N, units * t / n * 16), n1 = min64(N, units * (t + 1) / n * 16);
        int64_t ncb = NC; /* equal nc blocks, multiples of NR */
        if (n1 > n0) {
            const int64_t parts = (n1 - n0 + NC - 1) / NC;
            ncb = ((n1 - n0 + parts - 1) / parts + NR - 1) / NR * NR;
        }
        float *bp = grow(&tls_b, &tls_b_cap, (size_t)(kcs * ncb));
        float *edge = grow(&tls_edge, &tls_edge_cap, (size_t)(MR * kcs));
        if (!bp || !edge) {
#pragma omp atomic write
            failed = 1;
        }
        for (int64_t pc = 0; pc < K && bp && edge; pc += kcs) {
            const int64_t kc = min64(kcs, K - pc);
            const int mode = pc > 0 ? ADD : (beta == 0.0f ? STORE : (beta == 1.0f ? ADD : SCALE_ADD));
            for (int64_t jc = n0; jc < n1; jc += ncb) {
                const int64_t nc = min64(ncb, n1 - jc);
                pack(w, code, jc, nc, pc, kc, bp);
                for (int64_t ir = 0; ir < M; ir += MR) {
                    const int mv = (int)min64(MR, M - ir);
                    const float *ap = a + ir * lda + pc;
                    int64_t la = lda;
                    if (mv < MR) { /* the last rows: a zero-padded copy */
                        for (int i = 0; i < MR; i++)
                            for (int64_t k = 0; k < kc; k++) edge[i * kc + k] = i < mv ? ap[i * lda + k] : 0.0f;
                        ap = edge;
                        la = kc;
                    }
                    for (int64_t jr = 0; jr < nc; jr += NR)
                        kernel(kc, ap, la, bp + (jr / NR) * NR * kc, c + ir * ldc + jc + jr, ldc, mv, (int)min64(NR, nc - jr), mode, beta);
                }
            }
        }
    }
    return failed ? -1 : 0;
}

int qk_gemm_avx512_applies(const qk_matrix *w) {
    return qk_isa_get() == QK_ISA_AVX512 && w->cols % 16 == 0 && w->cols > 0 && (qk_is_ggml(w->format) || w->block_size % 16 == 0);
}

int qk_gemm_forward_avx512(const qk_matrix *w, const float *x, float *y, int64_t T, float beta, int threads) {
    return run(w, x, w->cols, y, w->rows, T, w->rows, w->cols, beta, threads, pack_forward);
}

int qk_gemm_backward_avx512(const qk_matrix *w, const float *dy, float *dx, int64_t T, float beta, int threads) {
    return run(w, dy, w->rows, dx, w->cols, T, w->cols, w->rows, beta, threads, pack_backward);
}

/* Σ a[i]·b[i] with four 16-lane accumulators, the tail masked. */
AVX512 float qk_dot_avx512(const float *a, const float *b, int64_t n) {
    __m512 s0 = _mm512_setzero_ps(), s1 = _mm512_setzero_ps(), s2 = _mm512_setzero_ps(), s3 = _mm512_setzero_ps();
    int64_t i = 0;
    for (; i + 64 <= n; i += 64) {
        s0 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i), _mm512_loadu_ps(b + i), s0);
        s1 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i + 16), _mm512_loadu_ps(b + i + 16), s1);
        s2 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i + 32), _mm512_loadu_ps(b + i + 32), s2);
        s3 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i + 48), _mm512_loadu_ps(b + i + 48), s3);
    }
    for (; i + 16 <= n; i += 16) s0 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i), _mm512_loadu_ps(b + i), s0);
    if (i < n) {
        const __mmask16 m = (__mmask16)((1u << (n - i)) - 1);
        s1 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, a + i), _mm512_maskz_loadu_ps(m, b + i), s1);
    }
    return _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(s0, s1), _mm512_add_ps(s2, s3)));
}
