/* model_ops.h — the element-wise and attention kernels of the Llama decoder's forward:
 * RMSNorm, rotary embeddings in Hugging Face's rotate-half layout, row softmax, SwiGLU,
 * bias rows and causal grouped-query attention. fp32 in and out, Hugging Face semantics
 * (transformers' LlamaRMSNorm, apply_rotary_pos_emb, eager_attention_forward, LlamaMLP).
 *
 * Legend: T tokens (queries), P positions already held by a KV cache, S = P + T keys,
 * C hidden, H heads, Hkv KV heads, D head dim, N any row width. Matrices are row-major
 * and contiguous; a [T, H·D] row holds head h at columns h·D ..< (h+1)·D.
 */
#ifndef MODEL_OPS_H
#define MODEL_OPS_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* y[T, C] = w[C] ⊙ (x[T, C] · rstd[T]),  rstd[t] = 1 / sqrt(mean(x[t]²) + eps).
 * Writes rstd for the backward. y may alias x. */
void qk_rmsnorm_forward(float *y, float *rstd, const float *x, const float *w, int64_t T, int64_t C, float eps);

/* cos, sin [T, D/2] of the angles (P + t) · inv_freq[i], the product rounded to fp32 as
 * transformers computes it (freqs = inv_freq @ position_ids). */
void qk_rope_tables(float *cos_t, float *sin_t, const float *inv_freq, int64_t half, int64_t P, int64_t T);

/* In place on x[T, heads·D], each head rotated in rotate-half layout with the tables of
 * qk_rope_tables (half = D/2):
 *   x'[i]        = x[i]·cos[i] − x[i + D/2]·sin[i]
 *   x'[i + D/2]  = x[i + D/2]·cos[i] + x[i]·sin[i]          for i < D/2. */
void qk_rope_forward(float *x, const float *cos_t, const float *sin_t, int64_t T, int64_t heads, int64_t D);

/* In place on x[rows, N]: each row → exp(x − max) / Σ exp(x − max). */
void qk_softmax_forward(float *x, int64_t rows, int64_t N);

/* h[n] = silu(gate[n]) · up[n],  silu(g) = g / (1 + exp(−g)). */
void qk_swiglu_forward(float *h, const float *gate, const float *up, int64_t n);

/* GeGLU (Gemma): h[i] = gelu_tanh(gate[i]) · up[i], gelu_tanh(g) = ½g(1 + tanh(√(2/π)(g + 0.044715g³))). */
void qk_geglu_forward(float *h, const float *gate, const float *up, int64_t n);

/* y[T, N] += b[N] on every row. */
void qk_add_bias(float *y, const float *b, int64_t T, int64_t N);

/* Causal grouped-query attention, query head h reading KV head h / (H / Hkv):
 *   out[t, h] = Σ_{j ≤ P + t} p[h, t, j] · v[j, h / (H / Hkv)],
 *   p[h, t, ·] = softmax_j(q[t, h] · k[j, h / (H / Hkv)] / sqrt(D))    (fp32)
 * q, out [T, H·D]; k, v [S, Hkv·D] (the P cached rows, then the T new ones).
 * probs [H, T, S] receives p with zeros past the causal limit, or is NULL. Blocks of query
 * rows as small dense products (attention.c), fused multiply-adds on AVX-512 (qk_isa_get);
 * OpenMP over (head, block) pairs, `threads` of them (0: OpenMP's default); the result does
 * not depend on the thread count. Returns 0, or -1 if the transposed keys or the per-thread
 * score rows could not be allocated. */
int qk_attention_forward(float *out, float *probs, const float *q, const float *k, const float *v,
                         int64_t T, int64_t P, int64_t H, int64_t Hkv, int64_t D, int threads);

/* What varies between the families' attention: the score scale (1/√D for most; Gemma's
 * query_pre_attn_scalar^−½), a sliding window (Mistral, Gemma's local layers): query at
 * absolute position i sees keys j with i − window < j ≤ i, 0 is no window; and soft-capping
 * (Gemma 2): scores s·scale become softcap·tanh(s·scale / softcap) before the mask, 0 is none. */
typedef struct {
    float scale;
    int64_t window;
    float softcap;
} qk_attention_options;

/* {1/√D, no window, no cap}: what qk_attention_forward and qk_attention_backward use. */
qk_attention_options qk_attention_defaults(int64_t D);

/* qk_attention_forward with `o`: scores q·kᵀ·o.scale, keys outside the window masked (p = 0). */
int qk_attention_forward_with(float *out, float *probs, const float *q, const float *k, const float *v,
                              int64_t T, int64_t P, int64_t H, int64_t Hkv, int64_t D, qk_attention_options o,
                              int threads);

#ifdef __cplusplus
}
#endif
#endif
