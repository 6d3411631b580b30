/* ggml_types.h — the ggml tensor types a GGUF file may hold, and row dequantization of
 * those qlora can read to fp32, bit for bit as ggml's dequantize_row_* (ggml-quants.c) on a
 * build without FMA contraction.
 *
 * Type ids are those of ggml.h's enum ggml_type, as GGUF stores them. Block layouts are
 * ggml-common.h's; each row of a tensor is a whole number of blocks (ggml requires
 * ne[0] % block_size == 0), so a row, or several rows back to back, dequantize the same way.
 *
 * Supported: F32, F16, BF16 (one element per "block"), Q4_0, Q4_1, Q5_0, Q5_1, Q8_0 (blocks
 * of 32), Q2_K, Q3_K, Q4_K, Q5_K, Q6_K (super-blocks of QK_K = 256). Not supported: Q8_1 and
 * Q8_K (ggml's intermediate formats for dot products, never in model files), the IQ*, TQ*
 * and FP4 families, and the integer types.
 */
#ifndef QK_GGML_TYPES_H
#define QK_GGML_TYPES_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ggml.h, enum ggml_type (ids 4 and 5, once Q4_2 and Q4_3, are retired). */
typedef enum {
    QK_GGML_TYPE_F32 = 0,
    QK_GGML_TYPE_F16 = 1,
    QK_GGML_TYPE_Q4_0 = 2,
    QK_GGML_TYPE_Q4_1 = 3,
    QK_GGML_TYPE_Q5_0 = 6,
    QK_GGML_TYPE_Q5_1 = 7,
    QK_GGML_TYPE_Q8_0 = 8,
    QK_GGML_TYPE_Q8_1 = 9,
    QK_GGML_TYPE_Q2_K = 10,
    QK_GGML_TYPE_Q3_K = 11,
    QK_GGML_TYPE_Q4_K = 12,
    QK_GGML_TYPE_Q5_K = 13,
    QK_GGML_TYPE_Q6_K = 14,
    QK_GGML_TYPE_Q8_K = 15,
    QK_GGML_TYPE_BF16 = 30,
} qk_ggml_type;

/* Elements per block; 0 if qlora cannot read the type. */
int64_t qk_ggml_block_size(uint32_t type);
/* Bytes per block; 0 if qlora cannot read the type. */
int64_t qk_ggml_block_bytes(uint32_t type);
/* ggml's name of the type ("Q4_K", "BF16", ...), or NULL if qlora cannot read it. */
const char *qk_ggml_type_name(uint32_t type);

/* Dequantizes k elements, k / block_size whole blocks, from src into y[k].
 * Returns 0, or -1 (writing nothing) for an unsupported type or a k that is negative or not
 * a multiple of the block size. src must hold k / block_size * block_bytes bytes and be 2-byte
 * aligned, as the blocks' fp16 fields are (every block size is even, and GGUF aligns tensor
 * data to 32 bytes). */
int qk_ggml_dequantize_row(uint32_t type, const void *src, float *y, int64_t k);

#ifdef __cplusplus
}
#endif
#endif
