/* blas.c — OpenBLAS, loaded at run time rather than linked, because its kernel choice is
 * fixed when the library initializes: OPENBLAS_CORETYPE must be set before that, which a
 * link-time dependency makes impossible for a library or a test runner. Debian's 0.3.21
 * (libopenblas-dev, pthread flavour) picks a generic SSE3 core on some AVX-512 CPUs; the
 * caller chooses the core from CPUID and passes it here. */
#include "quant_kernels.h"
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum { CblasRowMajor = 101, CblasNoTrans = 111, CblasTrans = 112 };

typedef void (*sgemm_fn)(int, int, int, int, int, int, float, const float *, int, const float *, int,
                         float, float *, int);
static sgemm_fn p_sgemm;
static char *(*p_corename)(void);
static char *(*p_config)(void);
static int (*p_get_threads)(void);
static void (*p_set_threads)(int);
/* LAPACK, which OpenBLAS carries (Fortran calling convention: pointers, hidden string lengths). */
typedef void (*dgesdd_fn)(const char *, const int *, const int *, double *, const int *, double *, double *, const int *,
                          double *, const int *, double *, const int *, int *, int *, size_t);
typedef void (*dgeqrf_fn)(const int *, const int *, double *, const int *, double *, double *, const int *, int *);
typedef void (*dorgqr_fn)(const int *, const int *, const int *, double *, const int *, const double *, double *, const int *,
                          int *);
static dgesdd_fn p_dgesdd;
static dgeqrf_fn p_dgeqrf;
static dorgqr_fn p_dorgqr;
static int load_result = 1; /* 1: not tried */
static char load_error[512];
static char loaded_path[256];
static int current_threads;

static const char *candidates[] = {
    "libopenblas.so.0",
    "/usr/lib/x86_64-linux-gnu/openblas-pthread/libopenblas.so.0",
    "libopenblas.so",
};

int qk_blas_load(const char *coretype, char *err, size_t errlen) {
    if (load_result == 1) {
        if (coretype && *coretype) setenv("OPENBLAS_CORETYPE", coretype, 1);
        void *h = NULL;
        for (size_t i = 0; i < sizeof candidates / sizeof *candidates && !h; i++) {
            h = dlopen(candidates[i], RTLD_NOW | RTLD_LOCAL);
            if (h) snprintf(loaded_path, sizeof loaded_path, "%s", candidates[i]);
        }
        if (!h) {
            snprintf(load_error, sizeof load_error,
                     "cannot load OpenBLAS (%s)\n---> HINT: apt-get install libopenblas-dev", dlerror());
            load_result = -1;
        } else {
            p_sgemm = (sgemm_fn)dlsym(h, "cblas_sgemm");
            p_corename = (char *(*)(void))dlsym(h, "openblas_get_corename");
            p_config = (char *(*)(void))dlsym(h, "openblas_get_config");
            p_get_threads = (int (*)(void))dlsym(h, "openblas_get_num_threads");
            p_set_threads = (void (*)(int))dlsym(h, "openblas_set_num_threads");
            p_dgesdd = (dgesdd_fn)dlsym(h, "dgesdd_");
            p_dgeqrf = (dgeqrf_fn)dlsym(h, "dgeqrf_");
            p_dorgqr = (dorgqr_fn)dlsym(h, "dorgqr_");
            if (!p_sgemm || !p_set_threads || !p_get_threads) {
                snprintf(load_error, sizeof load_error, "%s lacks cblas_sgemm or openblas_set_num_threads", loaded_path);
                load_result = -1;
            } else {
                current_threads = p_get_threads();
                load_result = 0;
            }
        }
    }
    if (load_result != 0 && err && errlen) snprintf(err, errlen, "%s", load_error);
    return load_result;
}

const char *qk_blas_corename(void) { return p_corename ? p_corename() : ""; }
const char *qk_blas_config(void) { return p_config ? p_config() : ""; }
const char *qk_blas_path(void) { return loaded_path; }
int qk_blas_num_threads(void) { return p_get_threads ? p_get_threads() : 0; }

void qk_blas_set_num_threads(int n) {
    /* openblas_set_num_threads takes a lock and may touch its thread pool: call it only on a
     * change, never from inside a parallel region. */
    if (p_set_threads && n != current_threads) {
        p_set_threads(n);
        current_threads = n;
    }
}

void qk_sgemm(int trans_a, int trans_b, int64_t M, int64_t N, int64_t K, float alpha, const float *A,
              int64_t lda, const float *B, int64_t ldb, float beta, float *C, int64_t ldc) {
    p_sgemm(CblasRowMajor, trans_a ? CblasTrans : CblasNoTrans, trans_b ? CblasTrans : CblasNoTrans, (int)M,
            (int)N, (int)K, alpha, A, (int)lda, B, (int)ldb, beta, C, (int)ldc);
}

/* The OpenMP runtime calls used here (omp.h is not on the include path; see qgemm.c). */
int omp_get_thread_num(void);
int omp_get_num_threads(void);
int omp_get_max_threads(void);

void qk_sgemm_omp(int trans_a, int trans_b, int64_t M, int64_t N, int64_t K, float alpha, const float *A,
                  int64_t lda, const float *B, int64_t ldb, float beta, float *C, int64_t ldc, int threads) {
    int nt = threads > 0 ? threads : omp_get_max_threads();
    const int by_rows = M >= N;
    const int64_t extent = by_rows ? M : N, align = 16;
    if ((double)M * (double)N * (double)K < 32.0 * 32 * 32 || extent < 2 * align) nt = 1;
    if (nt > extent / align) nt = (int)(extent / align);
    if (nt < 1) nt = 1;
    qk_blas_set_num_threads(1);
    if (nt == 1) {
        qk_sgemm(trans_a, trans_b, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
        return;
    }
#pragma omp parallel num_threads(nt)
    {
        const int t = omp_get_thread_num(), n = omp_get_num_threads();
        const int64_t blocks = (extent + align - 1) / align;
        const int64_t s0 = blocks * t / n * align, s1 = t + 1 == n ? extent : blocks * (t + 1) / n * align;
        if (s1 > s0) {
            if (by_rows) {
                /* rows s0..s1 of C: rows of op(A) — A + s0·lda, or columns s0.. of a transposed A */
                const float *a = trans_a ? A + s0 : A + s0 * lda;
                qk_sgemm(trans_a, trans_b, s1 - s0, N, K, alpha, a, lda, B, ldb, beta, C + s0 * ldc, ldc);
            } else {
                /* columns s0..s1 of C: columns of op(B) — B + s0, or rows s0.. of a transposed B */
                const float *b = trans_b ? B + s0 * ldb : B + s0;
                qk_sgemm(trans_a, trans_b, M, s1 - s0, K, alpha, A, lda, b, ldb, beta, C + s0, ldc);
            }
        }
    }
}

#include <malloc.h>
/* Returns freed heap pages of every malloc arena to the system (glibc). */
void qk_release_free_memory(void) { malloc_trim(0); }

/* LAPACK through OpenBLAS, column-major Float64. Return LAPACK's info, or QK_LAPACK_MISSING when
 * the loaded library has no LAPACK. */

int qk_lapack_dgesdd(int m, int n, double *a, double *s, double *u, double *vt) {
    if (!p_dgesdd) return QK_LAPACK_MISSING;
    const int k = m < n ? m : n, lda = m > 1 ? m : 1, ldu = m > 1 ? m : 1, ldvt = k > 1 ? k : 1;
    int info = 0, lwork = -1;
    double query = 0;
    int *iwork = malloc(sizeof(int) * 8 * (size_t)(k > 0 ? k : 1));
    if (!iwork) return QK_LAPACK_NO_MEMORY;
    p_dgesdd("S", &m, &n, a, &lda, s, u, &ldu, vt, &ldvt, &query, &lwork, iwork, &info, 1);
    if (info == 0) {
        lwork = (int)query + 1;
        double *work = malloc(sizeof(double) * (size_t)lwork);
        if (!work) {
            free(iwork);
            return QK_LAPACK_NO_MEMORY;
        }
        p_dgesdd("S", &m, &n, a, &lda, s, u, &ldu, vt, &ldvt, work, &lwork, iwork, &info, 1);
        free(work);
    }
    free(iwork);
    return info;
}

int qk_lapack_qr(int m, int n, int r, double *a, double *q, double *rtop) {
    if (!p_dgeqrf || !p_dorgqr) return QK_LAPACK_MISSING;
    const int k = m < n ? m : n, lda = m > 1 ? m : 1;
    if (r > k) return QK_LAPACK_BAD_ARGUMENT;
    double *tau = malloc(sizeof(double) * (size_t)(k > 0 ? k : 1));
    if (!tau) return QK_LAPACK_NO_MEMORY;
    int info = 0, lwork = -1;
    double query = 0;
    p_dgeqrf(&m, &n, a, &lda, tau, &query, &lwork, &info);
    double *work = NULL;
    if (info == 0) {
        lwork = (int)query + 1;
        work = malloc(sizeof(double) * (size_t)lwork);
        if (!work) info = QK_LAPACK_NO_MEMORY;
        else p_dgeqrf(&m, &n, a, &lda, tau, work, &lwork, &info);
    }
    if (info == 0) {
        /* R's first r rows (upper triangular part), before dorgqr overwrites the reflectors. */
        for (int j = 0; j < n; j++)
            for (int i = 0; i < r; i++) rtop[(size_t)j * r + i] = i <= j ? a[(size_t)j * lda + i] : 0;
        /* Q's first r columns: the first r reflectors (the later ones leave e_1..e_r as they are). */
        for (int j = 0; j < r; j++)
            for (int i = 0; i < m; i++) q[(size_t)j * m + i] = a[(size_t)j * lda + i];
        int lw2 = -1;
        p_dorgqr(&m, &r, &r, q, &lda, tau, &query, &lw2, &info);
        if (info == 0) {
            lw2 = (int)query + 1;
            if (lw2 > lwork) {
                free(work);
                work = malloc(sizeof(double) * (size_t)lw2);
                lwork = lw2;
            }
            if (!work) info = QK_LAPACK_NO_MEMORY;
            else p_dorgqr(&m, &r, &r, q, &lda, tau, work, &lwork, &info);
        }
    }
    free(work);
    free(tau);
    return info;
}
