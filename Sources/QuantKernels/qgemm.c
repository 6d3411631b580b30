/* qgemm.c — the frozen path: products with a quantized W that dequantize W one tile at a
 * time into a per-thread fp32 buffer and multiply it with single-threaded sgemm, the tiles
 * shared by OpenMP threads. The full-precision W never exists whole: memory is the 4-bit W
 * plus one buffer of `tile_bytes` per thread.
 *
 *   forward   Y[T, out] = X[T, in] · Wᵀ + beta·Y   threads own disjoint rows of W (columns of Y)
 *   backward dX[T, in] = dY[T, out] · W + beta·dX   threads own disjoint column strips of W
 *                                                   (columns of dX): no reduction needed
 */
#include "blocks.h"
#include "reductions.h"
#include <stdlib.h>

/* The OpenMP runtime calls used here (libomp exports them; omp.h is not on clang 21's
 * include path with Debian's libomp 14). Static schedules only: clang 21 emits
 * __kmpc_dispatch_deinit for dynamic ones, which libomp 14 lacks. */
int omp_get_thread_num(void);
int omp_get_num_threads(void);
int omp_get_max_threads(void);

int qk_omp_max_threads(void) { return omp_get_max_threads(); }

/* Up to this many tokens (decoding), a forward dequantizes one row of W at a time into a
 * per-thread buffer that stays in L1 and takes its dot products with the T rows of X: no tile
 * of W in memory and no sgemm call for a vector. */
enum { GEMV_MAX_TOKENS = 4 };

/* Below this many tokens the tiles path is as fast (the products are bound by dequantization
 * and memory, not by packing); from it on, the micro-kernel (benches/, qlora bench gemm). */
enum { KERNEL_MIN_TOKENS = 16 };

static int use_kernel(const qk_matrix *w, int64_t T, const qk_gemm_options *opt) {
    const qk_gemm_path path = opt ? opt->path : QK_GEMM_AUTO;
    if (path == QK_GEMM_TILES || !qk_gemm_avx512_applies(w)) return 0;
    return path == QK_GEMM_KERNEL || T >= KERNEL_MIN_TOKENS;
}

/* One buffer per OpenMP thread, kept between calls (libomp keeps its threads). */
static __thread float *tls_buffer;
static __thread size_t tls_capacity;

static float *thread_buffer(size_t floats) {
    if (floats > tls_capacity) {
        free(tls_buffer);
        size_t bytes = (floats * sizeof(float) + 63) / 64 * 64;
        tls_buffer = aligned_alloc(64, bytes);
        tls_capacity = tls_buffer ? floats : 0;
    }
    return tls_buffer;
}

static int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }
static int64_t max64(int64_t a, int64_t b) { return a > b ? a : b; }

/* Boundary i of n near-equal parts of [0, len), rounded to a multiple of `align`. */
static int64_t split_at(int64_t len, int n, int i, int64_t align) {
    if (i >= n) return len;
    int64_t at = len * i / n / align * align;
    return min64(at, len);
}

static int64_t default_tile_bytes(int64_t T) {
    /* Small T is bound by dequantization and memory: keep the tile in L2. Large T is bound by
     * sgemm, which re-packs X for every tile: fewer, larger tiles. */
    return T < 64 ? (512 << 10) : (4 << 20);
}

/* Chunks of `len` no larger than `at_most`, equal in size up to `align`. */
static int64_t balanced(int64_t len, int64_t at_most, int64_t align) {
    if (at_most >= len) return len;
    const int64_t parts = (len + at_most - 1) / at_most;
    return min64(len, ((len + parts - 1) / parts + align - 1) / align * align);
}

/* Column chunks start on block boundaries where the layout allows it (ggml always;
 * bitsandbytes when cols is a multiple of the block size), so whole blocks take the SIMD path. */
static int64_t chunk_align(const qk_matrix *w) {
    return qk_is_ggml(w->format) || w->cols % w->block_size == 0 ? w->block_size : 16;
}

enum { MIN_K = 512 };

static int thread_count(int requested, int64_t units) {
    int n = requested > 0 ? requested : omp_get_max_threads();
    if (n > units) n = (int)max64(units, 1);
    return n;
}

/* Y[T, out] = X·Wᵀ + beta·Y for T ≤ GEMV_MAX_TOKENS: threads own disjoint rows of W. */
static int gemv_forward(const qk_matrix *w, const float *x, float *y, int64_t T, float beta, int threads) {
    const int64_t out = w->rows, in = w->cols;
    const int nt = thread_count(threads, (out + 63) / 64);
    const int simd = qk_isa_get() == QK_ISA_AVX512;
    int failed = 0;
#pragma omp parallel num_threads(nt)
    {
        const int t = omp_get_thread_num(), n = omp_get_num_threads();
        const int64_t r0 = split_at(out, n, t, 16), r1 = split_at(out, n, t + 1, 16);
        float *row = r1 > r0 ? thread_buffer((size_t)in) : NULL;
        if (r1 > r0 && !row) {
#pragma omp atomic write
            failed = 1;
        } else {
            for (int64_t r = r0; r < r1; r++) {
                qk_dequantize_range(w, r * in, in, row);
                for (int64_t k = 0; k < T; k++) {
                    const float d = simd ? qk_dot_avx512(row, x + k * in, in) : qk_dot(row, x + k * in, in);
                    float *o = y + k * out + r;
                    *o = beta == 0.0f ? d : d + beta * *o;
                }
            }
        }
    }
    return failed ? -1 : 0;
}

void qk_gemv_int8_quantize(const qk_matrix *w, const float *x, int64_t T, int8_t *xq, float *xds);
void qk_gemv_int8_rows(const qk_matrix *w, const int8_t *xq, const float *xds, int64_t T, int64_t r0, int64_t r1,
                       float *y, float beta);

int qk_gemm_forward_int8(const qk_matrix *w, const float *x, float *y, int64_t T, float beta, int threads) {
    const int64_t out = w->rows, in = w->cols;
    if (T <= 0 || out <= 0) return 0;
    if (!qk_int8_decode_applies(w)) return qk_gemm_forward(w, x, y, T, beta, threads, NULL);
    /* X quantized once, into the calling thread's buffer (the rows below take none of their own) */
    const int64_t nb = in / QK_GGML_BLOCK;
    float *xds = thread_buffer((size_t)(2 * T * nb + (T * in + 3) / 4));
    if (!xds) return QK_GEMM_NO_MEMORY;
    int8_t *xq = (int8_t *)(xds + 2 * T * nb);
    qk_gemv_int8_quantize(w, x, T, xq, xds);
    const int nt = thread_count(threads, (out + 63) / 64);
#pragma omp parallel num_threads(nt)
    {
        const int t = omp_get_thread_num(), n = omp_get_num_threads();
        const int64_t r0 = split_at(out, n, t, 16), r1 = split_at(out, n, t + 1, 16);
        if (r1 > r0) qk_gemv_int8_rows(w, xq, xds, T, r0, r1, y, beta);
    }
    return 0;
}

int qk_gemm_forward(const qk_matrix *w, const float *x, float *y, int64_t T, float beta, int threads,
                    const qk_gemm_options *opt) {
    const int64_t out = w->rows, in = w->cols;
    if (T <= 0 || out <= 0) return 0;
    if (T <= GEMV_MAX_TOKENS && (!opt || opt->path == QK_GEMM_AUTO)) return gemv_forward(w, x, y, T, beta, threads);
    if (use_kernel(w, T, opt)) return qk_gemm_forward_avx512(w, x, y, T, beta, threads);
    int failed = 0;
    const int64_t align = 16, k_align = chunk_align(w);
    const int64_t tile_bytes = opt && opt->tile_bytes > 0 ? opt->tile_bytes : default_tile_bytes(T);
    const int nt = thread_count(threads, (out + align - 1) / align);
    qk_blas_set_num_threads(1);
#pragma omp parallel num_threads(nt)
    {
        const int t = omp_get_thread_num(), n = omp_get_num_threads();
        const int64_t r0 = split_at(out, n, t, align), r1 = split_at(out, n, t + 1, align);
        if (r1 > r0) {
            /* Tiles of [rows, kc]: a thread's rows in as few groups as the buffer allows with
             * chunks of at least MIN_K columns, so X is re-packed by sgemm once per group, not
             * once per tile; Y accumulates over the column chunks. */
            int64_t rows = r1 - r0;
            if (rows * MIN_K * (int64_t)sizeof(float) > tile_bytes)
                rows = balanced(r1 - r0, max64(align, tile_bytes / (MIN_K * (int64_t)sizeof(float)) / align * align), align);
            const int64_t kc = balanced(in, max64(k_align, tile_bytes / (rows * (int64_t)sizeof(float)) / k_align * k_align), k_align);
            float *buf = thread_buffer((size_t)(rows * kc));
            if (!buf) {
#pragma omp atomic write
                failed = 1;
            }
            for (int64_t r = r0; r < r1 && buf; r += rows) {
                const int64_t m = min64(rows, r1 - r);
                for (int64_t k = 0; k < in; k += kc) {
                    const int64_t kw = min64(kc, in - k);
                    qk_dequantize_tile(w, r, r + m, k, k + kw, buf);
                    qk_sgemm(0, 1, T, m, kw, 1.0f, x + k, in, buf, kw, k == 0 ? beta : 1.0f, y + r, out);
                }
            }
        }
    }
    return failed ? -1 : 0;
}

int qk_gemm_backward(const qk_matrix *w, const float *dy, float *dx, int64_t T, float beta, int threads,
                     const qk_gemm_options *opt) {
    const int64_t out = w->rows, in = w->cols;
    if (T <= 0 || in <= 0) return 0;
    if (use_kernel(w, T, opt)) return qk_gemm_backward_avx512(w, dy, dx, T, beta, threads);
    int failed = 0;
    const int64_t align = chunk_align(w);
    const int64_t tile_bytes = opt && opt->tile_bytes > 0 ? opt->tile_bytes : default_tile_bytes(T);
    const int nt = thread_count(threads, (in + align - 1) / align);
    qk_blas_set_num_threads(1);
#pragma omp parallel num_threads(nt)
    {
        const int t = omp_get_thread_num(), n = omp_get_num_threads();
        const int64_t c0 = split_at(in, n, t, align), c1 = split_at(in, n, t + 1, align);
        const int64_t width = c1 - c0;
        if (width > 0) {
            const int64_t kc = min64(out, max64(16, tile_bytes / (width * (int64_t)sizeof(float))));
            float *buf = thread_buffer((size_t)(kc * width));
            if (!buf) {
#pragma omp atomic write
                failed = 1;
            }
            for (int64_t k = 0; k < out && buf; k += kc) {
                const int64_t m = min64(kc, out - k);
                qk_dequantize_tile(w, k, k + m, c0, c1, buf);
                qk_sgemm(0, 0, T, width, m, 1.0f, dy + k, out, buf, width, k == 0 ? beta : 1.0f, dx + c0, in);
            }
        }
    }
    return failed ? -1 : 0;
}
