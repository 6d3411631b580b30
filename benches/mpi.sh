#!/usr/bin/env bash
# Data parallelism on one box: 1 process × T threads against R ranks × T/R threads (Open MPI,
# --bind-to none), same global batch, on the demo chat set (length-grouped batches) and on
# packed 256-token windows of it; then one update's gradient all-reduce for SmolLM2 r16 and the
# llama-7b shape r16. tokens/s = real tokens / update seconds over updates 2…N (rank 0's clock,
# which includes waiting for the slowest rank and the all-reduce).
#
#   benches/mpi.sh [ROUNDS] [STEPS]      (default 2 rounds of 30 updates; release build, tools/setup.sh)
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-2}
steps=${2:-30}
qlora=$PWD/.build/release/qlora
[ -x "$qlora" ] || swift build -c release --product qlora
openmpi=$(command -v mpirun.openmpi || command -v mpirun)
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
threads=$(nproc)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
echo "CPU: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $threads cores"
speed() {
    python3 - "$1" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1] + "/metrics.jsonl")]
rows = [r for r in rows if "update_s" in r and r["step"] >= 2]
print(f'{sum(r["tokens"] for r in rows) / sum(r["update_s"] for r in rows):.1f}')
PY
}
for data in chat packed; do
    extra=(--group-by-length --max-len 256)
    [ "$data" = packed ] && extra=(--packing --max-len 256)
    common=(train --max-steps "$steps" --no-plan --eval-every 100000 --no-speed-alerts "${extra[@]}" --seed 1)
    for r in $(seq 1 "$rounds"); do
        OMP_NUM_THREADS=$threads "$qlora" "${common[@]}" --batch-size 4 --out "$work/one" --overwrite > /dev/null
        "$openmpi" -np 2 --bind-to none -x OMP_NUM_THREADS=$((threads / 2)) "$qlora" "${common[@]}" --batch-size 2 --out "$work/two" --overwrite > "$work/two.log"
        echo "$data round $r: 1 process × $threads threads $(speed "$work/one") tokens/s; 2 ranks × $((threads / 2)) $(speed "$work/two") tokens/s; $(grep -o 'all-reduce: .*' "$work/two.log")"
    done
done
for shape in "" "--shape llama-7b"; do
    "$openmpi" -np 2 --bind-to none -x OMP_NUM_THREADS=1 "$qlora" bench allreduce $shape --runs 10
done
