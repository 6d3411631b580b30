#!/usr/bin/env bash
# A run killed with SIGKILL at random moments — between updates, inside an update, in the
# middle of writing a checkpoint — and resumed each time must end with exactly the losses,
# gradient norms and validation losses of an uninterrupted run (metrics.jsonl compared row by
# row, timings and RSS aside), and with bit-identical adapters.
#
#   tools/check_resume.sh [KILLS] [OBJECTIVE] [MODEL]   (default 4 kills, sft, the bundled SmolLM2;
#                                                       needs a release build and tools/setup.sh)
#
# QLORA_RESUME_EXTRA adds train flags to both runs (DoRA, 8-bit AdamW, …).
# OBJECTIVE dpo, orpo, simpo or reward trains on 24 of the demo preference pairs instead (DPO
# with its reference log-probabilities cached in the run, read back by every resume).
set -euo pipefail
cd "$(dirname "$0")/.."
kills=${1:-4}
objective=${2:-sft}
model=${3:-models/SmolLM2-135M-Instruct.Q4_1.gguf}
qlora=.build/release/qlora
[ -x "$qlora" ] || swift build -c release --product qlora
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
if [ "$objective" = sft ]; then
    head -n 6 data/demo-sft/val.jsonl > "$work/val.jsonl"
    args=(--data data/demo-sft/train.jsonl --val-file "$work/val.jsonl" --max-len 64)
else
    head -n 24 data/demo-preferences/train.jsonl > "$work/train.jsonl"
    head -n 6 data/demo-preferences/val.jsonl > "$work/val.jsonl"
    args=(--objective "$objective" --data "$work/train.jsonl" --val-file "$work/val.jsonl" --max-len 128)
fi
args+=(--model "$model" --batch-size 2 --grad-accum 2 --lora-r 8 --lora-dropout 0.1 --max-steps 10 --save-every 1 --keep-last 2 --eval-every 4
       --no-plan --ema 0.9 --seed 3)
# QLORA_RESUME_EXTRA: more train flags for both runs (e.g. "--use-dora --optim adamw_8bit").
# shellcheck disable=SC2206
args+=(${QLORA_RESUME_EXTRA:-})

start=$(date +%s.%N)
"$qlora" train "${args[@]}" --out "$work/a" > "$work/a.log"
span=$(python3 -c "print($(date +%s.%N) - $start)")
echo "uninterrupted run: ${span%.*} s"

"$qlora" train "${args[@]}" --out "$work/b" > "$work/b.log" &
pid=$!
for k in $(seq 1 "$kills"); do
    # Anywhere from the end of loading to the end of the run.
    sleep "$(python3 -c "import random; print(round(random.uniform(0.1, 0.35) * $span, 2))")"
    if kill -0 "$pid" 2>/dev/null; then
        kill -KILL "$pid" && wait "$pid" 2>/dev/null || true
        echo "killed with $(grep -c '"loss"' "$work/b/metrics.jsonl" 2>/dev/null || true) update rows written"
    fi
    if ls "$work/b"/checkpoint-* >/dev/null 2>&1; then
        "$qlora" train --resume "$work/b" >> "$work/b.log" &
    else
        rm -rf "$work/b"
        "$qlora" train "${args[@]}" --out "$work/b" >> "$work/b.log" &
    fi
    pid=$!
done
wait "$pid"

python3 - "$work/a" "$work/b" <<'PY'
import json, sys
def rows(d):
    out = []
    for line in open(d + "/metrics.jsonl"):
        r = json.loads(line)
        if r.get("kind") == "alert" or "event" in r:   # timing-dependent alerts aside
            continue
        for k in ("tokens_per_s", "rss_mb", "elapsed_s", "update_s"):
            r.pop(k, None)
        out.append(r)
    return out
a, b = rows(sys.argv[1]), rows(sys.argv[2])
if a != b:
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            sys.exit(f"metrics differ at row {i}:\n  uninterrupted {x}\n  resumed       {y}")
    sys.exit(f"metrics differ in length: {len(a)} vs {len(b)} rows")
losses = [r["loss"] for r in a if "loss" in r]
print(f"resume check: {len(a)} metrics rows identical, {len(losses)} updates, losses {losses[0]:.4f} … {losses[-1]:.4f}")
PY
cmp "$work/a/lora_final/adapter_model.safetensors" "$work/b/lora_final/adapter_model.safetensors"
echo "resume check: lora_final adapters identical"
