#!/usr/bin/env bash
# The training benchmark grid of the closing notes: r ∈ {8, 16, 64}, batch 4 × 256, with and
# without per-block gradient checkpointing, one configuration per process (peak RSS is the
# process's), JSON lines to stdout. Peers run beside it with tools/bench_peers_train.py.
#
#   benches/train.sh [STEPS]      (default 5 timed steps after 1 warm-up)
set -euo pipefail
cd "$(dirname "$0")/.."
steps=${1:-5}
swift build -c release --product qlora >&2
for ckpt in "" "--grad-checkpoint"; do
    for r in 8 16 64; do
        .build/release/qlora bench train --rank "$r" --batch 4 --length 256 --steps "$steps" $ckpt --json
    done
done
