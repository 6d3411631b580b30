/* qgemm_bf16_amx.h — the bf16 GEMMs' micro-kernel on AMX tiles (Sapphire Rapids and later),
 * and a software model of the same tiles that runs anywhere AVX-512 does. Internal: included
 * by qgemm_bf16_avx512.c, whose run() packs the panels and calls these kernels.
 *
 * tdpbf16ps C[16 × 16 fp32] += A[16 rows × 16 pairs] · B[16 pair rows × 16 columns], tiles
 * of 16 rows × 64 bytes. The B panel of the vdpbf16ps kernel is already the B tile's layout
 * (pair row q of NR words: (B[2q][j], B[2q+1][j]) per column j, low half first), loaded 16
 * columns at a time with a stride of NR words. A is packed by rows for the tiles instead of
 * by pair rows: block ib's panel is MA rows of kps words, word q of row i the pair (A[m][2q],
 * A[m][2q+1]) (rows past M and the half past an odd K zero), so a tile load takes 16 rows ×
 * 16 pairs with a stride of kps words. The micro-tile is 16 × 48 (three C tiles, one A tile,
 * three B tiles: 7 of the 8); pairs past the last full 16 are copied to zero-padded buffers
 * (the tile shape is fixed by one ldtilecfg per thread and call, not per product).
 *
 * The model: tiles as arrays and tdpbf16ps as the SDM defines it (per pair, the even product
 * then the odd one added to the fp32 sum, nearest even; bf16 subnormal inputs and fp32
 * subnormal results are zero). It runs the kernel's whole data path — packing, strides, the
 * remainder — on CPUs without AMX, so the tests check the layout everywhere; the hardware
 * checks itself against the vdpbf16ps kernel before it is used (qk_bf16_kernel). */
#ifndef QK_QGEMM_BF16_AMX_H
#define QK_QGEMM_BF16_AMX_H

#include <string.h>

#define AMX __attribute__((target("avx512f,avx512bf16,avx512bw,avx512vl,amx-tile,amx-bf16")))

enum { MA = 16 }; /* rows of an A tile, and of a row block of the A panel */

typedef struct {
    uint8_t palette, start_row, reserved[14];
    uint16_t colsb[16];
    uint8_t rows[16];
} tile_config;

/* Tiles 0-6: 16 rows of 64 bytes (0-2 C, 3 A, 4-6 B). */
AMX static void amx_configure(void) {
    _Alignas(64) tile_config cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.palette = 1;
    for (int t = 0; t < 7; t++) {
        cfg.rows[t] = 16;
        cfg.colsb[t] = 64;
    }
    _tile_loadconfig(&cfg);
}

AMX static void amx_release(void) { _tile_release(); }

/* ---- the software tiles ------------------------------------------------------------------ */
typedef struct {
    uint32_t w[16][16];
} soft_tile;
static __thread soft_tile soft_tiles[8];

static inline float soft_flush(float f) { /* subnormals to ±0 */
    uint32_t bits;
    memcpy(&bits, &f, 4);
    if ((bits & 0x7F800000u) == 0) bits &= 0x80000000u;
    memcpy(&f, &bits, 4);
    return f;
}

static inline float soft_bf16(uint32_t h) { /* bf16 (low 16 bits of h) to fp32; subnormals are 0 */
    const uint32_t bits = (h & 0xFFFF) << 16;
    float f;
    memcpy(&f, &bits, 4);
    return soft_flush(f);
}

static void soft_load(int t, const void *base, int64_t stride) {
    for (int r = 0; r < 16; r++) memcpy(soft_tiles[t].w[r], (const char *)base + r * stride, 64);
}

static void soft_store(int t, void *base, int64_t stride) {
    for (int r = 0; r < 16; r++) memcpy((char *)base + r * stride, soft_tiles[t].w[r], 64);
}

static void soft_zero(int t) { memset(&soft_tiles[t], 0, sizeof(soft_tile)); }

static void soft_dpbf16ps(int c, int a, int b) {
    for (int m = 0; m < 16; m++)
        for (int n = 0; n < 16; n++) {
            float s;
            memcpy(&s, &soft_tiles[c].w[m][n], 4);
            for (int k = 0; k < 16; k++) {
                const uint32_t x = soft_tiles[a].w[m][k], y = soft_tiles[b].w[k][n];
                const float even = soft_bf16(x) * soft_bf16(y); /* exact: 8-bit significands */
                s = soft_flush(s + even);
                const float odd = soft_bf16(x >> 16) * soft_bf16(y >> 16);
                s = soft_flush(s + odd);
            }
            memcpy(&soft_tiles[c].w[m][n], &s, 4);
        }
}

/* ---- the micro-kernel ---------------------------------------------------------------------- */
/* C[mv, nvalid] (ldc) = alpha · A (16 rows, row stride lda words) · B (kp pair rows of NR
 * words), stored per mode as the vdpbf16ps kernel stores (STORE, ADD, SCALE_ADD). `hw`: the
 * tiles themselves (amx_configure() ran on this thread) or their software model. */
AMX ALWAYS_INLINE static inline void amx_kernel_body(int hw, int64_t kp, const uint32_t *restrict a, int64_t lda,
                                                     const uint32_t *restrict b, float *c, int64_t ldc, int mv, int nvalid,
                                                     int mode, float beta, float alpha) {
#define T_ZERO(t) \
    do { if (hw) _tile_zero(t); else soft_zero(t); } while (0)
#define T_LOAD(t, p, s) \
    do { if (hw) _tile_loadd(t, p, s); else soft_load(t, p, s); } while (0)
#define T_STORE(t, p, s) \
    do { if (hw) _tile_stored(t, p, s); else soft_store(t, p, s); } while (0)
#define T_DP(c, a, b) \
    do { if (hw) _tile_dpbf16ps(c, a, b); else soft_dpbf16ps(c, a, b); } while (0)
    _Alignas(64) float out[MA * NR];
    T_ZERO(0);
    T_ZERO(1);
    T_ZERO(2);
    int64_t q = 0;
    for (; q + 16 <= kp; q += 16) {
        T_LOAD(3, a + q, lda * 4);
        T_LOAD(4, b + q * NR, NR * 4);
        T_LOAD(5, b + q * NR + 16, NR * 4);
        T_LOAD(6, b + q * NR + 32, NR * 4);
        T_DP(0, 3, 4);
        T_DP(1, 3, 5);
        T_DP(2, 3, 6);
    }
    if (q < kp) { /* the last pairs, zero-padded to a whole tile */
        _Alignas(64) uint32_t ra[MA * 16], rb[16 * NR];
        const int64_t left = kp - q;
        memset(ra, 0, sizeof ra);
        memset(rb, 0, sizeof rb);
        for (int i = 0; i < MA; i++) memcpy(ra + i * 16, a + i * lda + q, (size_t)left * 4);
        memcpy(rb, b + q * NR, (size_t)(left * NR) * 4);
        T_LOAD(3, ra, 64);
        T_LOAD(4, rb, NR * 4);
        T_LOAD(5, rb + 16, NR * 4);
        T_LOAD(6, rb + 32, NR * 4);
        T_DP(0, 3, 4);
        T_DP(1, 3, 5);
        T_DP(2, 3, 6);
    }
    T_STORE(0, out, NR * 4);
    T_STORE(1, out + 16, NR * 4);
    T_STORE(2, out + 32, NR * 4);
#undef T_ZERO
#undef T_LOAD
#undef T_STORE
#undef T_DP
    const __m512 vb = _mm512_set1_ps(beta), va = _mm512_set1_ps(alpha);
    for (int i = 0; i < mv; i++)
        for (int v = 0; v < NV && nvalid > 16 * v; v++)
            store_c(c + i * ldc + 16 * v, nvalid - 16 * v, _mm512_mul_ps(va, _mm512_load_ps(out + i * NR + 16 * v)), mode, vb);
}

AMX static void amx_kernel(int64_t kp, const uint32_t *restrict a, int64_t lda, const uint32_t *restrict b, float *c, int64_t ldc,
                           int mv, int nvalid, int mode, float beta, float alpha) {
    amx_kernel_body(1, kp, a, lda, b, c, ldc, mv, nvalid, mode, beta, alpha);
}

/* The target attribute only lets the dead hardware branch compile: no tile instruction is
 * emitted here (objdump of the build shows none in soft_kernel). */
AMX static void soft_kernel(int64_t kp, const uint32_t *restrict a, int64_t lda, const uint32_t *restrict b, float *c, int64_t ldc,
                            int mv, int nvalid, int mode, float beta, float alpha) {
    amx_kernel_body(0, kp, a, lda, b, c, ldc, mv, nvalid, mode, beta, alpha);
}

/* Columns k0 .. k0+kc of A[M, K] (lda), times `scale`, into block ib's row panel at
 * ap + ib·MA·kps, words off .. off+(kc+1)/2 of each row (kps words a row). */
AMX static void pack_a_rows(const float *a, int64_t lda, int64_t M, int64_t k0, int64_t kc, int64_t ib, int64_t kps, int64_t off,
                            float scale, uint32_t *ap) {
    const int64_t kp = (kc + 1) / 2;
    const __m512 vs = _mm512_set1_ps(scale);
    const int scaled = scale != 1.0f;
    for (int i = 0; i < MA; i++) {
        const int64_t m = ib * MA + i;
        uint32_t *dst = ap + (ib * MA + i) * kps + off;
        for (int64_t k = 0; k < kc; k += 32) {
            const int64_t pairs = min64(16, kp - k / 2);
            const __mmask16 keep = pairs >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << pairs) - 1);
            const __m512i v = m < M ? round_row32(a + m * lda + k0 + k, kc - k, scaled, vs) : _mm512_setzero_si512();
            _mm512_mask_storeu_epi32(dst + k / 2, keep, v);
        }
    }
}

#endif
