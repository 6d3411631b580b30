#!/usr/bin/env bash
# bf16 against fp32, side by side on the same machine: each configuration runs in both dtypes,
# alternating, ROUNDS times (one process each, so peak RSS is its own), and the table gives
# the medians and their ratio. The issue-15 grid:
#   - bench train, SmolLM2 r16, 4 × 256, with qlora train's dropout (0.05) and EMA (0.999)
#   - bench train, SmolLM2 r16, 4 × 256, no dropout, no EMA (the frozen path alone)
#   - bench train, llama-7b shape, 2 blocks, 1 × 512, gradient checkpointing
#   - bench model, SmolLM2 prompt processing of 512 tokens (pp512) and decoding (tg128)
# The CPU is printed first: quote every figure with it.
#
#   benches/bf16.sh [ROUNDS]      (default 3)
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-3}
swift build -c release --product qlora >&2
q=.build/release/qlora
grep -m1 "model name" /proc/cpuinfo >&2
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT

train_case() { # name, then bench train arguments
    local name=$1; shift
    for r in $(seq "$rounds"); do
        for d in fp32 bf16; do
            echo "[$name round $r/$rounds] $d" >&2
            $q bench train "$@" --compute-dtype $d --json 2>/dev/null | tail -1 >> "$out/$name.$d"
        done
    done
}
model_case() {
    for r in $(seq "$rounds"); do
        for d in fp32 bf16; do
            echo "[pp512/tg128 round $r/$rounds] $d" >&2
            $q bench model --compute-dtype $d --runs 3 --json 2>/dev/null >> "$out/model.$d"
        done
    done
}

train_case smollm2-defaults --rank 16 --batch 4 --length 256 --lora-dropout 0.05 --ema 0.999 --steps 4
train_case smollm2-bare --rank 16 --batch 4 --length 256 --steps 4
train_case llama7b-2blocks --shape llama-7b --layers 2 --rank 16 --batch 1 --length 512 --grad-checkpoint --steps 3
model_case

python3 - "$out" <<'EOF'
import json, pathlib, statistics, sys
out = pathlib.Path(sys.argv[1])
def records(path):
    text = path.read_text()
    dec, i, rows = json.JSONDecoder(), 0, []
    while i < len(text):
        if text[i].isspace(): i += 1; continue
        obj, i = dec.raw_decode(text, i)
        rows.append(obj)
    return rows
print(f"{'case':<22} {'fp32':>10} {'bf16':>10} {'ratio':>7}   peak RSS MiB fp32 / bf16")
for name in ["smollm2-defaults", "smollm2-bare", "llama7b-2blocks"]:
    a, b = records(out / f"{name}.fp32"), records(out / f"{name}.bf16")
    ta, tb = statistics.median(r["tokensPerSecond"] for r in a), statistics.median(r["tokensPerSecond"] for r in b)
    ra, rb = max(r["peakRSSBytes"] for r in a) / 2**20, max(r["peakRSSBytes"] for r in b) / 2**20
    print(f"{name:<22} {ta:>10.1f} {tb:>10.1f} {tb / ta:>6.2f}×   {ra:.0f} / {rb:.0f}   (tokens/s, median of {len(a)})")
a, b = records(out / "model.fp32"), records(out / "model.bf16")
for key, label in [("promptTokensPerSecond", "pp512"), ("generationTokensPerSecond", "tg128")]:
    ta, tb = statistics.median(r[key] for r in a), statistics.median(r[key] for r in b)
    print(f"{label:<22} {ta:>10.1f} {tb:>10.1f} {tb / ta:>6.2f}×   (tokens/s, median of {len(a)})")
EOF
