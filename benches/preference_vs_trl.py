#!/usr/bin/env python3
"""Preference training, qlora beside TRL: reward modelling or DPO on data/demo-preferences.

Both sides train LoRA adapters on SmolLM2-135M-Instruct with the same settings and report, for
the same 80 held-out pairs:

  accuracy     share of val pairs the chosen side wins: reward, r(chosen) > r(rejected);
               DPO, implicit reward margin beta*[(log pi - log ref)(chosen) - (...)(rejected)] > 0
               (a tie counts as a loss; the untrained DPO policy scores 0)
  tokens/s     sequence tokens processed per second of training, both sides of each pair,
               padding NOT counted (TRL: the attention-mask sum of each step; DPO's prompt is
               counted once per side, as the model sees it).  Median of the per-step figures,
               and the aggregate (all tokens / all step time) beside it.  pairs/s is given too:
               it does not depend on how either side counts tokens.
  wall time    of the whole training process (load, tokenize, train, final eval) and of the
               training steps alone
  peak RSS     of the training process: os.wait4's rusage of that child (ru_maxrss)

Settings (both sides): LoRA r 16, alpha 32, dropout 0.05 on q/k/v/o/gate/up/down_proj; AdamW
(weight decay 0, betas 0.9/0.999), lr --lr (default 1e-4 for reward, 2e-4 for DPO), cosine,
warm-up ceil(0.03 x updates) steps, grad clip 1.0; 4 pairs per step, max length 256, one epoch
(100 updates) or --max-steps; seed 42; float32 compute; no gradient checkpointing
(--grad-checkpoint turns it on for both); 2 threads.
  reward  TRL RewardTrainer, AutoModelForSequenceClassification(num_labels=1) + PEFT LoRA
          task_type SEQ_CLS (the fresh "score" head, normal(0, 0.02), trains in full as PEFT's
          modules_to_save); reward = score at the last non-pad token (the "\\n" after the
          assistant's <|im_end|>); loss -log sigmoid(r_c - r_r).
  dpo     TRL DPOTrainer, AutoModelForCausalLM + PEFT LoRA task_type CAUSAL_LM, ref_model None
          (the reference is the base: adapters disabled), beta 0.1, loss sigmoid; log-probs
          summed over the completion tokens ("X. answer<|im_end|>\\n"), prompt masked.  The
          reference log-probs are precomputed once over the data (precompute_ref_log_probs, in
          TRL's set-up time), as qlora caches them before its first update; --ref-per-step gives
          TRL's default, a reference forward in every update (~1/3 more work per update).
TRL's model: the float32 folder tools/bench_peers_train.py makes from the GGUF (converted once
into --work-dir, default runs/preference-bench/fp32).  TRL applies SmolLM2's ChatML template to
the conversational rows itself.  TRL's own dropout switch (disable_dropout) is off, as it would
zero the LoRA dropout too.

qlora runs as `qlora train --objective ...` then `qlora score` (see qlora_train_cmd and
qlora_score_cmd: the only lines that name qlora's flags and files).

Run (repo root; at one epoch up to ~10 min per side per objective on 2 idle cores):
    /work/venv-fixtures/bin/python benches/preference_vs_trl.py --objective reward \\
        --json-out runs/preference-bench/reward.json
    ... --objective dpo --only trl --max-steps 20      # TRL alone, a short check
benches/preference.sh runs both objectives.  Progress goes to stderr; the table to stdout.
Versions used when this was written: trl 1.16.0, torch 2.15.0, transformers 5.23.0, peft 0.21.2.

TRL measured when this was written (AMD EPYC, 2 cores, 2 threads; updates while the cores were
otherwise idle, first update apart): reward 3.15 s/update, ~190 tok/s (1.28 pairs/s), first
update 4.0 s, peak RSS 4.0 GiB, held-out accuracy 0.46 after 20 updates (chance: 20 x 4 pairs is
little); DPO with the reference forward in each update (--ref-per-step) 5.8 s/update, ~100 tok/s
(0.66 pairs/s), first 8.2 s, peak RSS 4.6 GiB; the reference pass alone 1.7 s per 4 pairs (so
~3 min to precompute it for the 400 pairs, and ~4 s/update after).  One epoch: reward ~6 min,
DPO ~10 min per side.  Another job on the same 2 cores slows TRL 5-8x (OpenMP threads contend):
the table warns when it saw one.
"""

import argparse
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))
from bench_peers_train import TARGETS, child_env  # noqa: E402
from fixture_common import SMOLLM2_GGUF, cpu_name, log  # noqa: E402

TRAIN = ROOT / "data" / "demo-preferences" / "train.jsonl"
VAL = ROOT / "data" / "demo-preferences" / "val.jsonl"
QLORA_BIN = ROOT / ".build" / "release" / "qlora"
DEFAULT_LR = {"reward": 1e-4, "dpo": 2e-4}
PAIRS_PER_STEP = 4
MAX_LEN = 256
LORA = dict(r=16, alpha=32, dropout=0.05)
BETA = 0.1
SEED = 42
WARMUP_RATIO = 0.03
MAX_GRAD_NORM = 1.0


def lscpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.CalledProcessError):
        pass
    return cpu_name()


def count_lines(path: Path) -> int:
    return sum(1 for line in path.read_text(encoding="utf-8").splitlines() if line.strip())


def plan(args) -> dict:
    """The run both sides share: updates, warm-up steps, lr."""
    pairs = count_lines(args.train)
    steps = args.max_steps or math.ceil(pairs / PAIRS_PER_STEP)
    return {"updates": steps, "warmup_steps": math.ceil(WARMUP_RATIO * steps), "lr": args.lr,
            "train_pairs": pairs, "val_pairs": count_lines(args.val)}


def cpu_busy(seconds: float = 5.0) -> float:
    """Share of all cores' time spent busy over the next few seconds (/proc/stat)."""
    def sample():
        f = [int(x) for x in open("/proc/stat").readline().split()[1:]]
        return sum(f), f[3] + f[4]  # total, idle + iowait
    t0, i0 = sample()
    time.sleep(seconds)
    t1, i1 = sample()
    return 1 - (i1 - i0) / max(1, t1 - t0)


def wait_idle(limit_s: float, threshold: float = 0.2):
    """Waits (up to limit_s) until the cores have been under threshold busy for three 5-second
    samples in a row: another job on the same cores slows both sides, the OpenMP one most.
    Returns the last busy share measured."""
    end, quiet, busy = time.time() + limit_s, 0, cpu_busy(1.0)
    while limit_s > 0 and quiet < 3 and time.time() < end:
        busy = cpu_busy()
        quiet = quiet + 1 if busy < threshold else 0
        if quiet == 0:
            log(f"waiting for idle cores: {busy:.0%} busy")
    return busy


def run_measured(cmd, env=None, stdout=None, cwd=ROOT):
    """Runs cmd; returns (exit code, wall seconds, peak RSS MiB of that child, from wait4)."""
    t = time.perf_counter()
    p = subprocess.Popen(cmd, env=env, stdout=stdout, cwd=cwd)
    _, status, ru = os.wait4(p.pid, 0)
    p.returncode = os.waitstatus_to_exitcode(status)
    return p.returncode, time.perf_counter() - t, ru.ru_maxrss / 1024.0  # Linux: KiB


# ================================================================ TRL (runs in a child process)
class StepTimer:
    """A TrainerCallback (made a subclass on first use: transformers is imported in the child only)
    timing each update (forward + backward + clip + AdamW) and the non-pad tokens it saw."""

    @staticmethod
    def make(trainer_ref):
        from transformers import TrainerCallback

        class _Timer(TrainerCallback):
            def __init__(self):
                self.steps, self.load, self._t, self._tok = [], [], None, 0

            def on_step_begin(self, args, state, control, **kw):
                self._t = time.perf_counter()
                self._tok = trainer_ref[0]._total_train_tokens

            def on_step_end(self, args, state, control, **kw):
                dt = time.perf_counter() - self._t
                tokens = trainer_ref[0]._total_train_tokens - self._tok
                self.steps.append((dt, tokens))
                log(f"  update {state.global_step}: {dt:.2f} s, {tokens} tokens, {tokens / dt:.0f} tok/s, "
                    f"load average {os.getloadavg()[0]:.2f}")
                self.load.append(os.getloadavg()[0])

        return _Timer()


def load_pairs(path: Path):
    from datasets import Dataset

    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return Dataset.from_list(rows)


def trl_margins(trainer, objective: str, beta: float, batch_pairs: int = PAIRS_PER_STEP) -> list:
    """Per val pair, what decides it: reward, r(chosen) - r(rejected); DPO, the implicit reward
    margin beta * [(log pi - log ref)(chosen) - (log pi - log ref)(rejected)], the reference being
    the policy with its adapters disabled.  Batches are made by the trainer's own collator (chosen
    rows first, then rejected), so the sequences are TRL's."""
    import torch

    model = trainer.model
    model.eval()
    data = list(trainer.eval_dataset)
    out = []

    def completion_logps(batch):
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1].float()
        targets = batch["input_ids"][:, 1:]
        lp = logits.gather(2, targets[..., None])[..., 0] - torch.logsumexp(logits, -1)
        return (lp * batch["completion_mask"][:, 1:]).sum(1)

    with torch.no_grad():
        for i in range(0, len(data), batch_pairs):
            batch = trainer.data_collator(data[i:i + batch_pairs])
            if objective == "reward":
                r = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, 0]
                c, rj = r.chunk(2)
                out += (c - rj).tolist()
            else:
                pol = completion_logps(batch)
                with model.disable_adapter():
                    ref = completion_logps(batch)
                c, rj = (pol - ref).chunk(2)
                out += (beta * (c - rj)).tolist()
    return out


def trl_child(args):
    import torch

    torch.set_num_threads(args.threads)
    import peft
    import transformers
    import trl
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

    t0 = time.perf_counter()
    p = json.loads(args.plan_json)
    common = dict(
        output_dir=str(args.out_dir), per_device_train_batch_size=PAIRS_PER_STEP, per_device_eval_batch_size=PAIRS_PER_STEP,
        learning_rate=p["lr"], lr_scheduler_type="cosine", warmup_steps=p["warmup_steps"], weight_decay=0.0,
        optim="adamw_torch", max_grad_norm=MAX_GRAD_NORM, max_steps=p["updates"], num_train_epochs=1,
        seed=SEED, data_seed=SEED, bf16=False, fp16=False, use_cpu=True,
        gradient_checkpointing=args.grad_checkpoint, logging_steps=1, save_strategy="no",
        eval_strategy="no", report_to="none", dataloader_num_workers=0, disable_dropout=False,
        max_length=MAX_LEN,
    )
    lora = dict(r=LORA["r"], lora_alpha=LORA["alpha"], lora_dropout=LORA["dropout"], target_modules=TARGETS, bias="none")
    tok = AutoTokenizer.from_pretrained(args.model_dir)
    train_ds, val_ds = load_pairs(args.train), load_pairs(args.val)
    transformers.set_seed(SEED)  # the score head's init
    ref = [None]
    timer = StepTimer.make(ref)
    if args.objective == "reward":
        model = AutoModelForSequenceClassification.from_pretrained(args.model_dir, num_labels=1, dtype=torch.float32)
        cfg = trl.RewardConfig(**common)
        trainer = trl.RewardTrainer(model=model, args=cfg, train_dataset=train_ds, eval_dataset=val_ds,
                                    processing_class=tok, peft_config=LoraConfig(task_type="SEQ_CLS", **lora),
                                    callbacks=[timer])
    else:
        model = AutoModelForCausalLM.from_pretrained(args.model_dir, dtype=torch.float32)
        cfg = trl.DPOConfig(**common, beta=BETA, loss_type=["sigmoid"],
                            precompute_ref_log_probs=not args.ref_per_step)
        trainer = trl.DPOTrainer(model=model, ref_model=None, args=cfg, train_dataset=train_ds, eval_dataset=val_ds,
                                 processing_class=tok, peft_config=LoraConfig(task_type="CAUSAL_LM", **lora),
                                 callbacks=[timer])
    ref[0] = trainer
    setup_s = time.perf_counter() - t0
    trainable = sum(x.numel() for x in trainer.model.parameters() if x.requires_grad)
    log(f"TRL {args.objective}: set up in {setup_s:.1f} s, {trainable} trainable parameters, "
        f"{p['updates']} updates")

    t1 = time.perf_counter()
    out = trainer.train()
    train_s = time.perf_counter() - t1
    import resource
    rss_after_train = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0

    t2 = time.perf_counter()
    margins = trl_margins(trainer, args.objective, BETA)
    eval_s = time.perf_counter() - t2

    times = [dt for dt, _ in timer.steps]
    toks = [n for _, n in timer.steps]
    per_step = [n / dt for dt, n in timer.steps]
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    res = {
        "side": "trl",
        "accuracy": sum(m > 0 for m in margins) / len(margins),
        "val_pairs": len(margins),
        "val_mean_margin": statistics.fmean(margins),
        "updates": len(times),
        "tokens": sum(toks),
        "tokens_per_s": statistics.median(per_step),
        "tokens_per_s_aggregate": sum(toks) / sum(times),
        "tokens_per_s_after_first": sum(toks[1:]) / sum(times[1:]) if len(times) > 1 else None,
        "pairs_per_s": PAIRS_PER_STEP * len(times) / sum(times),
        "step_s_median": statistics.median(times),
        "step_s_first": times[0],
        "step_s_min": min(times),
        "tokens_per_s_max": max(per_step),
        "train_s": train_s,
        "setup_s": setup_s,
        "eval_s": eval_s,
        "loss_first": losses[0] if losses else None,
        "loss_last": losses[-1] if losses else None,
        "train_loss_mean": out.training_loss,
        "trainable_params": trainable,
        "peak_rss_after_train_mib": rss_after_train,
        "versions": {"trl": trl.__version__, "torch": torch.__version__, "transformers": transformers.__version__,
                     "peft": peft.__version__},
        "torch_threads": torch.get_num_threads(),
        "load_avg_1m_max_during_updates": max(timer.load) if timer.load else None,
    }
    args.result_file.write_text(json.dumps(res, indent=1) + "\n")


def run_trl(args, p) -> dict:
    model_dir = args.work_dir / "fp32"
    env = child_env(args.threads)
    if not (model_dir / "config.json").exists():
        log(f"converting {args.model.name} to a float32 folder in {model_dir}")
        subprocess.run([sys.executable, str(ROOT / "tools" / "bench_peers_train.py"), "--model", str(args.model),
                        "--convert-to", str(model_dir)], env=env, check=True)
    out_dir = args.work_dir / f"trl-{args.objective}"
    shutil.rmtree(out_dir, ignore_errors=True)
    out_dir.mkdir(parents=True)
    result = out_dir / "result.json"
    cmd = [sys.executable, str(Path(__file__).resolve()), "--trl-child", "--objective", args.objective,
           "--model-dir", str(model_dir), "--out-dir", str(out_dir), "--result-file", str(result),
           "--train", str(args.train), "--val", str(args.val), "--threads", str(args.threads),
           "--plan-json", json.dumps(p)] + (["--grad-checkpoint"] if args.grad_checkpoint else []) \
        + (["--ref-per-step"] if args.ref_per_step else [])
    log(f"TRL {args.objective}: {p['updates']} updates")
    load = os.getloadavg()[0]
    rc, wall, rss = run_measured(cmd, env=env, stdout=sys.stderr)
    if rc != 0:
        return {"side": "trl", "error": f"exit code {rc}"}
    res = json.loads(result.read_text())
    res.update(wall_s=wall, peak_rss_mib=rss, load_avg_1m_before=load, load_avg_1m_after=os.getloadavg()[0])
    return res


# ================================================================ qlora
def qlora_train_cmd(args, p, run_dir: Path) -> list:
    """`qlora train` with the same settings; the flags beyond the brief's list only pin defaults."""
    cmd = [str(args.qlora_bin), "train", "--objective", args.objective, "--model", str(args.model),
           "--data", str(args.train), "--val-file", str(args.val),
           "--batch-size", str(PAIRS_PER_STEP), "--max-len", str(MAX_LEN),
           "--lora-r", str(LORA["r"]), "--lora-alpha", str(LORA["alpha"]), "--lora-dropout", str(LORA["dropout"]),
           "--lora-targets", ",".join(TARGETS), "--lr", repr(p["lr"]), "--schedule", "cosine",
           "--warmup-steps", str(p["warmup_steps"]), "--max-grad-norm", str(MAX_GRAD_NORM), "--weight-decay", "0",
           "--seed", str(SEED), "--ema", "0", "--no-plan", "--out", str(run_dir), "--overwrite",
           "--max-steps", str(p["updates"])]
    if args.objective == "dpo":
        cmd += ["--beta", str(BETA)]
    if args.grad_checkpoint:
        cmd += ["--grad-checkpoint"]
    return cmd


def qlora_score_cmd(args, run_dir: Path) -> list:
    return [str(args.qlora_bin), "score", "--model", str(args.model), "--adapter", str(run_dir / "lora_final"),
            "--data", str(args.val), "--json"]


def read_metrics(run_dir: Path):
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    train = [r for r in rows if "loss" in r and "tokens_per_s" in r]
    evals = [r for r in rows if "val_loss" in r]
    return train, evals


def run_qlora(args, p) -> dict:
    run_dir = args.work_dir / f"qlora-{args.objective}"
    env = child_env(args.threads)
    cmd = qlora_train_cmd(args, p, run_dir)
    log("qlora: " + " ".join(cmd))
    load = os.getloadavg()[0]
    rc, wall, rss = run_measured(cmd, env=env, stdout=sys.stderr)
    if rc != 0:
        return {"side": "qlora", "error": f"qlora train: exit code {rc}"}
    train, evals = read_metrics(run_dir)
    res = {"side": "qlora", "wall_s": wall, "peak_rss_mib": rss, "updates": len(train),
           "load_avg_1m_before": load, "load_avg_1m_after": os.getloadavg()[0]}
    if train:
        # Each row: "tokens" (the update's tokens, padding not counted) and "update_s" (its seconds),
        # so speeds and the training time leave out loading, evaluations and DPO's reference pass.
        secs = [r["update_s"] for r in train]
        speeds = [r["tokens"] / r["update_s"] for r in train]
        res.update(tokens_per_s=statistics.median(speeds), loss_first=train[0]["loss"], loss_last=train[-1]["loss"],
                   peak_rss_row_mb=max(r.get("rss_mb", 0) for r in train),
                   tokens_per_s_aggregate=sum(r["tokens"] for r in train) / sum(secs), step_s_median=statistics.median(secs),
                   train_s=sum(secs), pairs_per_s=PAIRS_PER_STEP * len(train) / sum(secs))
    if evals:
        last = evals[-1]
        res.update(val_loss=last.get("val_loss"), metrics_val_accuracy=last.get("val_accuracy"))
    cmd = qlora_score_cmd(args, run_dir)
    log("qlora: " + " ".join(cmd))
    sc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    if sc.returncode == 0:
        score = json.loads(sc.stdout.strip().splitlines()[-1])
        res.update(accuracy=score.get("accuracy"), val_pairs=score.get("pairs"))
    else:
        log(sc.stderr)
        res["score_error"] = f"qlora score: exit code {sc.returncode}"
        res["accuracy"] = res.get("metrics_val_accuracy")
    return res


# ================================================================ report
def fmt(v, spec):
    return "-" if v is None else format(v, spec)


def table(results) -> str:
    cols = [("accuracy", "held-out acc", ".3f"), ("tokens_per_s", "tok/s (median)", ".0f"),
            ("tokens_per_s_aggregate", "tok/s (all)", ".0f"), ("pairs_per_s", "pairs/s", ".2f"),
            ("step_s_median", "s/step", ".2f"), ("train_s", "train s", ".1f"), ("wall_s", "wall s", ".1f"),
            ("peak_rss_mib", "peak RSS MiB", ".0f"), ("loss_last", "last loss", ".4f")]
    lines = ["side   " + "".join(f"{h:>15}" for _, h, _ in cols)]
    for r in results:
        if "error" in r:
            lines.append(f"{r['side']:<7}{r['error']}")
            continue
        lines.append(f"{r['side']:<7}" + "".join(f"{fmt(r.get(k), s):>15}" for k, _, s in cols))
    return "\n".join(lines)


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--objective", choices=("reward", "dpo"), required=True)
    ap.add_argument("--only", choices=("trl", "qlora"), default=None, help="run one side only")
    ap.add_argument("--max-steps", type=int, default=0, help="updates (default 0: one epoch, 100 updates)")
    ap.add_argument("--lr", type=float, default=None, help="peak lr, both sides (default: reward 1e-4, dpo 2e-4)")
    ap.add_argument("--model", type=Path, default=SMOLLM2_GGUF, help="the GGUF (default models/SmolLM2-135M-Instruct.Q4_1.gguf)")
    ap.add_argument("--train", type=Path, default=TRAIN)
    ap.add_argument("--val", type=Path, default=VAL)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--grad-checkpoint", action="store_true", help="gradient checkpointing on both sides")
    ap.add_argument("--ref-per-step", action="store_true",
                    help="dpo: TRL runs the reference forward in every update (its default) instead of "
                         "precomputing the reference log-probs once before training, as qlora does")
    ap.add_argument("--work-dir", type=Path, default=ROOT / "runs" / "preference-bench",
                    help="the float32 model folder and the runs (default runs/preference-bench)")
    ap.add_argument("--wait-idle", type=float, default=0, metavar="SECONDS",
                    help="before each side, wait up to this long for idle cores (under 20%% busy for 15 s)")
    ap.add_argument("--skip-build", action="store_true", help="don't run swift build first")
    ap.add_argument("--qlora-bin", type=Path, default=QLORA_BIN,
                    help="the qlora executable (default .build/release/qlora, which is built first unless --skip-build)")
    ap.add_argument("--json-out", type=Path, default=None, help="write the summary here")
    # internal: the TRL child
    ap.add_argument("--trl-child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--model-dir", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--out-dir", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--result-file", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--plan-json", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.lr is None:
        args.lr = DEFAULT_LR[args.objective]
    if args.max_steps < 0:
        ap.error("--max-steps must be >= 0")
    args.model, args.train, args.val, args.work_dir, args.qlora_bin = (
        x.resolve() for x in (args.model, args.train, args.val, args.work_dir, args.qlora_bin))
    return args


def main():
    args = parse_args()
    if args.trl_child:
        trl_child(args)
        return
    if not args.model.is_file():
        sys.exit(f"preference_vs_trl: no GGUF at {args.model}; run tools/setup.sh or pass --model")
    args.work_dir.mkdir(parents=True, exist_ok=True)
    p = plan(args)
    cpu = lscpu_model()
    log(f"{args.objective}: {p['updates']} updates of {PAIRS_PER_STEP} pairs, warm-up {p['warmup_steps']}, "
        f"lr {p['lr']}, on {cpu}")
    results = []
    if args.only in (None, "trl"):
        busy = wait_idle(args.wait_idle)
        results.append(run_trl(args, p))
        results[-1]["cpu_busy_before"] = busy
    if args.only in (None, "qlora"):
        if not args.skip_build and args.qlora_bin == QLORA_BIN:
            log("swift build -c release --product qlora")
            subprocess.run(["swift", "build", "-c", "release", "--product", "qlora"], cwd=ROOT, check=True,
                           stdout=sys.stderr)
        busy = wait_idle(args.wait_idle)
        results.append(run_qlora(args, p))
        results[-1]["cpu_busy_before"] = busy

    dpo_settings = {"beta": BETA, "loss": "sigmoid",
                    "trl_reference": "per update" if args.ref_per_step else "precomputed once, in set-up"}
    if args.objective != "dpo":
        dpo_settings = {}
    summary = {
        "objective": args.objective,
        "cpu": cpu,
        "threads": args.threads,
        "settings": {**p, "pairs_per_step": PAIRS_PER_STEP, "max_len": MAX_LEN, "lora_r": LORA["r"],
                     "lora_alpha": LORA["alpha"], "lora_dropout": LORA["dropout"], "targets": TARGETS,
                     "schedule": "cosine", "max_grad_norm": MAX_GRAD_NORM, "weight_decay": 0.0, "seed": SEED,
                     "grad_checkpoint": args.grad_checkpoint, **dpo_settings},
        "tokens_note": "tokens/s: sequence tokens of both sides of each pair per second of training steps, "
                       "padding not counted (TRL: attention-mask sum per step; qlora: its metrics rows' tokens / update_s)",
        "accuracy_note": ("reward: share of val pairs with r(chosen) > r(rejected)" if args.objective == "reward"
                          else "dpo: share of val pairs with implicit reward margin > 0 (beta 0.1, reference = base)"),
        "results": results,
    }
    print(f"{args.objective} on demo-preferences ({p['train_pairs']} train / {p['val_pairs']} val pairs), "
          f"{p['updates']} updates x {PAIRS_PER_STEP} pairs, lr {p['lr']}, {args.threads} threads, CPU: {cpu}")
    print(table(results))
    print("tokens/s: sequence tokens (both sides of each pair) per second of training steps, padding not counted")
    busy = [r["side"] for r in results if r.get("cpu_busy_before", 0) >= 0.2 or r.get("load_avg_1m_after", 0) >= 3]
    if busy:
        print(f"warning: other work shared the cores during {', '.join(busy)} (busy share before, 1-min load "
              "average after: see the JSON); these timings are not an idle machine's (--wait-idle SECONDS waits for one)")
    if args.json_out:
        args.json_out.parent.mkdir(parents=True, exist_ok=True)
        args.json_out.write_text(json.dumps(summary, indent=1) + "\n")
        log(f"wrote {args.json_out}")
    if any("error" in r for r in results):
        sys.exit(1)


if __name__ == "__main__":
    main()
