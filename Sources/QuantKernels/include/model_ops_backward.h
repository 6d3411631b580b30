/* model_ops_backward.h — the backward of each kernel in model_ops.h, and the fused softmax
 * cross-entropy of the LM head. fp32, Hugging Face semantics; every function is the exact
 * derivative of its forward twin (finite-difference tested in QLoRATests/Model).
 *
 * Legend: B sequences, T tokens per sequence, C hidden, H heads, Hkv KV heads, D head dim,
 * V vocab. Matrices are row-major and contiguous.  Where a function says "(+)=" it adds into
 * its output when `accumulate` is non-zero and overwrites it otherwise.
 */
#ifndef MODEL_OPS_BACKWARD_H
#define MODEL_OPS_BACKWARD_H

#include <stdint.h>
#include "model_ops.h"

#ifdef __cplusplus
extern "C" {
#endif

/* RMSNorm, y = w ⊙ (x · rstd) with rstd from qk_rmsnorm_forward:
 *   dx[T, C] (+)= rstd · (w ⊙ dy − x̂ · mean(w ⊙ dy ⊙ x̂)),  x̂ = x · rstd
 *   dw[C]    += Σ_t dy ⊙ x̂                                  (skipped when dw is NULL)
 * dw is summed over rows in order. dx must not alias dy or x. */
void qk_rmsnorm_backward(float *dx, float *dw, const float *dy, const float *x, const float *w, const float *rstd,
                         int64_t T, int64_t C, int accumulate);

/* RoPE backward, in place on dx[T, heads·D]: the inverse rotation (angles negated) with the
 * tables of qk_rope_tables. */
void qk_rope_backward(float *dx, const float *cos_t, const float *sin_t, int64_t T, int64_t heads, int64_t D);

/* SwiGLU h = silu(gate) ⊙ up:
 *   dgate = dh ⊙ up ⊙ σ(g)(1 + g(1 − σ(g))),  dup = dh ⊙ silu(g).   Overwrites both. */
void qk_swiglu_backward(float *dgate, float *dup, const float *dh, const float *gate, const float *up, int64_t n);

/* GeGLU's backward: dup = dh ⊙ gelu_tanh(g), dgate = dh ⊙ up ⊙ gelu_tanh'(g). Overwrites both. */
void qk_geglu_backward(float *dgate, float *dup, const float *dh, const float *gate, const float *up, int64_t n);

/* Causal grouped-query attention without a cache, B sequences of T tokens, rows of sequence b
 * at b·T ..< (b+1)·T of q [B·T, H·D], k, v [B·T, Hkv·D], dout [B·T, H·D]:
 *   out = softmax(q·kᵀ/√D, causal) · v          (qk_attention_forward per sequence)
 * given the forward's probabilities probs [B, H, T, T] (zero above the diagonal), or NULL to
 * recompute them from q and k. Overwrites dq [B·T, H·D], dk, dv [B·T, Hkv·D].
 * Blocks of query rows as small dense products (attention.c), fused multiply-adds on AVX-512
 * (qk_isa_get). OpenMP over (sequence, KV group) pairs, each pair's heads and blocks summed
 * in a fixed order, so the result does not depend on the thread count. Recomputed
 * probabilities are computed as qk_attention_forward computes them (bit for bit), so both
 * ways give the same gradients. H must be a multiple of Hkv. threads ≤ 0: OpenMP's default.
 * Returns 0, or −1 when scratch memory could not be allocated. */
int qk_attention_backward(float *dq, float *dk, float *dv, const float *dout, const float *q, const float *k,
                          const float *v, const float *probs, int64_t B, int64_t T, int64_t H, int64_t Hkv,
                          int64_t D, int threads);

/* qk_attention_backward of qk_attention_forward_with(…, o, …): the same scale and window. */
int qk_attention_backward_with(float *dq, float *dk, float *dv, const float *dout, const float *q, const float *k,
                               const float *v, const float *probs, int64_t B, int64_t T, int64_t H, int64_t Hkv,
                               int64_t D, qk_attention_options o, int threads);

/* Softmax cross-entropy over rows of logits [rows, V] with integer labels; rows whose label
 * is −100 are ignored. In place: logits become dlogits = grad_scale · (softmax − onehot(label))
 * for counted rows and 0 for ignored ones. Returns Σ over counted rows of −log softmax[label]
 * in float64 (log-sum-exp with the row max subtracted), summed in row order so that it does
 * not depend on the thread count; *counted receives the number of counted rows. OpenMP over
 * rows. A label outside 0 ..< V other than −100 returns NAN; such a row counts
 * in *counted and its dlogits are 0. */
double qk_cross_entropy(float *logits, const int32_t *labels, int64_t rows, int64_t V, float grad_scale,
                        int64_t *counted, int threads);

/* qk_cross_entropy that also gives each row's loss: row_loss[rows] receives −log softmax[label]
 * per row (0 for an ignored row, NAN for a label out of range), so that a caller can sum rows
 * per sequence (a sequence's log-probability for preference objectives). Same dlogits in
 * place; returns the sum in row order. */
double qk_cross_entropy_rows(float *logits, const int32_t *labels, int64_t rows, int64_t V, float grad_scale,
                             double *row_loss, int threads);

#ifdef __cplusplus
}
#endif

#endif
