#!/usr/bin/env bash
# Preference training beside TRL: reward modelling, then DPO, on data/demo-preferences with
# SmolLM2-135M-Instruct, one JSON summary per objective under runs/preference-bench/ and a table
# each on stdout.  Needs the venv of tools/bench_peers_train.py plus trl (PYTHON to override).
#
#   benches/preference.sh [--max-steps N] [--only trl|qlora] [--wait-idle SECONDS] ...
#       (arguments go to benches/preference_vs_trl.py; default one epoch, 100 updates)
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-/work/venv-fixtures/bin/python}
for objective in reward dpo; do
    "$python" benches/preference_vs_trl.py --objective "$objective" \
        --json-out "runs/preference-bench/$objective.json" "$@"
done
