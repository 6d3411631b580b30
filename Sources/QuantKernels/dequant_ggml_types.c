/* dequant_ggml_types.c — scalar dequantization of every ggml type a GGUF model file holds
 * that qlora reads (see ggml_types.h): for loading and converting, not the GEMM path.
 *
 * Blocks are ggml-common.h's, reproduced by layout. Each value is computed with the
 * operations of ggml-quants.c's dequantize_row_* in the same order, one rounding per
 * operation (the target is compiled with -ffp-contract=off), so the results are bit-exact:
 *   Q5_0          y = (q - 16)·d                    Q5_1  y = q·d + m
 *   Q2_K          y = (d·sc)·q - dmin·m             Q3_K  y = (d·(sc - 32))·q,  q in [-4, 3]
 *   Q4_K, Q5_K    y = (d·sc)·q - dmin·m             Q6_K  y = (d·sc)·(q - 32)
 * Every product above is exact in fp32 (an 11-bit fp16 significand times a scale of at most
 * 8 bits times a code of at most 6 bits), so only the final add or subtract rounds: the order
 * of the products cannot change a bit, and neither could FMA contraction.
 * Q4_0, Q4_1 and Q8_0 go through the existing scalar reference (dequant_scalar.c); the
 * others' block functions here are that reference too (qk_dequantize_blocks_scalar calls them). */
#include "blocks.h"
#include "ggml_types.h"

enum { QK_K = QK_K_BLOCK };

/* Block structs are in blocks.h, shared with the GEMMs' dequantizers. */

/* Each writes nb blocks from src into y[nb * block_size]. */
typedef void (*dequantize_blocks_fn)(const void *src, float *restrict y, int64_t nb);

static void dequantize_blocks_f32(const void *src, float *restrict y, int64_t nb) {
    memcpy(y, src, (size_t)nb * sizeof(float));
}

static void dequantize_blocks_f16(const void *src, float *restrict y, int64_t nb) {
    const uint16_t *x = src;
    for (int64_t i = 0; i < nb; i++) y[i] = fp16_to_fp32(x[i]);
}

/* bfloat16 is the high half of an fp32. */
static void dequantize_blocks_bf16(const void *src, float *restrict y, int64_t nb) {
    const uint16_t *x = src;
    for (int64_t i = 0; i < nb; i++) {
        const uint32_t u = (uint32_t)x[i] << 16;
        memcpy(&y[i], &u, sizeof u);
    }
}

static void dequantize_blocks_legacy(qk_format format, const void *src, float *restrict y, int64_t nb) {
    const qk_matrix w = { .format = format, .rows = 1, .cols = nb * QK_GGML_BLOCK,
                          .block_size = QK_GGML_BLOCK, .data = src };
    qk_dequantize_blocks_scalar(&w, 0, nb, y);
}
static void dequantize_blocks_q4_0(const void *src, float *restrict y, int64_t nb) { dequantize_blocks_legacy(QK_FORMAT_Q4_0, src, y, nb); }
static void dequantize_blocks_q4_1(const void *src, float *restrict y, int64_t nb) { dequantize_blocks_legacy(QK_FORMAT_Q4_1, src, y, nb); }
static void dequantize_blocks_q8_0(const void *src, float *restrict y, int64_t nb) { dequantize_blocks_legacy(QK_FORMAT_Q8_0, src, y, nb); }

/* Q5_0 and Q5_1 share Q4's nibble order: element j < 16 is the low nibble of qs[j], element
 * j + 16 its high nibble; the 5th bit of element j is bit j of the little-endian qh. */
static inline int code_q5(const uint8_t qs[16], uint32_t qh, int j) {
    const int nibble = j < 16 ? (qs[j] & 0x0F) : (qs[j - 16] >> 4);
    return nibble | (int)((qh >> j) & 1) << 4;
}

void qk_dequantize_blocks_q5_0_ref(const void *src, float *restrict y, int64_t nb) {
    const block_q5_0 *x = src;
    for (int64_t i = 0; i < nb; i++, y += QK_GGML_BLOCK) {
        const float d = fp16_to_fp32(x[i].d);
        uint32_t qh;
        memcpy(&qh, x[i].qh, sizeof qh);
        for (int j = 0; j < QK_GGML_BLOCK; j++) y[j] = (float)(code_q5(x[i].qs, qh, j) - 16) * d;
    }
}

void qk_dequantize_blocks_q5_1_ref(const void *src, float *restrict y, int64_t nb) {
    const block_q5_1 *x = src;
    for (int64_t i = 0; i < nb; i++, y += QK_GGML_BLOCK) {
        const float d = fp16_to_fp32(x[i].d), m = fp16_to_fp32(x[i].m);
        uint32_t qh;
        memcpy(&qh, x[i].qh, sizeof qh);
        for (int j = 0; j < QK_GGML_BLOCK; j++) y[j] = (float)code_q5(x[i].qs, qh, j) * d + m;
    }
}

/* Q2_K and Q3_K pack codes the same way. Group g (elements 16g .. 16g+15) is g = 8h + 2s + t:
 * half h of the super-block, bit pair s, sixteen t; element 16g + l takes the 2 bits at
 * 2s of qs[32h + 16t + l]. */
static inline int code_2bit(const uint8_t qs[QK_K / 4], int g, int l) {
    const int h = g / 8, s = (g % 8) / 2, t = g % 2;
    return (qs[32 * h + 16 * t + l] >> (2 * s)) & 3;
}

void qk_dequantize_blocks_q2_K_ref(const void *src, float *restrict y, int64_t nb) {
    const block_q2_K *x = src;
    for (int64_t i = 0; i < nb; i++) {
        const float d = fp16_to_fp32(x[i].d), dmin = fp16_to_fp32(x[i].dmin);
        for (int g = 0; g < QK_K / 16; g++, y += 16) {
            const float dl = d * (float)(x[i].scales[g] & 0x0F);
            const float ml = dmin * (float)(x[i].scales[g] >> 4);
            for (int l = 0; l < 16; l++) y[l] = dl * (float)code_2bit(x[i].qs, g, l) - ml;
        }
    }
}

/* Q3_K's 6-bit scale of group g: the low 4 bits are nibble g of bytes 0..7 (low nibbles
 * first), the high 2 bits are the 2 bits at 2·(g/4) of byte 8 + g%4. */
static inline int scale_q3_K(const uint8_t s[K_SCALE_SIZE], int g) {
    const int low = g < 8 ? (s[g] & 0x0F) : (s[g - 8] >> 4);
    const int high = (s[8 + g % 4] >> (2 * (g / 4))) & 3;
    return (low | high << 4) - 32;
}

void qk_dequantize_blocks_q3_K_ref(const void *src, float *restrict y, int64_t nb) {
    const block_q3_K *x = src;
    for (int64_t i = 0; i < nb; i++) {
        const float d = fp16_to_fp32(x[i].d);
        for (int g = 0; g < QK_K / 16; g++, y += 16) {
            const float dl = d * (float)scale_q3_K(x[i].scales, g);
            /* element e = 16g + l has its 3rd bit at bit e/32 of hmask[e % 32] */
            const int bit = g / 2, row = 16 * (g % 2);
            for (int l = 0; l < 16; l++) {
                const int high = (x[i].hmask[row + l] >> bit) & 1;
                y[l] = dl * (float)(code_2bit(x[i].qs, g, l) - (high ? 0 : 4));
            }
        }
    }
}

/* Q4_K and Q5_K group g (elements 32g .. 32g+31): codes from bytes 32·(g/2) .. +31 of qs,
 * low nibbles for even g, high nibbles for odd g, plus bit g of qh[l] as a fifth bit for
 * Q5_K (qh NULL for Q4_K); y = d·sc·code − dmin·m. */
static void dequantize_group_k(float d, float dmin, const uint8_t *scales, const uint8_t *qs, const uint8_t *qh, int g,
                               float *restrict y) {
    int sc, m;
    scale_min_k4(scales, g, &sc, &m);
    const float dl = d * (float)sc, ml = dmin * (float)m;
    const uint8_t *q = qs + 32 * (g / 2);
    const int shift = 4 * (g % 2);
    for (int l = 0; l < 32; l++) {
        const int code = ((q[l] >> shift) & 0x0F) | (qh ? ((qh[l] >> g) & 1) << 4 : 0);
        y[l] = dl * (float)code - ml;
    }
}

void qk_dequantize_blocks_q4_K_ref(const void *src, float *restrict y, int64_t nb) {
    const block_q4_K *x = src;
    for (int64_t i = 0; i < nb; i++)
        for (int g = 0; g < QK_K / 32; g++, y += 32)
            dequantize_group_k(fp16_to_fp32(x[i].d), fp16_to_fp32(x[i].dmin), x[i].scales, x[i].qs, NULL, g, y);
}

void qk_dequantize_blocks_q5_K_ref(const void *src, float *restrict y, int64_t nb) {
    const block_q5_K *x = src;
    for (int64_t i = 0; i < nb; i++)
        for (int g = 0; g < QK_K / 32; g++, y += 32)
            dequantize_group_k(fp16_to_fp32(x[i].d), fp16_to_fp32(x[i].dmin), x[i].scales, x[i].qs, x[i].qh, g, y);
}

/* Q6_K: element e = 128h + 32t + l (half h, quarter t, l < 32) takes its low 4 bits from
 * nibble t/2 of ql[64h + 32·(t%2) + l], its high 2 bits from the 2 bits at 2t of
 * qh[32h + l], and scale scales[e / 16]. */
void qk_dequantize_blocks_q6_K_ref(const void *src, float *restrict y, int64_t nb) {
    const block_q6_K *x = src;
    for (int64_t i = 0; i < nb; i++, y += QK_K) {
        const float d = fp16_to_fp32(x[i].d);
        for (int h = 0; h < 2; h++) {
            for (int t = 0; t < 4; t++) {
                const uint8_t *ql = x[i].ql + 64 * h + 32 * (t % 2);
                const uint8_t *qh = x[i].qh + 32 * h;
                float *yt = y + 128 * h + 32 * t;
                for (int l = 0; l < 32; l++) {
                    const int code = ((ql[l] >> (4 * (t / 2))) & 0x0F) | ((qh[l] >> (2 * t)) & 3) << 4;
                    const float ds = d * (float)x[i].scales[8 * h + 2 * t + l / 16];
                    yt[l] = ds * (float)(code - 32);
                }
            }
        }
    }
}

typedef struct {
    const char *name;
    int64_t block_size;
    int64_t block_bytes;
    dequantize_blocks_fn dequantize;
} ggml_type_traits;

/* Sizes as ggml's type_traits (ggml.c) and gguf-py's GGML_QUANT_SIZES. */
static const ggml_type_traits traits[] = {
    [QK_GGML_TYPE_F32]  = { "F32",  1, sizeof(float), dequantize_blocks_f32 },
    [QK_GGML_TYPE_F16]  = { "F16",  1, sizeof(uint16_t), dequantize_blocks_f16 },
    [QK_GGML_TYPE_Q4_0] = { "Q4_0", QK_GGML_BLOCK, sizeof(block_q4_0), dequantize_blocks_q4_0 },
    [QK_GGML_TYPE_Q4_1] = { "Q4_1", QK_GGML_BLOCK, sizeof(block_q4_1), dequantize_blocks_q4_1 },
    [QK_GGML_TYPE_Q5_0] = { "Q5_0", QK_GGML_BLOCK, sizeof(block_q5_0), qk_dequantize_blocks_q5_0_ref },
    [QK_GGML_TYPE_Q5_1] = { "Q5_1", QK_GGML_BLOCK, sizeof(block_q5_1), qk_dequantize_blocks_q5_1_ref },
    [QK_GGML_TYPE_Q8_0] = { "Q8_0", QK_GGML_BLOCK, sizeof(block_q8_0), dequantize_blocks_q8_0 },
    [QK_GGML_TYPE_Q2_K] = { "Q2_K", QK_K, sizeof(block_q2_K), qk_dequantize_blocks_q2_K_ref },
    [QK_GGML_TYPE_Q3_K] = { "Q3_K", QK_K, sizeof(block_q3_K), qk_dequantize_blocks_q3_K_ref },
    [QK_GGML_TYPE_Q4_K] = { "Q4_K", QK_K, sizeof(block_q4_K), qk_dequantize_blocks_q4_K_ref },
    [QK_GGML_TYPE_Q5_K] = { "Q5_K", QK_K, sizeof(block_q5_K), qk_dequantize_blocks_q5_K_ref },
    [QK_GGML_TYPE_Q6_K] = { "Q6_K", QK_K, sizeof(block_q6_K), qk_dequantize_blocks_q6_K_ref },
    [QK_GGML_TYPE_BF16] = { "BF16", 1, sizeof(uint16_t), dequantize_blocks_bf16 },
};

/* The traits of a readable type, or NULL (unknown ids and the gaps of the table). */
static const ggml_type_traits *traits_of(uint32_t type) {
    if (type >= sizeof traits / sizeof traits[0] || traits[type].name == NULL) return NULL;
    return &traits[type];
}

int64_t qk_ggml_block_size(uint32_t type) {
    const ggml_type_traits *t = traits_of(type);
    return t ? t->block_size : 0;
}

int64_t qk_ggml_block_bytes(uint32_t type) {
    const ggml_type_traits *t = traits_of(type);
    return t ? t->block_bytes : 0;
}

const char *qk_ggml_type_name(uint32_t type) {
    const ggml_type_traits *t = traits_of(type);
    return t ? t->name : NULL;
}

int qk_ggml_dequantize_row(uint32_t type, const void *src, float *y, int64_t k) {
    const ggml_type_traits *t = traits_of(type);
    if (t == NULL || k < 0 || k % t->block_size != 0) return -1;
    t->dequantize(src, y, k / t->block_size);
    return 0;
}
