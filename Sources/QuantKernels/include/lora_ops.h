/* lora_ops.h — LoRA's element-wise work: inverted dropout with a mask that is a pure function
 * of (seed, element), so a forward, its backward and a checkpointed recomputation regenerate
 * it without storing it (DropoutStream.swift is the Swift statement of the same hash).
 */
#ifndef LORA_OPS_H
#define LORA_OPS_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Element i of a mask seeded `seed` is dropped when mix(seed + i·0x9E3779B97F4A7C15) >> 11 <
 * threshold (threshold = p·2⁵³), mix being SplitMix64's finalizer; kept elements are scaled:
 *   accumulate = 0:  out[i]  = kept ? x[i]·scale : 0      (out may be x)
 *   accumulate = 1:  out[i] += kept ? x[i]·scale : 0
 * for i < count. AVX-512 where qk_isa_get() says so, OpenMP over chunks (`threads`, 0:
 * OpenMP's default); the result depends on neither. */
void qk_lora_dropout(float *out, const float *x, int64_t count, uint64_t seed, uint64_t threshold, float scale, int accumulate,
                     int threads);

#ifdef __cplusplus
}
#endif
#endif
