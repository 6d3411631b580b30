#!/usr/bin/env python3
"""Side-by-side peer benchmark: LoRA training of SmolLM2-135M with PyTorch + PEFT on the CPU.

What qlora's own train step is compared against (DESIGN.md, "Peers measured here").  One
training step = forward + loss + backward + AdamW update on a batch of B sequences of T tokens;
the figure is B*T / (median step time).  Never run in CI: it needs torch, transformers, peft
and bitsandbytes, minutes per configuration and up to ~6 GiB of memory.

Modes (LoRA on q/k/v/o/gate/up/down_proj, rank r, lora_alpha = 2r, AdamW lr 2e-4):
  fp32       float32 base, every activation kept for backward
  fp32-ckpt  the same with gradient (activation) checkpointing, one checkpoint per layer
  nf4-ckpt   the QLoRA recipe: BitsAndBytesConfig(load_in_4bit, nf4, double quant, compute
             float32) base on the CPU, peft.prepare_model_for_kbit_training (which turns on
             checkpointing) -- bitsandbytes' default CPU path, dequantize_4bit to float32 +
             F.linear, since its bf16 path only runs for inference

The model: transformers reads the GGUF with gguf_file= and dequantizes it to float32.  bnb
cannot quantize a GGUF directly, so a first subprocess loads the GGUF once and save_pretrained's
the float32 model (and its tokenizer) into a work folder; every configuration then loads that
folder, as float32 or quantized to NF4 on load.  Each configuration runs in a fresh subprocess
so that peak RSS (resource.getrusage(RUSAGE_SELF).ru_maxrss) is its own; the load's peak is
reported apart from the whole run's.

Output: one JSON line per configuration on stdout, e.g.
  {"peer": "pytorch+peft", "mode": "fp32", "r": 8, "tokens_per_s": ..., "step_s_median": ...,
   "peak_rss_mib": ..., "load_peak_rss_mib": ..., "torch": "2.15.0", ...}
Progress goes to stderr.

Run (from the repo root, on a quiet machine; the venv is the one of make_model_fixtures.py
plus peft==0.21.2):
    /work/venv-fixtures/bin/python tools/bench_peers_train.py \
        --model models/SmolLM2-135M-Instruct.Q4_1.gguf --ranks 8,16,64 \
        --modes fp32,fp32-ckpt,nf4-ckpt --warmup 2 --steps 10 > peers-train.jsonl
    # real tokens instead of random ids:  --text /usr/share/common-licenses/GPL-3
Versions used when this was written: torch 2.15.0, transformers 5.23.0, peft 0.21.2,
bitsandbytes 0.50.2, Python 3.11.
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from fixture_common import SMOLLM2_GGUF, cpu_name, log, peak_rss_mib

MODES = ("fp32", "fp32-ckpt", "nf4-ckpt")
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


# ---------------------------------------------------------------- subprocess: GGUF -> fp32 folder
def convert(gguf: Path, out_dir: Path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    # The weights are already dequantized to float32; transformers still marks the model as
    # "quantized with gguf" and refuses to save it, so drop that mark.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(out_dir, safe_serialization=True)
    AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name).save_pretrained(out_dir)


# ---------------------------------------------------------------- subprocess: one configuration
def batches(args, model_dir: Path, steps: int):
    """steps batches of input ids [B, T]: random ids (seeded) or consecutive windows of --text."""
    import torch

    B, T = args.batch, args.seq
    if args.text is None:
        gen = torch.Generator().manual_seed(args.seed)
        vocab = args.vocab
        return [torch.randint(0, vocab, (B, T), generator=gen) for _ in range(steps)]
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    ids = tok(Path(args.text).read_text(encoding="utf-8"), return_tensors="pt").input_ids[0]
    need = steps * B * T
    if len(ids) < need:
        ids = ids.repeat(need // len(ids) + 1)
    return [ids[i * B * T:(i + 1) * B * T].reshape(B, T).clone() for i in range(steps)]


def run_one(args, model_dir: Path):
    import torch

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    import bitsandbytes as bnb
    import peft
    import transformers
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    t0 = time.perf_counter()
    if args.mode == "nf4-ckpt":
        qcfg = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.float32,
        )
        model = AutoModelForCausalLM.from_pretrained(
            model_dir, quantization_config=qcfg, device_map="cpu", dtype=torch.float32
        )
        # non-reentrant, as activation_checkpointing_enable() gives fp32-ckpt by default
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=True,
                                                gradient_checkpointing_kwargs={"use_reentrant": False})
    else:
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
        if args.mode == "fp32-ckpt":
            model.activation_checkpointing_enable()
    model.config.use_cache = False
    lcfg = LoraConfig(r=args.r, lora_alpha=2 * args.r, lora_dropout=args.lora_dropout,
                      target_modules=TARGETS, bias="none", task_type="CAUSAL_LM")
    model = get_peft_model(model, lcfg)
    model.train()
    load_s = time.perf_counter() - t0
    load_peak = peak_rss_mib()

    trainable = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(trainable, lr=args.lr)
    data = batches(args, model_dir, args.warmup + args.steps)
    times, losses = [], []
    for i, ids in enumerate(data):
        t = time.perf_counter()
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        dt = time.perf_counter() - t
        losses.append(loss.item())
        if i >= args.warmup:
            times.append(dt)
        log(f"  {args.mode} r{args.r} step {i + 1}/{len(data)}{' (warmup)' if i < args.warmup else ''}: "
            f"{dt:.2f} s, loss {losses[-1]:.4f}")

    med = statistics.median(times)
    print(json.dumps({
        "peer": "pytorch+peft",
        "mode": args.mode,
        "r": args.r,
        "lora_alpha": 2 * args.r,
        "lora_dropout": args.lora_dropout,
        "batch": args.batch,
        "seq": args.seq,
        "tokens": "random" if args.text is None else Path(args.text).name,
        "threads": args.threads,
        "warmup": args.warmup,
        "steps": args.steps,
        "tokens_per_s": round(args.batch * args.seq / med, 2),
        "step_s_median": round(med, 4),
        "step_s": [round(x, 4) for x in times],
        "loss_first": round(losses[0], 5),
        "loss_last": round(losses[-1], 5),
        "trainable_params": sum(p.numel() for p in trainable),
        "load_s": round(load_s, 2),
        "load_peak_rss_mib": round(load_peak, 1),
        "peak_rss_mib": round(peak_rss_mib(), 1),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
        "bitsandbytes": bnb.__version__,
        "cpu": cpu_name(),
        "torch_threads": torch.get_num_threads(),
    }), flush=True)


# ---------------------------------------------------------------- driver
def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", type=Path, default=SMOLLM2_GGUF,
                   help="GGUF file (default: models/SmolLM2-135M-Instruct.Q4_1.gguf)")
    p.add_argument("--ranks", default="8,16,64", help="comma-separated LoRA ranks r (alpha = 2r)")
    p.add_argument("--modes", default=",".join(MODES), help=f"comma-separated, of {', '.join(MODES)}")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--seq", type=int, default=256)
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    p.add_argument("--steps", type=int, default=10, help="timed steps (median reported)")
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--lora-dropout", type=float, default=0.05,
                   help="PEFT lora_dropout (the QLoRA paper's 0.05; its masks cost ~13%% of a step)")
    p.add_argument("--text", default=None, help="train on consecutive windows of this text file's "
                   "tokens instead of random ids")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--vocab", type=int, default=49152, help="random ids are drawn below this")
    p.add_argument("--work-dir", type=Path, default=None,
                   help="keep the converted float32 folder here (default: a temp dir, removed)")
    # internal: what a child subprocess runs
    p.add_argument("--convert-to", type=Path, default=None, help=argparse.SUPPRESS)
    p.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--mode", default=None, help=argparse.SUPPRESS)
    p.add_argument("--r", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--model-dir", type=Path, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    for m in args.modes.split(","):
        if m not in MODES:
            p.error(f"--modes: unknown mode {m!r}; choose from {', '.join(MODES)}")
    if args.steps < 1 or args.warmup < 0:
        p.error("--steps must be >= 1 and --warmup >= 0")
    return args


def child_env(threads: int) -> dict:
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), TOKENIZERS_PARALLELISM="false")
    return env


def main():
    args = parse_args()
    if args.convert_to is not None:
        convert(args.model, args.convert_to)
        return
    if args.one:
        run_one(args, args.model_dir)
        return

    if not args.model.is_file():
        sys.exit(f"bench_peers_train: no GGUF at {args.model}; pass --model")
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="bench-peers-train-"))
    model_dir = work / "fp32"
    me = [sys.executable, str(Path(__file__).resolve())]
    common = ["--model", str(args.model), "--batch", str(args.batch), "--seq", str(args.seq),
              "--warmup", str(args.warmup), "--steps", str(args.steps), "--threads", str(args.threads),
              "--lr", str(args.lr), "--lora-dropout", str(args.lora_dropout), "--seed", str(args.seed),
              "--vocab", str(args.vocab)] + (["--text", args.text] if args.text else [])
    env = child_env(args.threads)
    try:
        if not (model_dir / "config.json").exists():
            log(f"converting {args.model.name} to float32 safetensors in {model_dir}")
            subprocess.run(me + ["--model", str(args.model), "--convert-to", str(model_dir)], env=env, check=True)
        for mode in args.modes.split(","):
            for r in (int(x) for x in args.ranks.split(",")):
                log(f"{mode} r{r}")
                res = subprocess.run(me + common + ["--one", "--mode", mode, "--r", str(r),
                                                    "--model-dir", str(model_dir)],
                                     env=env, stdout=subprocess.PIPE, text=True)
                if res.returncode != 0:
                    log(f"{mode} r{r}: failed with exit code {res.returncode}")
                    print(json.dumps({"peer": "pytorch+peft", "mode": mode, "r": r,
                                      "error": f"exit code {res.returncode}"}), flush=True)
                    continue
                sys.stdout.write(res.stdout)
                sys.stdout.flush()
    finally:
        if args.work_dir is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
