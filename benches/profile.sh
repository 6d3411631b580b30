#!/usr/bin/env bash
# Where a training step's time goes, per kind of work (StepProfile.Kind: the frozen 4-bit GEMMs
# forward and backward (dX), LoRA, attention, RMSNorms, element-wise RoPE/SwiGLU/residual work,
# the LM head and loss, the optimizer (clipping + AdamW), the EMA, and "other"), as seconds per
# step and share of the step, for two configurations, one process each, EMA on in both:
#   SmolLM2-135M-Instruct Q4_1, batch 4 × 256, r 16
#   the llama-7b shape (NF4, double quantization) cut to 2 blocks, batch 1 × 512, r 16,
#   per-block gradient checkpointing (full 7B width: embedding, LM head, layer shapes)
# Each measured call reads the clock twice; nested calls count for their own kind only.
# The machines are shared: read shares, not absolute seconds, and rerun before comparing.
#
#   benches/profile.sh [STEPS] [--json]      (default 3 timed steps after 1 warm-up)
set -euo pipefail
cd "$(dirname "$0")/.."
steps=${1:-3}
json=${2:-}
swift build -c release --product qlora >&2
.build/release/qlora bench train --rank 16 --batch 4 --length 256 --ema 0.999 --steps "$steps" $json
.build/release/qlora bench train --shape llama-7b --layers 2 --rank 16 --batch 1 --length 512 --grad-checkpoint --ema 0.999 \
    --steps "$steps" $json
