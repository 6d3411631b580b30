#!/usr/bin/env python3
"""Check that TensorBoard reads what `qlora train --report-to tensorboard` writes, and that it
holds what the run's metrics.jsonl holds.

TensorBoard's own reader (tensorboard.backend.event_processing.event_accumulator.EventAccumulator,
the one `tensorboard --logdir` serves from; purge_orphaned_data on, as there) loads every event
file of RUN/tensorboard. The expected scalars are derived here, independently of the Swift code,
from RUN/metrics.jsonl by the table of Sources/QLoRA/Report/RunScalars.swift:

    training row      loss → train/loss, lr → train/learning_rate, grad_norm → train/grad_norm,
                      tokens_per_s → train/tokens_per_second, update_s → train/update_seconds,
                      rss_mb → system/rss_mib, any other number K → train/K
    evaluation row    (val_loss present; kind "quick" → eval_quick/…, else eval/…)
                      with "ema": true: val_loss_live → eval/loss, val_loss → eval/loss_ema,
                      val_ppl → eval/perplexity_ema, val_accuracy → eval/accuracy_ema,
                      val_K → eval/K_ema; without: val_loss → eval/loss, val_ppl →
                      eval/perplexity, val_accuracy → eval/accuracy, val_K → eval/K

The script asserts the same tags, and for each tag the same steps in the same order with the
values equal to metrics.jsonl's rounded to float32 (Summary.Value.simple_value is a float),
exactly. A run that was killed and resumed is covered: the resumed file's SessionLog START
makes the reader drop the updates metrics.jsonl dropped. It also asserts each event file opens
with file_version "brain.Event:2".

Writes nothing; exits non-zero on the first difference. CI does not run it (no Python there);
TensorBoardEventsTests decodes the same format in Swift.

Usage, from the repo root:
    swift run qlora train --max-steps 6 --eval-every 3 --max-len 64 --batch-size 2 --no-plan \\
        --report-to tensorboard --out /tmp/tb-run
    /work/venv-fixtures/bin/python tools/check_tensorboard.py /tmp/tb-run/tensorboard

Environment: /work/venv-fixtures (Python 3.11) with tensorboard==2.21.0 (protobuf 7.36.2).
"""
import argparse
import glob
import json
import math
import os
import struct
import sys

from tensorboard.backend.event_processing import event_accumulator
from tensorboard.backend.event_processing.event_file_loader import LegacyEventFileLoader


def f32(x):
    return struct.unpack("<f", struct.pack("<f", x))[0]


def expected_scalars(metrics_path):
    """tag -> [(step, float32 value)] from metrics.jsonl, in row order."""
    named = {"loss": "train/loss", "lr": "train/learning_rate", "grad_norm": "train/grad_norm",
             "tokens_per_s": "train/tokens_per_second", "update_s": "train/update_seconds", "rss_mb": "system/rss_mib"}
    not_scalars = {"step", "kind", "ema", "event", "tokens", "trained_tokens", "elapsed_s"}
    out = {}

    def add(tag, step, value):
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            out.setdefault(tag, []).append((step, f32(float(value))))

    with open(metrics_path) as f:
        for line in f:
            if not line.endswith("\n"):
                break  # a torn last write
            row = json.loads(line)
            step = row["step"]
            if "loss" in row:
                for key, tag in named.items():
                    add(tag, step, row.get(key))
                for key in sorted(row):
                    if key not in named and key not in not_scalars:
                        add("train/" + key, step, row[key])
            elif "val_loss" in row:
                prefix = "eval_quick/" if row.get("kind") == "quick" else "eval/"
                ema = row.get("ema") is True
                suffix = "_ema" if ema else ""
                add(prefix + "loss", step, row.get("val_loss_live") if ema else row["val_loss"])
                if ema:
                    add(prefix + "loss_ema", step, row["val_loss"])
                add(prefix + "perplexity" + suffix, step, row.get("val_ppl"))
                add(prefix + "accuracy" + suffix, step, row.get("val_accuracy"))
                for key in sorted(row):
                    if key.startswith("val_") and key not in ("val_loss", "val_loss_live", "val_ppl", "val_accuracy"):
                        add(prefix + key[4:] + suffix, step, row[key])
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("logdir", help="RUN/tensorboard (metrics.jsonl is read from its parent)")
    args = ap.parse_args()
    files = sorted(glob.glob(os.path.join(args.logdir, "*tfevents*")))
    assert files, f"{args.logdir}: no event files"
    for path in files:
        first = next(iter(LegacyEventFileLoader(path).Load()))
        assert first.file_version == "brain.Event:2", f"{path}: first event is {first}"

    acc = event_accumulator.EventAccumulator(args.logdir, size_guidance={event_accumulator.SCALARS: 0})
    acc.Reload()
    got = {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}
    want = expected_scalars(os.path.join(os.path.dirname(os.path.abspath(args.logdir)), "metrics.jsonl"))

    assert set(got) == set(want), f"tags: only in the events {sorted(set(got) - set(want))}, only in metrics.jsonl {sorted(set(want) - set(got))}"
    for tag in sorted(want):
        g, w = got[tag], want[tag]
        assert [s for s, _ in g] == [s for s, _ in w], f"{tag}: steps {[s for s, _ in g]} in the events, {[s for s, _ in w]} in metrics.jsonl"
        for (step, a), (_, b) in zip(g, w):
            assert a == b, f"{tag} at step {step}: {a!r} in the events, {b!r} (float32 of metrics.jsonl)"
    points = sum(len(v) for v in want.values())
    print(f"ok: {len(files)} event file(s), {len(want)} tags, {points} scalars equal to metrics.jsonl's: {', '.join(sorted(want))}")


if __name__ == "__main__":
    try:
        main()
    except AssertionError as e:
        print(f"FAIL: {e}", file=sys.stderr)
        sys.exit(1)
