#!/usr/bin/env bash
# Data-parallel training under Open MPI on this machine (issue 17), on the bundled SmolLM2:
#   1. 2 ranks × batch 2 give the losses, gradient norms and validation losses of 1 process ×
#      batch 4 to fp32 rounding (relative 1e-5), and the ranks end with identical weights, the
#      same bits whether the gradient sums overlap the backward or follow it;
#   2. a 2-rank run resumed from its checkpoint under 2 ranks repeats the uninterrupted run's
#      rows bit for bit; under 1 process it goes on from the same data position and says so;
#   3. a rank killed mid-run (SIGKILL) makes the job exit non-zero within 60 s, its newest
#      checkpoint stays whole, --resume goes on, `touch RUN/STOP` stops it cleanly with a
#      checkpoint, and a second --resume finishes the run;
#   4. the multi-machine path for real: a hostfile naming two hosts, Open MPI's remote launch
#      (plm_rsh_agent pointed at a local stand-in for ssh that drops the host name) and the TCP
#      transport on loopback only (--mca btl self,tcp);
#   5. where MPICH is installed too (mpiexec.mpich): the run of 1. under MPICH's Hydra, alike.
#
#   tools/check_mpi.sh            (needs Open MPI (openmpi-bin), tools/setup.sh, a release build;
#                                  MPICH (mpich) optional)
set -euo pipefail
cd "$(dirname "$0")/.."
# Open MPI's own launcher, whichever MPI the mpirun alternative points at.
openmpi=$(command -v mpirun.openmpi || command -v mpirun || true)
[ -n "$openmpi" ] || { echo "check_mpi: mpirun not found (apt-get install openmpi-bin)"; exit 1; }
qlora=$PWD/.build/release/qlora
[ -x "$qlora" ] || swift build -c release --product qlora
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_rmaps_base_oversubscribe=1
mpi=("$openmpi" -np 2 --bind-to none -x OMP_NUM_THREADS=1)
head -n 8 data/demo-sft/val.jsonl > "$work/val.jsonl"
args=(--data data/demo-sft/train.jsonl --val-file "$work/val.jsonl" --max-len 64 --lora-r 8 --lora-dropout 0 --compute-dtype fp32
      --max-steps 4 --eval-every 2 --save-every 1 --keep-last 4 --no-plan --ema 0.9 --seed 5)

compare() {   # compare RUN_A RUN_B TOLERANCE [FROM_STEP]: metrics rows (losses, norms, val losses) alike
    python3 - "$@" <<'PY'
import json, sys
a, b, tol = sys.argv[1], sys.argv[2], float(sys.argv[3])
first = int(sys.argv[4]) if len(sys.argv) > 4 else 0
keys = ("loss", "grad_norm", "val_loss", "val_loss_live", "lr", "trained_tokens")
def rows(d):
    out = []
    for line in open(d + "/metrics.jsonl"):
        r = json.loads(line)
        if r["step"] >= first and any(k in r for k in keys):
            out.append((r["step"], {k: r[k] for k in keys if k in r}))
    return out
ra, rb = rows(a), rows(b)
assert [s for s, _ in ra] == [s for s, _ in rb], f"different rows: {[s for s, _ in ra]} vs {[s for s, _ in rb]}"
worst = 0.0
for (s, x), (_, y) in zip(ra, rb):
    assert x.keys() == y.keys(), f"update {s}: {sorted(x)} vs {sorted(y)}"
    for k in x:
        d = abs(x[k] - y[k]) / max(abs(y[k]), 1e-12)
        worst = max(worst, d)
        assert d <= tol, f"update {s}: {k} {x[k]!r} vs {y[k]!r} (relative {d:.2e} > {tol})"
print(f"  {len(ra)} rows alike (largest relative difference {worst:.1e}, bound {tol})")
PY
}

echo "1. 2 ranks × batch 2 against 1 process × batch 4"
OMP_NUM_THREADS=2 "$qlora" train "${args[@]}" --batch-size 4 --out "$work/one" > "$work/one.log"
"${mpi[@]}" "$qlora" train "${args[@]}" --batch-size 2 --out "$work/two" > "$work/two.log"
grep -q "data parallel: 2 ranks" "$work/two.log"
grep "weights identical on all 2 ranks" "$work/two.log"
compare "$work/one" "$work/two" 1e-5
# The sums overlapped with the backward (the default) and after it: the same bits on 2 ranks.
"${mpi[@]}" -x QLORA_ALLREDUCE=after "$qlora" train "${args[@]}" --batch-size 2 --out "$work/after" > "$work/after.log"
grep -q "after the backward" "$work/after.log" && grep -q "overlapped with the backward" "$work/two.log"
[ "$(grep -o 'FNV-1a 0x[0-9a-f]*' "$work/after.log")" = "$(grep -o 'FNV-1a 0x[0-9a-f]*' "$work/two.log")" ]
compare "$work/two" "$work/after" 0

echo "2. resume from checkpoint-2: under 2 ranks (bit for bit), under 1 process (same data position)"
for n in 2 1; do
    cp -r "$work/two" "$work/resume$n"
    rm -rf "$work/resume$n"/checkpoint-{3,4} "$work/resume$n"/lora_*
done
"${mpi[@]}" "$qlora" train --resume "$work/resume2" > "$work/resume2.log"
grep -q "resumed from .*checkpoint-2" "$work/resume2.log"
compare "$work/two" "$work/resume2" 0
OMP_NUM_THREADS=2 "$qlora" train --resume "$work/resume1" > "$work/resume1.log"
grep "resumed on 1 rank(s); the run trained on 2" "$work/resume1.log" | cut -c1-100
compare "$work/two" "$work/resume1" 1e-5

echo "3. a rank killed mid-run"
long=("${args[@]}" --max-steps 40 --eval-every 1000 --batch-size 2)
set +e
"${mpi[@]}" "$qlora" train "${long[@]}" --out "$work/killed" > "$work/killed.log" 2>&1 &
job=$!
set -e
for _ in $(seq 1 600); do
    rows=$(grep -c '"loss"' "$work/killed/metrics.jsonl" 2>/dev/null || true)
    [ "${rows:-0}" -ge 3 ] && break
    sleep 0.5
done
victim=""
for pid in $(pgrep -f "qlora train" || true); do
    tr '\0' '\n' < "/proc/$pid/environ" 2>/dev/null | grep -qx "OMPI_COMM_WORLD_RANK=1" && victim=$pid
done
[ -n "$victim" ] || { echo "rank 1 not found"; exit 1; }
killed_at=$(date +%s)
kill -KILL "$victim"
set +e
for _ in $(seq 1 120); do kill -0 "$job" 2>/dev/null || break; sleep 0.5; done
if kill -0 "$job" 2>/dev/null; then echo "the job still runs 60 s after rank 1 died"; kill -KILL "$job"; exit 1; fi
wait "$job"; rc=$?
set -e
echo "  rank 1 (pid $victim) killed: the job exited with $rc after $(( $(date +%s) - killed_at )) s"
[ "$rc" -ne 0 ]
# Resumed, then stopped cleanly with RUN/STOP two updates later, then resumed to the end.
at=$(ls -d "$work/killed"/checkpoint-* | sed 's/.*checkpoint-//' | sort -n | tail -1)
set +e
"${mpi[@]}" "$qlora" train --resume "$work/killed" > "$work/killed-resume.log" 2>&1 &
job=$!
set -e
for _ in $(seq 1 600); do
    rows=$(grep -c '"loss"' "$work/killed/metrics.jsonl" 2>/dev/null || true)
    [ "${rows:-0}" -ge $((at + 2)) ] && break
    sleep 0.5
done
touch "$work/killed/STOP"
set +e; wait "$job"; rc=$?; set -e
grep -q "resumed from .*checkpoint-$at" "$work/killed-resume.log"
grep "STOP found" "$work/killed-resume.log"
[ "$rc" -ne 0 ] && [ ! -e "$work/killed/STOP" ]
stopped=$(ls -d "$work/killed"/checkpoint-* | sed 's/.*checkpoint-//' | sort -n | tail -1)
echo "  resumed at update $at, stopped by RUN/STOP with checkpoint-$stopped (exit $rc)"
[ "$stopped" -gt "$at" ] && [ "$stopped" -lt 40 ]
"${mpi[@]}" "$qlora" train --resume "$work/killed" > "$work/killed-resume2.log"
grep "done: 40 updates" "$work/killed-resume2.log"

echo "4. two hosts from a hostfile, launched through a stand-in for ssh, TCP on loopback"
printf 'nodeA slots=1\nnodeB slots=1\n' > "$work/hosts"
cat > "$work/rsh" <<SH
#!/bin/sh
# Open MPI runs "rsh-agent [options] HOST orted …" for each remote host: note it, drop the host, run here.
echo "\$@" >> "$work/rsh.log"
while [ \$# -gt 0 ]; do case "\$1" in -*) shift ;; *) shift; break ;; esac; done
exec /bin/sh -c "\$*"
SH
chmod +x "$work/rsh"
tcp=("$openmpi" --hostfile "$work/hosts" -np 2 --mca plm_rsh_agent "$work/rsh" --mca btl self,tcp --mca btl_tcp_if_include lo
     --mca oob_tcp_if_include lo --bind-to none -x OMP_NUM_THREADS=1)
"${tcp[@]}" "$qlora" info | grep -o "all-reduce of 131072 values checked" | wc -l | grep -qx 2
"${tcp[@]}" "$qlora" train "${args[@]}" --batch-size 2 --max-steps 2 --out "$work/tcp" > "$work/tcp.log"
grep -q "^nodeA .*orted" "$work/rsh.log" && grep -q "^nodeB .*orted" "$work/rsh.log"
grep "weights identical on all 2 ranks" "$work/tcp.log"
python3 - "$work/two" "$work/tcp" <<'PY'
import json, sys
a = [json.loads(l) for l in open(sys.argv[1] + "/metrics.jsonl")]
b = [json.loads(l) for l in open(sys.argv[2] + "/metrics.jsonl")]
la = [r["loss"] for r in a if "loss" in r][:2]; lb = [r["loss"] for r in b if "loss" in r][:2]
assert all(abs(x - y) <= 1e-5 * abs(x) for x, y in zip(la, lb)), (la, lb)
print(f"  losses of updates 1-2 as over shared memory: {lb}")
PY
if command -v mpiexec.mpich >/dev/null; then
    echo "5. MPICH (Hydra): 2 ranks × batch 2 as under Open MPI"
    mpiexec.mpich -n 2 -env OMP_NUM_THREADS 1 "$qlora" train "${args[@]}" --batch-size 2 --out "$work/mpich" > "$work/mpich.log"
    grep -q "data parallel: 2 ranks (MPICH)" "$work/mpich.log"
    grep "weights identical on all 2 ranks" "$work/mpich.log"
    compare "$work/two" "$work/mpich" 1e-5
else
    echo "5. MPICH: mpiexec.mpich not installed, skipped"
fi
echo "check_mpi: all passed"
