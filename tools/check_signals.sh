#!/usr/bin/env bash
# SIGTERM (what schedulers and `timeout` send) stops a run as Ctrl-C does: after the current
# update, with a checkpoint, exit status 143 (128 + 15); --resume continues from it. A second
# signal quits at once (also 143) and loses nothing already written: the next --resume starts
# from the newest complete checkpoint. And a second `train` on a live run is refused.
#
#   tools/check_signals.sh        (debug build of qlora; the tiny NF4 Llama, random ids)
set -euo pipefail
cd "$(dirname "$0")/.."
swift build --product qlora >/dev/null
qlora=$(swift build --show-bin-path)/qlora
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
run="$work/run"
args=(--model Tests/QLoRATests/Fixtures/tiny-llama-bnb-nf4 --max-len 16 --batch-size 2 --no-plan --save-every 40 --eval-every 100000)
fail() { echo "check_signals: $*" >&2; exit 1; }
# Waits until FILE shows an update line (the run trains: its signal handlers are in place).
training() { for _ in $(seq 1 600); do grep -q "^update " "$1" 2>/dev/null && return 0; sleep 0.1; done; fail "no update in $1"; }

# One SIGTERM: a checkpoint at the update it stopped after, status 143.
"$qlora" train "${args[@]}" --max-steps 200000 --out "$run" > "$work/a.log" 2>&1 &
pid=$!
training "$work/a.log"
out=$("$qlora" train "${args[@]}" --max-steps 10 --out "$run" 2>&1 || true)
grep -q "is in use by a training process (pid $pid" <<< "$out" || fail "a second run on a live folder was not refused: $out"
kill -TERM "$pid"
status=0; wait "$pid" || status=$?
[ "$status" = 143 ] || fail "SIGTERM: exit status $status, expected 143"
step=$(sed -n 's/.*stopped at update \([0-9]*\);.*/\1/p' "$work/a.log")
[ -n "$step" ] && [ -d "$run/checkpoint-$step" ] || fail "SIGTERM: no checkpoint of the update it stopped after ($(tail -2 "$work/a.log"))"
echo "SIGTERM: stopped after update $step with checkpoint-$step, status 143; a second train on the live run was refused"

# Resumed, then two signals at once: quits at once, the newest complete checkpoint resumes.
"$qlora" train --resume "$run" > "$work/b.log" 2>&1 &
pid=$!
training "$work/b.log"
kill -TERM "$pid"; sleep 0.2; kill -TERM "$pid"
status=0; wait "$pid" || status=$?
[ "$status" = 143 ] || fail "two SIGTERMs: exit status $status, expected 143"
grep -q "resumed from" "$work/b.log" || fail "the resume did not resume: $(tail -3 "$work/b.log")"
"$qlora" train --resume "$run" > "$work/c.log" 2>&1 &
pid=$!
training "$work/c.log"
kill -TERM "$pid"
status=0; wait "$pid" || status=$?
[ "$status" = 143 ] || fail "resume after two signals: status $status ($(tail -3 "$work/c.log"))"
from=$(sed -n 's/.*resumed from .*checkpoint-\([0-9]*\) at update.*/\1/p' "$work/c.log")
[ -n "$from" ] && [ "$from" -ge "$step" ] || fail "resume after two signals started from '$from' (earlier than $step): $(grep -m1 resum "$work/c.log")"
echo "two SIGTERMs: quit at once (143); the next resume started from checkpoint-$from, and stopped again cleanly"
