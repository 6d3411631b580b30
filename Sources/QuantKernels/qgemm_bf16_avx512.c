/* qgemm_bf16_avx512.c — the frozen-path GEMMs in bf16 with fp32 accumulation, for CPUs with
 * AVX512_BF16 (Cooper Lake, Sapphire Rapids and later; AMD Zen 4 and later): the structure of
 * qgemm_avx512.c, with W dequantized straight into bf16 panels and X (or dY) rounded to bf16
 * once per call, so each vdpbf16ps does 32 multiply-adds where vfmadd231ps does 16.
 *
 *   forward   Y[T, out] = X[T, in] · Wᵀ + beta·Y     M = T, N = out, K = in
 *   backward dX[T, in] = dY[T, out] · W + beta·dX    M = T, N = in,  K = out
 *
 * Rounding: A (X or dY) and the dequantized W are rounded to bf16 by vcvtne2ps2bf16 (nearest
 * even; NaN stays a quiet NaN; fp32 subnormals become ±0); the bf16 products are exact in
 * fp32 and vdpbf16ps adds them one at a time to the fp32 accumulator (odd k, then even k).
 * qk_gemm_forward_bf16_ref and qk_gemm_backward_bf16_ref (qgemm_bf16_ref.c) round the same
 * way and sum in fp64.
 *
 * vdpbf16ps multiplies bf16 pairs, so both operands are packed by pairs of consecutive k:
 *   A panel [Mp/MR][kc/2][MR]   one k slice; 32-bit word = (A[m][2p], A[m][2p+1]), low half first;
 *                               rows past M and the column past an odd K are zero
 *   B panel [kc/2][NR]          32-bit word = (B[2p][j], B[2p+1][j]); forward B[k][j] =
 *                               W[n0+j][k0+k] (32 columns of 16 W rows rounded, then a 16×16
 *                               transpose of the pairs); backward B[k][j] = W[k0+k][n0+j] (two
 *                               W rows rounded and interleaved)
 * Threads split N at multiples of 16 as in fp32; all of them round each k slice of A, then meet.
 * Shapes the fp32 micro-kernel cannot take (cols % 16 ≠ 0, bitsandbytes blocks that are not
 * a multiple of 16) dequantize a tile with qk_dequantize_tile and pack from it.
 */
#include "panels_avx512.h"
#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

#define BF16 __attribute__((target("avx512f,avx512bf16,avx512bw,avx512vl")))

int omp_get_thread_num(void);
int omp_get_num_threads(void);
int omp_get_max_threads(void);

enum { MR = 8, NV = 3, NR = 16 * NV }; /* 8 × 48: 24 fp32 accumulators, as in fp32 */
_Static_assert(MR == 8, "pack_a transposes 8 rows of 16 pairs");
enum { KC = 768, NC = 256 };           /* multiples of 32; a kc×nc bf16 block is as many bytes as fp32's 384×256 */

static int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }

int qk_bf16_available(void) {
    static int available = -1;
    if (available < 0) {
        qk_cpu_info i;
        qk_cpu_detect(&i);
        available = i.os_avx512 && i.avx512f && i.avx512bw && i.avx512vl && i.avx512_bf16;
    }
    return available;
}

/* Where the panels' fp32 values come from: W's blocks directly (fast), or a dequantized tile
 * of W whose element (r, c) is tile[(r − r0)·ld + (c − c0)]. */
typedef struct {
    const qk_matrix *w;
    __m512 code;
    const float *tile;
    int64_t ld, r0, c0;
} panel_source;

/* W[r][c .. c+count), count ≤ 16, zero past count. */
BF16 ALWAYS_INLINE static inline __m512 load16(qk_format f, const panel_source *s, int64_t r, int64_t c, int64_t count) {
    if (!s->tile) return dequantize16(f, s->w, s->code, r, c);
    const __mmask16 m = count >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << count) - 1);
    return _mm512_maskz_loadu_ps(m, s->tile + (r - s->r0) * s->ld + (c - s->c0));
}

/* 32 bf16 from two fp32 vectors: lo in the low half. */
BF16 static inline __m512i round_pair(__m512 hi, __m512 lo) { return (__m512i)_mm512_cvtne2ps_pbh(hi, lo); }

/* ---- B packing: panels of NR columns, (kc+1)/2 pair rows; columns past the matrix are zero - */
/* f: W's format as a constant (WITH_FORMAT, panels_avx512.h). */
/* Strips of NR columns `stride` words apart (≥ (kc+1)/2 · NR: room for pair rows after them). */
BF16 ALWAYS_INLINE static inline void pack_forward_as(qk_format f, const panel_source *s, int64_t n0, int64_t nc, int64_t k0,
                                                      int64_t kc, uint32_t *bp, int64_t stride) {
    for (int64_t p = 0; p < nc; p += NR, bp += stride)
        for (int g = 0; g < NV; g++) {
            const int64_t r0 = n0 + p + 16 * g, valid = r0 < n0 + nc ? min64(16, n0 + nc - r0) : 0;
            for (int64_t k = 0; k < kc; k += 32) {
                const int64_t kv = min64(32, kc - k);
                if (!s->tile) /* the next 16 rows' same columns: a group's worth of work ahead */
                    for (int i = 0; i < 16; i++) prefetch_block(f, s->w, r0 + 16 + i, k0 + k);
                __m512 v[16];
                for (int i = 0; i < 16; i++) {
                    if (i >= valid) {
                        v[i] = _mm512_setzero_ps();
                        continue;
                    }
                    const __m512 lo = load16(f, s, r0 + i, k0 + k, min64(16, kv));
                    const __m512 hi = kv > 16 ? load16(f, s, r0 + i, k0 + k + 16, kv - 16) : _mm512_setzero_ps();
                    v[i] = _mm512_castsi512_ps(round_pair(hi, lo)); /* lane q: pair q of row i */
                }
                transpose16(v); /* v[q], lane i: pair q of row i */
                for (int64_t q = 0; q < (kv + 1) / 2; q++) _mm512_store_ps((float *)bp + (k / 2 + q) * NR + 16 * g, v[q]);
            }
        }
}

BF16 static void pack_forward(const panel_source *s, int64_t n0, int64_t nc, int64_t k0, int64_t kc, uint32_t *bp, int64_t stride) {
#define AS(F) pack_forward_as(F, s, n0, nc, k0, kc, bp, stride)
    WITH_FORMAT(s->w ? s->w->format : QK_FORMAT_NF4, AS) /* dense W (no w) is read as a tile: f unused */
#undef AS
}

BF16 ALWAYS_INLINE static inline void pack_backward_as(qk_format f, const panel_source *s, int64_t n0, int64_t nc, int64_t k0,
                                                       int64_t kc, uint32_t *bp, int64_t stride) {
    /* word j of the result: (lo[j], hi[j]) from [lo0 .. lo15, hi0 .. hi15] */
    const __m512i interleave = _mm512_set_epi16(31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8,
                                                23, 7, 22, 6, 21, 5, 20, 4, 19, 3, 18, 2, 17, 1, 16, 0);
    const int64_t kp = (kc + 1) / 2;
    for (int64_t p = 0; p < nc; p += NR, bp += stride)
        for (int64_t q = 0; q < kp; q++) {
            if (!s->tile) { /* 16 rows ahead, this strip's columns (48 of 4-bit fit one line or two) */
                prefetch_block(f, s->w, k0 + 2 * q + 16, n0 + p);
                prefetch_block(f, s->w, k0 + 2 * q + 17, n0 + p);
                prefetch_block(f, s->w, k0 + 2 * q + 16, n0 + p + 32);
                prefetch_block(f, s->w, k0 + 2 * q + 17, n0 + p + 32);
            }
            for (int g = 0; g < NV; g++) {
                const int64_t c = n0 + p + 16 * g, count = min64(16, n0 + nc - c);
                __m512i v = _mm512_setzero_si512();
                if (count > 0) {
                    const __m512 lo = load16(f, s, k0 + 2 * q, c, count);
                    const __m512 hi = 2 * q + 1 < kc ? load16(f, s, k0 + 2 * q + 1, c, count) : _mm512_setzero_ps();
                    v = _mm512_permutexvar_epi16(interleave, round_pair(hi, lo));
                }
                _mm512_store_si512(bp + q * NR + 16 * g, v);
            }
        }
}

BF16 static void pack_backward(const panel_source *s, int64_t n0, int64_t nc, int64_t k0, int64_t kc, uint32_t *bp, int64_t stride) {
#define AS(F) pack_backward_as(F, s, n0, nc, k0, kc, bp, stride)
    WITH_FORMAT(s->w ? s->w->format : QK_FORMAT_NF4, AS) /* dense W (no w) is read as a tile: f unused */
#undef AS
}

/* Columns k0 .. k0+kc of A[M, K] (lda), times `scale`, into block ib's pair panel at
 * ap + ib·kps·MR from pair `off` on (kps ≥ off + (kc+1)/2 words per row): rows past M and the
 * column past an odd end zero. Eight rows of 32 columns at a time: each row rounded to 16
 * pairs, then an 8 × 16 transpose of the pair words whose every output vector holds two
 * consecutive pairs of the 8 rows (64 bytes of the panel), stored with constant indices —
 * a 16 × 16 transpose of which half was zeros, stored through a runtime loop bound, kept
 * its vectors on the stack (pack_a was 5.6% of a bf16 training step, mostly those reloads). */
/* row[0 .. min(32, left)) times `scale` (when `scaled`; vs = scale in every lane), rounded to
 * 16 pair words, zero past `left`. What both A packings (pack_a, pack_a_rows) read. */
BF16 ALWAYS_INLINE static inline __m512i round_row32(const float *row, int64_t left, int scaled, __m512 vs) {
    const __mmask16 m0 = left >= 16 ? 0xFFFF : (__mmask16)((1u << left) - 1);
    const __mmask16 m1 = left >= 32 ? 0xFFFF : left <= 16 ? 0 : (__mmask16)((1u << (left - 16)) - 1);
    __m512 lo = _mm512_maskz_loadu_ps(m0, row), hi = _mm512_maskz_loadu_ps(m1, row + 16);
    if (scaled) {
        lo = _mm512_mul_ps(lo, vs);
        hi = _mm512_mul_ps(hi, vs);
    }
    return round_pair(hi, lo);
}

BF16 static void pack_a(const float *a, int64_t lda, int64_t M, int64_t k0, int64_t kc, int64_t ib, int64_t kps, int64_t off,
                        float scale, uint32_t *ap) {
    const int64_t kp = (kc + 1) / 2;
    uint32_t *panel = ap + (ib * kps + off) * MR;
    const __m512 vs = _mm512_set1_ps(scale);
    const int scaled = scale != 1.0f;
    for (int64_t k = 0; k < kc; k += 32) {
        __m512 r[MR]; /* r[i], lane q: pair q of row i */
#pragma clang loop unroll(full)
        for (int i = 0; i < MR; i++) {
            const int64_t m = ib * MR + i;
            r[i] = m < M ? _mm512_castsi512_ps(round_row32(a + m * lda + k0 + k, kc - k, scaled, vs)) : _mm512_setzero_ps();
        }
        /* s[j] (rows 0-3) and s[4 + j] (rows 4-7), 128-bit lane L: pair 4L + j of those rows */
        __m512 t[MR], s[MR];
#pragma clang loop unroll(full)
        for (int i = 0; i < 4; i++) {
            t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
            t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
        }
#pragma clang loop unroll(full)
        for (int h = 0; h < 2; h++) { /* h 0: rows 0-3 (t0..t3), h 1: rows 4-7 (t4..t7) */
            const __m512d a0 = _mm512_castps_pd(t[4 * h]), a1 = _mm512_castps_pd(t[4 * h + 1]);
            const __m512d a2 = _mm512_castps_pd(t[4 * h + 2]), a3 = _mm512_castps_pd(t[4 * h + 3]);
            s[4 * h + 0] = _mm512_castpd_ps(_mm512_unpacklo_pd(a0, a2));
            s[4 * h + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(a0, a2));
            s[4 * h + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(a1, a3));
            s[4 * h + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(a1, a3));
        }
        /* z[2L + h]: pairs 4L + 2h and 4L + 2h + 1 of rows 0-7, 8 words each */
        __m512 z[MR];
#pragma clang loop unroll(full)
        for (int h = 0; h < 2; h++) {
            const __m512 p = _mm512_shuffle_f32x4(s[2 * h], s[4 + 2 * h], 0x44), q = _mm512_shuffle_f32x4(s[2 * h], s[4 + 2 * h], 0xEE);
            const __m512 u = _mm512_shuffle_f32x4(s[2 * h + 1], s[5 + 2 * h], 0x44), v = _mm512_shuffle_f32x4(s[2 * h + 1], s[5 + 2 * h], 0xEE);
            z[0 + h] = _mm512_shuffle_f32x4(p, u, 0x88);
            z[2 + h] = _mm512_shuffle_f32x4(p, u, 0xDD);
            z[4 + h] = _mm512_shuffle_f32x4(q, v, 0x88);
            z[6 + h] = _mm512_shuffle_f32x4(q, v, 0xDD);
        }
        const int64_t pairs = min64(16, kp - k / 2);
        float *dst = (float *)(panel + (k / 2) * MR);
#pragma clang loop unroll(full)
        for (int j = 0; j < MR; j++) {
            if (2 * j + 1 < pairs) _mm512_storeu_ps(dst + 16 * j, z[j]);
            else if (2 * j < pairs) _mm256_storeu_ps(dst + 16 * j, _mm512_castps512_ps256(z[j]));
        }
    }
}

/* ---- micro-kernel: C[mv, nvalid] (ldc) = alpha · A panel · B panel, stored per mode ------ */
/* (STORE, ADD, SCALE_ADD: panels_avx512.h; acc times alpha first) */

BF16 static void kernel(int64_t kp, const uint32_t *restrict a, const uint32_t *restrict b, float *c, int64_t ldc,
                        int mv, int nvalid, int mode, float beta, float alpha) {
    __m512 acc[MR][NV];
    if (mode != STORE)
        for (int i = 0; i < mv; i++)
            for (int v = 0; v < NV; v++) _mm_prefetch((const char *)(c + i * ldc + 16 * v), _MM_HINT_T0);
    for (int i = 0; i < MR; i++)
        for (int v = 0; v < NV; v++) acc[i][v] = _mm512_setzero_ps();
#pragma clang loop unroll_count(4)
    for (int64_t q = 0; q < kp; q++) {
        __m512bh bv[NV];
        for (int v = 0; v < NV; v++) bv[v] = (__m512bh)_mm512_load_si512(b + q * NR + 16 * v);
        for (int i = 0; i < MR; i++) {
            const __m512bh av = (__m512bh)_mm512_set1_epi32((int)a[q * MR + i]);
            for (int v = 0; v < NV; v++) acc[i][v] = _mm512_dpbf16_ps(acc[i][v], av, bv[v]);
        }
    }
    /* Constant trip counts, the live rows and columns masked: with a loop bound of mv the
     * compiler kept acc in memory, zeroed by a memset per call (2% of a training step). */
    const __m512 vb = _mm512_set1_ps(beta), va = _mm512_set1_ps(alpha);
    const int scaled = alpha != 1.0f;
#pragma clang loop unroll(full)
    for (int i = 0; i < MR; i++)
#pragma clang loop unroll(full)
        for (int v = 0; v < NV; v++) {
            const int left = nvalid - 16 * v;
            if (i >= mv || left <= 0) continue;
            store_c(c + i * ldc + 16 * v, left, scaled ? _mm512_mul_ps(va, acc[i][v]) : acc[i][v], mode, vb);
        }
}

#include "qgemm_bf16_amx.h"

/* Which micro-kernel a product runs: vdpbf16ps, AMX tiles, or AMX's software model (tests). */
enum { KERNEL_AVX512 = 0, KERNEL_AMX = 1, KERNEL_SOFT_AMX = 2 };

/* C = alpha · A panel · B panel of block rows (MR for vdpbf16ps, MA for the tiles; A's row
 * stride kps words for the tiles). */
BF16 static inline void micro(int kind, int64_t kp, const uint32_t *a, int64_t kps, const uint32_t *b, float *c, int64_t ldc, int mv,
                              int nvalid, int mode, float beta, float alpha) {
    if (kind == KERNEL_AVX512) kernel(kp, a, b, c, ldc, mv, nvalid, mode, beta, alpha);
    else if (kind == KERNEL_AMX) amx_kernel(kp, a, kps, b, c, ldc, mv, nvalid, mode, beta, alpha);
    else soft_kernel(kp, a, kps, b, c, ldc, mv, nvalid, mode, beta, alpha);
}

BF16 static inline void pack_block(int kind, const float *a, int64_t lda, int64_t M, int64_t k0, int64_t kc, int64_t ib, int64_t kps,
                                   int64_t off, float scale, uint32_t *ap) {
    if (kind == KERNEL_AVX512) pack_a(a, lda, M, k0, kc, ib, kps, off, scale, ap);
    else pack_a_rows(a, lda, M, k0, kc, ib, kps, off, scale, ap);
}

/* Buffers kept between calls (libomp keeps its threads): B panels and a dequantized tile per
 * thread, the rounded A on the calling thread. */
static __thread void *tls_b, *tls_tile, *tls_a;
static __thread size_t tls_b_cap, tls_tile_cap, tls_a_cap;

static void *grow(void **p, size_t *cap, size_t bytes) {
    if (bytes > *cap) {
        free(*p);
        *p = aligned_alloc(64, (bytes + 63) / 64 * 64);
        *cap = *p ? bytes : 0;
    }
    return *p;
}

typedef void (*pack_fn)(const panel_source *, int64_t, int64_t, int64_t, int64_t, uint32_t *, int64_t);

/* Whether W's blocks can be read 16 elements at a time (dequantize16's conditions). */
static int reads_blocks(const qk_matrix *w) {
    return w->cols % 16 == 0 && (qk_is_ggml(w->format) || w->block_size % 16 == 0);
}

/* A second output filled in the same pass from the same rounded A: columns of a dense fp32
 * matrix E (forward: E [n, K], its rows the columns; backward: E [K, n]), rows of `ld`
 * floats: C2[M, n] (ldc) = alpha · A · op(E). LoRA's x·Aᵀ beside a frozen forward, s·dY·B
 * beside a frozen backward: A is rounded once for both. */
typedef struct {
    const float *e;
    int64_t n, ld;
    float *c;
    int64_t ldc;
    float alpha;
} extra_out;

/* A low-rank term added in the main product's accumulators: C += round(scale·U) · op(D),
 * U [M, r] (ldu), D forward [N, r] (its rows the columns: U·Dᵀ) or backward [r, N] (U·D),
 * both rounded to bf16. Its r/2 pairs are appended to the last k slice's A and B panels, so
 * C is written once: LoRA's scale·u·Bᵀ in the frozen forward (u = x·Aᵀ the pass's own second
 * output, or given), g·A in the frozen backward (g = scale·dY·B, the second output). */
typedef struct {
    const float *u;
    int64_t r, ldu;
    const float *d;
    float scale;
} lowrank_add;

/* C[M, N] (ldc) = A[M, K] (lda) · B(W) + beta·C; `forward` says how B is read from W, which
 * is either a block matrix `w` or, when `w` is NULL, a dense fp32 matrix `dense` with rows of
 * `dense_ld` floats, read in place as if it were an already dequantized tile; `x2`, when not
 * NULL, the second output; `lr`, when not NULL, a low-rank term (its U may be x2's output).
 * Threads split W's columns in units of 16, and the second output's rows in blocks of MR. */
BF16 static int run(int kind, const qk_matrix *w, const float *dense, int64_t dense_ld, const float *a, int64_t lda, float *c, int64_t ldc,
                    int64_t M, int64_t N, int64_t K, float beta, int threads, int forward, const extra_out *x2,
                    const lowrank_add *lr) {
    const int64_t slices = (K + KC - 1) / KC; /* equal kc slices, multiples of 32 */
    const int64_t kcs = slices > 0 ? ((K + slices - 1) / slices + 31) / 32 * 32 : 32;
    const int64_t ext = lr ? (lr->r + 1) / 2 : 0; /* pair rows of the low-rank term, after the last slice's */
    const int64_t mr = kind == KERNEL_AVX512 ? MR : MA; /* rows of a block */
    const int64_t blocks = (M + mr - 1) / mr, kps = kcs / 2 + ext;
    const int u_in_pass = lr && x2 && lr->u == x2->c;
    /* A is rounded one k slice at a time, into two slice buffers used in turn: a slice is
     * packed by all threads (omp for, then a barrier), so a buffer is rewritten only after
     * every thread has passed the next slice's barrier, done with it. The rounded A never
     * exists whole (the LM head's backward has K = vocab: 12 MiB of bf16 for 128 rows). */
    uint32_t *ap = grow(&tls_a, &tls_a_cap, (size_t)(2 * blocks * kps * mr) * sizeof(uint32_t));
    if (!ap) return QK_GEMM_NO_MEMORY;
    const pack_fn pack = forward ? pack_forward : pack_backward;
    const int direct = w && reads_blocks(w), tiled = w && !direct;
    const __m512 code = w && w->code ? _mm512_loadu_ps(w->code) : _mm512_setzero_ps();
    int failed = 0;
    const int64_t units = (N + 15) / 16;
    const int64_t e_width = x2 ? (x2->n + NR - 1) / NR * NR : 0;
    int nt = threads > 0 ? threads : omp_get_max_threads();
    if (nt > units) nt = (int)units;
#pragma omp parallel num_threads(nt)
    {
        const int t = omp_get_thread_num(), n = omp_get_num_threads();
        const int64_t n0 = min64(N, units * t / n * 16), n1 = min64(N, units * (t + 1) / n * 16);
        const int64_t b0 = blocks * t / n, b1 = blocks * (t + 1) / n; /* the second output's row blocks */
        int64_t ncb = NC; /* equal nc blocks, multiples of NR */
        if (n1 > n0) {
            const int64_t parts = (n1 - n0 + NC - 1) / NC;
            ncb = ((n1 - n0 + parts - 1) / parts + NR - 1) / NR * NR;
        }
        const int64_t b_words = kps * (ncb > e_width ? ncb : e_width);
        uint32_t *bp = grow(&tls_b, &tls_b_cap, (size_t)b_words * sizeof(uint32_t));
        float *tile = tiled ? grow(&tls_tile, &tls_tile_cap, (size_t)(kcs * ncb) * sizeof(float)) : NULL;
        if (!bp || (tiled && !tile)) {
#pragma omp atomic write
            failed = 1;
        }
        if (kind == KERNEL_AMX) amx_configure();
#pragma omp barrier
        int stop;
#pragma omp atomic read
        stop = failed;
        for (int64_t pc = 0, slice = 0; pc < K && !stop; pc += kcs, slice++) { /* every thread runs every slice */
            const int64_t kc = min64(kcs, K - pc), kp = (kc + 1) / 2;
            const int last = pc + kcs >= K;
            uint32_t *as = ap + (slice & 1) * blocks * kps * mr;
#pragma omp for schedule(static)
            for (int64_t ib = 0; ib < blocks; ib++) pack_block(kind, a, lda, M, pc, kc, ib, kps, 0, 1.0f, as);
            if (x2) { /* the second output, E read in place as a tile: this thread's row blocks, all of E's columns */
                const panel_source s = {NULL, code, x2->e, x2->ld, 0, 0};
                pack(&s, 0, x2->n, pc, kc, bp, kp * NR);
                for (int64_t ib = b0; ib < b1; ib++) {
                    const uint32_t *a_panel = as + ib * kps * mr;
                    const int mv = (int)min64(mr, M - ib * mr);
                    for (int64_t jr = 0; jr < x2->n; jr += NR)
                        micro(kind, kp, a_panel, kps, bp + (jr / NR) * kp * NR, x2->c + ib * mr * x2->ldc + jr, x2->ldc, mv,
                              (int)min64(NR, x2->n - jr), pc > 0 ? ADD : STORE, 0.0f, x2->alpha);
                }
            }
            const int64_t kx = last ? ext : 0; /* pair rows past this slice's */
            if (kx) {
                if (u_in_pass) {
#pragma omp barrier
                } /* every row of U is written */
#pragma omp for schedule(static)
                for (int64_t ib = 0; ib < blocks; ib++) pack_block(kind, lr->u, lr->ldu, M, 0, lr->r, ib, kps, kp, lr->scale, as);
            }
            const int64_t stride = (kp + kx) * NR;
            const int mode = pc > 0 ? ADD : (beta == 0.0f ? STORE : (beta == 1.0f ? ADD : SCALE_ADD));
            for (int64_t jc = n0; jc < n1; jc += ncb) {
                const int64_t nc = min64(ncb, n1 - jc);
                panel_source s = {w, code, dense, dense_ld, 0, 0};
                if (tiled) { /* forward: rows jc.., columns pc..; backward: rows pc.., columns jc.. */
                    s.tile = tile;
                    s.r0 = forward ? jc : pc;
                    s.c0 = forward ? pc : jc;
                    s.ld = forward ? kc : nc;
                    if (forward) qk_dequantize_tile(w, jc, jc + nc, pc, pc + kc, tile);
                    else qk_dequantize_tile(w, pc, pc + kc, jc, jc + nc, tile);
                }
                pack(&s, jc, nc, pc, kc, bp, stride);
                if (kx) { /* D's pairs after W's in every strip */
                    const panel_source d = {NULL, code, lr->d, forward ? lr->r : N, 0, 0};
                    pack(&d, jc, nc, 0, lr->r, bp + kp * NR, stride);
                }
                for (int64_t ib = 0; ib < blocks; ib++) {
                    const uint32_t *a_panel = as + ib * kps * mr;
                    const int mv = (int)min64(mr, M - ib * mr);
                    for (int64_t jr = 0; jr < nc; jr += NR)
                        micro(kind, kp + kx, a_panel, kps, bp + (jr / NR) * stride, c + ib * mr * ldc + jc + jr, ldc, mv,
                              (int)min64(NR, nc - jr), mode, beta, 1.0f);
                }
            }
        }
        if (kind == KERNEL_AMX) amx_release();
    }
    return failed ? QK_GEMM_NO_MEMORY : 0;
}

/* ---- which kernel: AMX where the CPU has it, the OS grants it and it checks out -------------- */
static pthread_once_t choose_once = PTHREAD_ONCE_INIT;
static int chosen_kernel = KERNEL_AVX512, amx_granted = 0;
static char chosen_reason[256] = "";
static __thread int kernel_override = -1;

/* Largest |y_kind − y_vdpbf16ps| over the bound 2·γ_m·Σ|x̂||ŵ| (Σ from the product of the
 * absolute values), forward and backward of a dense [96, 200] W and 37 rows (full tiles, a
 * remainder of 4 pairs, a last row block of 5): ≤ 1 when the kernels agree. */
BF16 static double kernel_check(int kind) {
    enum { R = 96, C = 200, T = 37 };
    float *buffer = malloc(sizeof(float) * (2 * R * C + 5 * T * C + 5 * T * R));
    if (!buffer) return INFINITY;
    float *w = buffer, *wa = w + R * C, *x = wa + R * C, *xa = x + T * C, *dy = xa + T * C, *dya = dy + T * R;
    float *y0 = dya + T * R, *y1 = y0 + T * R, *ys = y1 + T * R, *d0 = ys + T * R, *d1 = d0 + T * C, *ds = d1 + T * C;
    uint32_t state = 12345;
    for (int i = 0; i < R * C + T * C + T * R; i++) {
        state = state * 1664525u + 1013904223u;
        const float v = (float)((int32_t)state >> 8) * 0x1p-23f; /* [-1, 1) */
        if (i < R * C) w[i] = v, wa[i] = fabsf(v);
        else if (i < R * C + T * C) x[i - R * C] = v, xa[i - R * C] = fabsf(v);
        else dy[i - R * C - T * C] = v, dya[i - R * C - T * C] = fabsf(v);
    }
    int rc = run(KERNEL_AVX512, NULL, w, C, x, C, y0, R, T, R, C, 0.0f, 1, 1, NULL, NULL);
    rc |= run(kind, NULL, w, C, x, C, y1, R, T, R, C, 0.0f, 1, 1, NULL, NULL);
    rc |= run(KERNEL_AVX512, NULL, wa, C, xa, C, ys, R, T, R, C, 0.0f, 1, 1, NULL, NULL);
    rc |= run(KERNEL_AVX512, NULL, w, C, dy, R, d0, C, T, C, R, 0.0f, 1, 0, NULL, NULL);
    rc |= run(kind, NULL, w, C, dy, R, d1, C, T, C, R, 0.0f, 1, 0, NULL, NULL);
    rc |= run(KERNEL_AVX512, NULL, wa, C, dya, R, ds, C, T, C, R, 0.0f, 1, 0, NULL, NULL);
    double worst = rc ? INFINITY : 0;
    for (int pass = 0; pass < 2 && !rc; pass++) {
        const float *a = pass ? d0 : y0, *b = pass ? d1 : y1, *s = pass ? ds : ys;
        const int n = pass ? T * C : T * R, K = pass ? R : C;
        const double m = (double)(K + K / 32 + 2) * 0x1p-24, gamma = m / (1 - m);
        for (int i = 0; i < n; i++) {
            const double ratio = fabs((double)a[i] - (double)b[i]) / (2 * gamma * s[i] * (1 + 0x1p-7) + 0x1p-120);
            if (!(ratio <= worst)) worst = ratio == ratio ? ratio : INFINITY; /* NaN: infinite */
        }
    }
    free(buffer);
    return worst;
}

static void choose_kernel(void) {
    qk_cpu_info i;
    qk_cpu_detect(&i);
    const char *want = getenv("QLORA_BF16_KERNEL"); /* avx512, amx or auto (the default) */
    if (!qk_bf16_available()) {
        snprintf(chosen_reason, sizeof chosen_reason, "none: no AVX512_BF16");
        return;
    }
    if (want && strcmp(want, "avx512") && strcmp(want, "amx") && strcmp(want, "auto")) {
        snprintf(chosen_reason, sizeof chosen_reason, "avx512_bf16 (vdpbf16ps): QLORA_BF16_KERNEL=%.40s is none of avx512, amx, auto", want);
        return;
    }
    if (!i.amx_tile || !i.amx_bf16) {
        snprintf(chosen_reason, sizeof chosen_reason, "avx512_bf16 (vdpbf16ps): this CPU has no AMX-BF16");
        return;
    }
    if (!i.os_amx) {
        snprintf(chosen_reason, sizeof chosen_reason, "avx512_bf16 (vdpbf16ps): the OS does not enable AMX tile state (XCR0)");
        return;
    }
    if (syscall(SYS_arch_prctl, 0x1023 /* ARCH_REQ_XCOMP_PERM */, 18 /* XFEATURE_XTILEDATA */) != 0) {
        snprintf(chosen_reason, sizeof chosen_reason, "avx512_bf16 (vdpbf16ps): Linux refused AMX tile data (arch_prctl: %s)",
                 strerror(errno));
        return;
    }
    amx_granted = 1;
    if (want && strcmp(want, "avx512") == 0) {
        snprintf(chosen_reason, sizeof chosen_reason, "avx512_bf16 (vdpbf16ps): QLORA_BF16_KERNEL=avx512 (AMX available)");
        return;
    }
    const double worst = kernel_check(KERNEL_AMX);
    if (!(worst <= 1)) {
        snprintf(chosen_reason, sizeof chosen_reason,
                 "avx512_bf16 (vdpbf16ps): the AMX tiles disagreed with vdpbf16ps on the start-up check (%.3g × the bound)", worst);
        return;
    }
    chosen_kernel = KERNEL_AMX;
    snprintf(chosen_reason, sizeof chosen_reason, "amx (tdpbf16ps): AMX-BF16 tiles, within %.2g of the bound against vdpbf16ps at start-up",
             worst);
}

int qk_bf16_kernel(void) {
    pthread_once(&choose_once, choose_kernel);
    return qk_bf16_available() ? chosen_kernel : -1;
}

const char *qk_bf16_kernel_reason(void) {
    pthread_once(&choose_once, choose_kernel);
    return chosen_reason;
}

/* Whether kernel `kind` can run here (the choice made, so amx_granted is known). */
static int can_run(int kind) {
    pthread_once(&choose_once, choose_kernel);
    return qk_bf16_available() && kind >= KERNEL_AVX512 && kind <= KERNEL_SOFT_AMX && (kind != KERNEL_AMX || amx_granted);
}

int qk_bf16_set_thread_kernel(int kind) {
    if (kind != -1 && !can_run(kind)) return QK_GEMM_NO_BF16;
    kernel_override = kind;
    return 0;
}

double qk_bf16_kernel_check(int kind) { return can_run(kind) ? kernel_check(kind) : INFINITY; }

static int kernel_for_call(void) { return kernel_override >= 0 ? kernel_override : qk_bf16_kernel(); }

int qk_bf16_thread_kernel(void) { return qk_bf16_available() ? kernel_for_call() : -1; }

/* The entry points carry no target attribute: nothing past the CPUID check may use AVX-512. */
int qk_gemm_forward_bf16(const qk_matrix *w, const float *x, float *y, int64_t T, float beta, int threads) {
    if (!qk_bf16_available()) return QK_GEMM_NO_BF16;
    if (T <= 0) return 0;
    return run(kernel_for_call(), w, NULL, 0, x, w->cols, y, w->rows, T, w->rows, w->cols, beta, threads, 1, NULL, NULL);
}

int qk_gemm_backward_bf16(const qk_matrix *w, const float *dy, float *dx, int64_t T, float beta, int threads) {
    if (!qk_bf16_available()) return QK_GEMM_NO_BF16;
    if (T <= 0) return 0;
    return run(kernel_for_call(), w, NULL, 0, dy, w->rows, dx, w->cols, T, w->cols, w->rows, beta, threads, 0, NULL, NULL);
}

/* With a second output from the same rounded input (extra_out): LoRA's products that share
 * the frozen product's input. */
int qk_gemm_forward_bf16_with(const qk_matrix *w, const float *x, float *y, int64_t T, float beta, int threads, const float *e,
                              int64_t e_rows, float *y2, int64_t ldy2, float alpha) {
    if (!qk_bf16_available()) return QK_GEMM_NO_BF16;
    if (T <= 0) return 0;
    const extra_out x2 = {e, e_rows, w->cols, y2, ldy2, alpha};
    return run(kernel_for_call(), w, NULL, 0, x, w->cols, y, w->rows, T, w->rows, w->cols, beta, threads, 1, e_rows > 0 ? &x2 : NULL, NULL);
}

int qk_gemm_backward_bf16_with(const qk_matrix *w, const float *dy, float *dx, int64_t T, float beta, int threads, const float *e,
                               int64_t e_cols, float *dx2, int64_t lddx2, float alpha) {
    if (!qk_bf16_available()) return QK_GEMM_NO_BF16;
    if (T <= 0) return 0;
    const extra_out x2 = {e, e_cols, e_cols, dx2, lddx2, alpha};
    return run(kernel_for_call(), w, NULL, 0, dy, w->rows, dx, w->cols, T, w->cols, w->rows, beta, threads, 0, e_cols > 0 ? &x2 : NULL, NULL);
}

/* Dense W: the LM head of models whose embedding is fp32 (safetensors folders, F32/F16 GGUF
 * embeddings), rounded to bf16 as it is packed, exactly as a dequantized tile is. */
int qk_dense_forward_bf16(const float *w, int64_t rows, int64_t cols, const float *x, float *y, int64_t T, float beta, int threads) {
    if (!qk_bf16_available()) return QK_GEMM_NO_BF16;
    if (T <= 0) return 0;
    return run(kernel_for_call(), NULL, w, cols, x, cols, y, rows, T, rows, cols, beta, threads, 1, NULL, NULL);
}

int qk_dense_backward_bf16(const float *w, int64_t rows, int64_t cols, const float *dy, float *dx, int64_t T, float beta, int threads) {
    if (!qk_bf16_available()) return QK_GEMM_NO_BF16;
    if (T <= 0) return 0;
    return run(kernel_for_call(), NULL, w, cols, dy, rows, dx, cols, T, cols, rows, beta, threads, 0, NULL, NULL);
}

/* LoRA run with the frozen product in one pass (qk_gemm_*_bf16_lora in quant_kernels.h). */
int qk_gemm_forward_bf16_lora(const qk_matrix *w, const float *x, float *y, int64_t T, float beta, int threads, const float *lora_a,
                              const float *lora_b, int64_t r, float *u, int64_t ldu, int compute_u, float scale) {
    if (!qk_bf16_available()) return QK_GEMM_NO_BF16;
    if (T <= 0) return 0;
    const extra_out x2 = {lora_a, r, w->cols, u, ldu, 1.0f};
    const lowrank_add lr = {u, r, ldu, lora_b, scale};
    return run(kernel_for_call(), w, NULL, 0, x, w->cols, y, w->rows, T, w->rows, w->cols, beta, threads, 1, compute_u ? &x2 : NULL, r > 0 ? &lr : NULL);
}

int qk_gemm_backward_bf16_lora(const qk_matrix *w, const float *dy, float *dx, int64_t T, float beta, int threads, const float *lora_b,
                               const float *lora_a, int64_t r, float *g, int64_t ldg, float scale) {
    if (!qk_bf16_available()) return QK_GEMM_NO_BF16;
    if (T <= 0) return 0;
    const extra_out x2 = {lora_b, r, r, g, ldg, scale};
    const lowrank_add lr = {g, r, ldg, lora_a, 1.0f};
    return run(kernel_for_call(), w, NULL, 0, dy, w->rows, dx, w->cols, T, w->cols, w->rows, beta, threads, 0, r > 0 ? &x2 : NULL, r > 0 ? &lr : NULL);
}
