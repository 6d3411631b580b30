/* quant_kernels.h — the C kernels of qlora: 4-bit and 8-bit block formats, their
 * quantizers and dequantizers (scalar reference, AVX2, AVX-512), CPU detection, the
 * run-time loading of OpenBLAS, and the OpenMP "dequantize a tile, then sgemm" drivers.
 *
 * Legend: W is a matrix [rows, cols] = [out, in], stored row-major and quantized over its
 * flattened elements (element e = r*cols + c). T tokens.
 *
 * Formats
 *  - NF4 / FP4 (bitsandbytes): codes packed two per byte, the FIRST element of a pair in the
 *    HIGH nibble; one absmax per `block_size` consecutive elements of the flattened tensor
 *    (the last block may be partial); value = code[q] * absmax. With double quantization the
 *    absmax are stored as 8-bit codes of a dynamic map, one fp32 scale per 256 of them plus
 *    one fp32 offset: absmax[b] = nested_code[absmax_q[b]] * nested_absmax[b / 256] + offset.
 *  - Q4_0, Q4_1, Q5_0, Q5_1, Q8_0 (ggml): blocks of 32 elements that never straddle rows
 *    (cols must be a multiple of 32), laid out exactly as ggml's block_q4_0 … block_q8_0.
 *  - Q2_K, Q3_K, Q4_K, Q5_K, Q6_K (ggml's K-quants): super-blocks of 256 elements (cols must be
 *    a multiple of 256), laid out exactly as ggml's block_q2_K … block_q6_K; every 16
 *    consecutive elements of a super-block (a sub-group) share one scale (and one min).
 *  Every ggml format is used as the GGUF file stores it and dequantized bit for bit as ggml's
 *  dequantize_row_* (built without FMA contraction).
 */
#ifndef QUANT_KERNELS_H
#define QUANT_KERNELS_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef enum {
    QK_FORMAT_NF4 = 0,
    QK_FORMAT_FP4 = 1,
    QK_FORMAT_Q4_0 = 2,
    QK_FORMAT_Q4_1 = 3,
    QK_FORMAT_Q8_0 = 4,
    QK_FORMAT_Q5_0 = 5,
    QK_FORMAT_Q5_1 = 6,
    QK_FORMAT_Q2_K = 7,
    QK_FORMAT_Q3_K = 8,
    QK_FORMAT_Q4_K = 9,
    QK_FORMAT_Q5_K = 10,
    QK_FORMAT_Q6_K = 11,
} qk_format;

/* ggml block sizes (ggml-common.h: QK4_0 … QK8_0 = 32, QK_K = 256) and bytes per block. */
enum { QK_GGML_BLOCK = 32, QK_K_BLOCK = 256 };
enum { QK_Q4_0_BYTES = 18, QK_Q4_1_BYTES = 20, QK_Q8_0_BYTES = 34, QK_Q5_0_BYTES = 22, QK_Q5_1_BYTES = 24 };
enum { QK_Q2_K_BYTES = 84, QK_Q3_K_BYTES = 110, QK_Q4_K_BYTES = 144, QK_Q5_K_BYTES = 176, QK_Q6_K_BYTES = 210 };
/* bitsandbytes' block size for the nested (double) quantization of absmax. */
enum { QK_NESTED_BLOCK = 256 };

/* The 16-entry codebooks of bitsandbytes (functional.py, get_4bit_type) and the 256-entry
 * signed dynamic map (functional.py, create_dynamic_map(signed=True)). */
extern const float qk_nf4_code[16];
extern const float qk_fp4_code[16];
extern const float qk_dynamic_map[256];
/* create_dynamic_map(signed=False): AdamW8bit's map of the second moment. */
extern const float qk_dynamic_map_unsigned[256];
/* The two maps as pointers (Swift imports a C array as a tuple). */
const float *qk_dynamic_map_ptr(void);
const float *qk_dynamic_map_unsigned_ptr(void);

/* A quantized matrix as the kernels see it. Pointers are borrowed. */
typedef struct {
    qk_format format;
    int64_t rows;               /* out */
    int64_t cols;               /* in  */
    int64_t block_size;         /* 32 for ggml formats, 256 for K-quants */
    const uint8_t *data;        /* packed codes (bnb) or ggml blocks */
    /* bitsandbytes formats only: */
    const float *code;          /* 16 values */
    const float *absmax;        /* per block fp32, or NULL when double-quantized */
    const uint8_t *absmax_q;    /* per block 8-bit codes (double quantization) */
    const float *nested_absmax; /* one per QK_NESTED_BLOCK blocks */
    const float *nested_code;   /* 256 values */
    float offset;
} qk_matrix;

/* ---- SIMD levels ------------------------------------------------------------------- */
typedef enum { QK_ISA_SCALAR = 0, QK_ISA_AVX2 = 1, QK_ISA_AVX512 = 2 } qk_isa;

typedef struct {
    char vendor[13];
    char brand[49];
    int family, model;
    int sse3, avx, avx2, fma, f16c;
    int avx512f, avx512bw, avx512vl, avx512_bf16, avx512_vbmi;
    int amx_tile, amx_bf16;
    int os_avx, os_avx512, os_amx; /* the OS saves the register state (XCR0) */
    int avx512_vnni;
} qk_cpu_info;

void qk_cpu_detect(qk_cpu_info *info);
/* The best level this CPU and OS support. */
qk_isa qk_isa_best(void);
/* The level the dequantizers and the attention use now (defaults to qk_isa_best()). */
qk_isa qk_isa_get(void);
/* Returns 0, or -1 if the CPU lacks that level (the level is then unchanged). */
int qk_isa_set(qk_isa isa);

/* ---- fp16 -------------------------------------------------------------------------- */
float qk_fp16_to_fp32(uint16_t h);
uint16_t qk_fp32_to_fp16(float f); /* round to nearest even */
void qk_fp32_to_fp16_row(const float *x, uint16_t *y, int64_t n); /* n values, as qk_fp32_to_fp16 each */

/* ---- quantizers (reference implementations; deterministic) -------------------------- */
/* bitsandbytes 4-bit: n elements, blocks of block_size. Writes (n+1)/2 bytes of codes and
 * ceil(n/block_size) absmax. `code` is the 16-value codebook. */
void qk_quantize_4bit_ref(const float *x, int64_t n, int64_t block_size, const float *code,
                          uint8_t *packed, float *absmax);
/* bitsandbytes' 8-bit blockwise quantization with the dynamic map, as used for the double
 * quantization of absmax: values v[i] - offset are quantized in blocks of QK_NESTED_BLOCK.
 * Writes n codes and ceil(n/256) block absmax. */
void qk_quantize_nested_ref(const float *v, int64_t n, float offset, const float *nested_code,
                            uint8_t *codes, float *nested_absmax);
/* The same in two parts, for callers that quantize often with one map (8-bit AdamW): the
 * 65536-entry table of a 256-value sorted map (lut: 65536 bytes), then the quantization. */
void qk_blockwise8_table(const float *code, uint8_t *lut);
void qk_quantize_blockwise8(const float *v, int64_t n, float offset, const uint8_t *lut, uint8_t *codes, float *absmax);
/* The mean of n floats exactly as torch's CPU mean computes it (the double-quantization
 * offset is absmax.mean() in bitsandbytes). */
float qk_torch_mean_f32(const float *x, int64_t n);
/* ggml: k must be a multiple of 32; writes k/32 blocks. */
void qk_quantize_row_q4_0_ref(const float *x, uint8_t *blocks, int64_t k);
void qk_quantize_row_q4_1_ref(const float *x, uint8_t *blocks, int64_t k);
void qk_quantize_row_q8_0_ref(const float *x, uint8_t *blocks, int64_t k);

/* ---- dequantizers -------------------------------------------------------------------- */
/* Absmax of block b of a bitsandbytes matrix (plain or double-quantized). */
float qk_block_absmax(const qk_matrix *w, int64_t b);
/* Writes the `count` elements of the flattened matrix starting at element `start`
 * into y, using the current SIMD level for whole aligned blocks. */
void qk_dequantize_range(const qk_matrix *w, int64_t start, int64_t count, float *y);
/* Same, with an explicit level (for tests and benchmarks). */
void qk_dequantize_range_isa(const qk_matrix *w, int64_t start, int64_t count, float *y, qk_isa isa);
/* Rows [r0, r1) and columns [c0, c1) into y[(r1-r0), (c1-c0)], row-major. */
void qk_dequantize_tile(const qk_matrix *w, int64_t r0, int64_t r1, int64_t c0, int64_t c1, float *y);

/* ---- OpenBLAS, loaded at run time ---------------------------------------------------- */
/* Sets OPENBLAS_CORETYPE to `coretype` (unless NULL or empty), then loads the library.
 * Returns 0, or -1 with a message in err. Idempotent: later calls return the first result. */
int qk_blas_load(const char *coretype, char *err, size_t errlen);
const char *qk_blas_corename(void);   /* what OpenBLAS says it runs, or "" */
const char *qk_blas_config(void);     /* openblas_get_config(), or "" */
const char *qk_blas_path(void);       /* the file that was loaded */
int qk_blas_num_threads(void);
void qk_blas_set_num_threads(int n);

/* LAPACK from the loaded OpenBLAS, column-major Float64; they return LAPACK's info (0: done, >0:
 * no convergence), or one of these. */
enum { QK_LAPACK_MISSING = -1000, QK_LAPACK_NO_MEMORY = -1001, QK_LAPACK_BAD_ARGUMENT = -1002 };
/* Thin SVD (dgesdd, jobz 'S') of a [m, n] (destroyed): s [k], u [m, k], vt [k, n], k = min(m, n). */
int qk_lapack_dgesdd(int m, int n, double *a, double *s, double *u, double *vt);
/* Householder QR (dgeqrf, dorgqr) of a [m, n] (destroyed): q [m, r] Q's first r columns, rtop
 * [r, n] R's first r rows, r ≤ min(m, n). */
int qk_lapack_qr(int m, int n, int r, double *a, double *q, double *rtop);
/* C[M,N] = alpha * op(A) * op(B) + beta * C, row-major; trans_* is 0 or 1. */
void qk_sgemm(int trans_a, int trans_b, int64_t M, int64_t N, int64_t K, float alpha,
              const float *A, int64_t lda, const float *B, int64_t ldb, float beta,
              float *C, int64_t ldc);

/* The same product split over OpenMP threads (rows of C, or its columns when it is wider than
 * tall, in multiples of 16), each slice one single-threaded OpenBLAS call: one thread pool for
 * everything, so OpenBLAS's own threads never compete with the OpenMP ones on the cores. Each
 * element of C comes from one call over the whole K. threads <= 0: OpenMP's default. */
void qk_sgemm_omp(int trans_a, int trans_b, int64_t M, int64_t N, int64_t K, float alpha,
                  const float *A, int64_t lda, const float *B, int64_t ldb, float beta,
                  float *C, int64_t ldc, int threads);

/* Gives freed heap pages back to the system (glibc's malloc_trim over every arena). */
void qk_release_free_memory(void);

/* ---- OpenMP ------------------------------------------------------------------------ */
int qk_omp_max_threads(void);

/* ---- the quantized GEMMs ------------------------------------------------------------- */
/* Tunables; 0 picks the default. */
typedef enum {
    QK_GEMM_AUTO = 0,  /* the AVX-512 micro-kernel where it applies and T is large enough, else tiles */
    QK_GEMM_TILES = 1, /* dequantize tiles into a buffer, single-threaded sgemm per OpenMP thread */
    QK_GEMM_KERNEL = 2 /* our AVX-512 micro-kernel, W dequantized into its packed panels */
} qk_gemm_path;

typedef struct {
    int64_t tile_bytes;       /* tiles path: per-thread buffer of dequantized weights */
    qk_gemm_path path;
} qk_gemm_options;

/* Y[T, out] = X[T, in] · Wᵀ + beta · Y. Returns 0, or -1 if a tile buffer could not be
 * allocated. OpenBLAS must be loaded (qk_blas_load). */
int qk_gemm_forward(const qk_matrix *w, const float *x, float *y, int64_t T, float beta,
                    int threads, const qk_gemm_options *opt);
/* dX[T, in] = dY[T, out] · W + beta · dX. Returns as qk_gemm_forward. */
int qk_gemm_backward(const qk_matrix *w, const float *dy, float *dx, int64_t T, float beta,
                     int threads, const qk_gemm_options *opt);

/* ---- decoding with 8-bit activations (AVX512_VNNI) ---------------------------------- */
/* 1 if this CPU and OS run the int8 products (AVX-512 F/BW/VL with AVX512_VNNI and F16C) and
 * the AVX-512 level is in use (qk_isa_get), else 0. */
int qk_int8_available(void);
/* 1 if qk_gemm_forward_int8 takes integer dot products for W here: Q4_0, Q4_1, Q5_0, Q5_1,
 * Q8_0, Q4_K, Q5_K or Q6_K W and qk_int8_available(); else it runs qk_gemm_forward's fp32 path. */
int qk_int8_decode_applies(const qk_matrix *w);
/* Y[T, out] = X · Wᵀ + beta·Y with each row of X quantized per block of 32 to int8 (d = amax/127,
 * q = round(x/d), llama.cpp's Q8_0 with d in fp32) and exact integer dot products with W's
 * codes, scaled and summed in fp32 (qgemv_int8_avx512.c). For decoding: every T works, but the
 * product reads W once per 8 rows of X. Returns as qk_gemm_forward. */
int qk_gemm_forward_int8(const qk_matrix *w, const float *x, float *y, int64_t T, float beta, int threads);
/* The quantization of one row of X (n a multiple of 32) the product above uses: q [n] (in
 * element order when pair_layout is 0), ds [2·n/32]: d and s = d·Σq of each block, side by
 * side; a block with a NaN or ±Inf gets d = s = NaN and q = 0. */
void qk_quantize_activations_q8(const float *x, int64_t n, int pair_layout, int8_t *q, float *ds);

/* ---- the quantized GEMMs in bf16 (AVX512_BF16) --------------------------------------- */
/* What the GEMMs return besides 0. */
enum { QK_GEMM_NO_MEMORY = -1, QK_GEMM_NO_BF16 = -2 };

/* 1 if this CPU and OS run the bf16 GEMMs (AVX-512 F/BW/VL with AVX512_BF16), else 0. */
int qk_bf16_available(void);
/* As qk_gemm_forward / qk_gemm_backward, with X (dY) and the dequantized W rounded to bf16
 * (nearest even; NaN stays NaN; fp32 subnormals become ±0) and fp32 accumulation. Any shape
 * and format the fp32 GEMMs take. Return 0, QK_GEMM_NO_MEMORY, or QK_GEMM_NO_BF16 (nothing
 * written) where qk_bf16_available() is 0. threads <= 0: OpenMP's default. */
int qk_gemm_forward_bf16(const qk_matrix *w, const float *x, float *y, int64_t T, float beta, int threads);
int qk_gemm_backward_bf16(const qk_matrix *w, const float *dy, float *dx, int64_t T, float beta, int threads);
/* As qk_gemm_forward_bf16 / qk_gemm_backward_bf16, and in the same pass, from the same rounded
 * X (dY), a second output from a dense fp32 E, rounded to bf16 as it is packed:
 *   forward   Y2[T, e_rows] (ldy2) = alpha · X · Eᵀ,   E [e_rows, w->cols] row-major
 *   backward dX2[T, e_cols] (lddx2) = alpha · dY · E,  E [w->rows, e_cols] row-major
 * (LoRA's x·Aᵀ beside the frozen forward, scale·dY·B beside its backward). Y2 is written, not
 * accumulated; results equal the two products run apart (qk_dense_*_bf16) bit for bit. */
int qk_gemm_forward_bf16_with(const qk_matrix *w, const float *x, float *y, int64_t T, float beta, int threads, const float *e,
                              int64_t e_rows, float *y2, int64_t ldy2, float alpha);
int qk_gemm_backward_bf16_with(const qk_matrix *w, const float *dy, float *dx, int64_t T, float beta, int threads, const float *e,
                               int64_t e_cols, float *dx2, int64_t lddx2, float alpha);
/* A LoRA adapter (A [r, w->cols], B [w->rows, r], row-major fp32) run in the frozen bf16
 * product's pass, its low-rank term added in the same accumulators so the output is written once:
 *   forward   u[T, r] (ldu) = X · Aᵀ                     (when compute_u; else u is given)
 *             Y = X · Wᵀ + round(scale·u) · round(B)ᵀ + beta·Y
 *   backward  g[T, r] (ldg) = scale · dY · B
 *             dX = dY · W + round(g) · round(A) + beta·dX
 * u (g) equals qk_gemm_*_bf16_with's second output bit for bit; round() is to bf16, nearest even.
 * r = 0: the plain product. */
int qk_gemm_forward_bf16_lora(const qk_matrix *w, const float *x, float *y, int64_t T, float beta, int threads, const float *lora_a,
                              const float *lora_b, int64_t r, float *u, int64_t ldu, int compute_u, float scale);
int qk_gemm_backward_bf16_lora(const qk_matrix *w, const float *dy, float *dx, int64_t T, float beta, int threads, const float *lora_b,
                               const float *lora_a, int64_t r, float *g, int64_t ldg, float scale);
/* The same for a dense fp32 W [rows, cols] (row-major), rounded to bf16 as it is packed:
 * Y[T, rows] = X[T, cols] · Wᵀ + beta·Y, and dX[T, cols] = dY[T, rows] · W + beta·dX. */
int qk_dense_forward_bf16(const float *w, int64_t rows, int64_t cols, const float *x, float *y, int64_t T, float beta, int threads);
int qk_dense_backward_bf16(const float *w, int64_t rows, int64_t cols, const float *dy, float *dx, int64_t T, float beta, int threads);
/* Which micro-kernel the bf16 GEMMs run: 0 vdpbf16ps (AVX512_BF16), 1 AMX-BF16 tiles (where
 * the CPU has them, Linux grants the tile state and a start-up product agrees with vdpbf16ps
 * within the accumulation bound; QLORA_BF16_KERNEL=avx512 keeps vdpbf16ps, =amx or =auto is the
 * default, any other value keeps vdpbf16ps and says so), -1 none. Chosen
 * once per process; the reason names what decided it. */
int qk_bf16_kernel(void);
const char *qk_bf16_kernel_reason(void);
/* For tests and benchmarks: the kernel this thread's bf16 GEMMs run from now on — 0 vdpbf16ps,
 * 1 AMX (only where granted), 2 a software model of the AMX tiles (the AMX path's packing and
 * layout on any AVX512_BF16 CPU; slow), -1 back to qk_bf16_kernel(). 0 or QK_GEMM_NO_BF16. */
int qk_bf16_set_thread_kernel(int kind);
/* The start-up check for kernel `kind`: the largest difference from vdpbf16ps on a fixed
 * product over its accumulation bound (≤ 1: they agree); INFINITY where it cannot run. */
double qk_bf16_kernel_check(int kind);
/* The kernel this thread's bf16 GEMMs run now (the override, else qk_bf16_kernel()). */
int qk_bf16_thread_kernel(void);
/* The scalar references: the same rounding of the inputs, fp64 sums, one thread; any CPU.
 * Return 0 or QK_GEMM_NO_MEMORY. */
int qk_gemm_forward_bf16_ref(const qk_matrix *w, const float *x, float *y, int64_t T, float beta);
int qk_gemm_backward_bf16_ref(const qk_matrix *w, const float *dy, float *dx, int64_t T, float beta);

#ifdef __cplusplus
}
#endif
#endif
