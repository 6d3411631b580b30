#!/usr/bin/env python3
"""Side-by-side peer benchmark: inference speed of SmolLM2-135M on the CPU, for `qlora bench model`.

Peers and tests (tokens/s = tokens / median wall time over --repeats runs, after one warmup):
  llama.cpp  via llama-cpp-python, on the GGUF as it is (Q4_1 linears), n_threads = --threads:
               pp512  prompt evaluation of 512 tokens in one batch (n_batch = n_ubatch = 512)
               tg128  128 tokens decoded one at a time from an empty context (positions
                      0..127), no sampling: the same two tests as llama-bench's defaults
  pytorch    transformers reads the GGUF with gguf_file= (dequantized to float32), fp32, its
             default attention (sdpa), torch.set_num_threads(--threads):
               forward512  one forward of a 512-token prompt, logits of the last position only
Tokens are random ids (seeded), as llama-bench uses.  Each peer runs in its own subprocess,
with its own Python (the two need different venvs), so peak RSS
(resource.getrusage(RUSAGE_SELF).ru_maxrss, which includes the mmapped model pages touched) is
that peer's alone.  For pytorch the GGUF dequantizing load is usually the peak
(load_peak_rss_mib); rss_end_mib is the resident size after the timed forwards.

Output: one JSON line per peer and test on stdout, e.g.
  {"peer": "llama.cpp", "test": "pp512", "tokens_per_s": ..., "run_s": [...],
   "peak_rss_mib": ..., "threads": 2, "llama_cpp_python": "0.3.36", ...}
Progress goes to stderr.  Never run in CI (needs llama-cpp-python and torch, and minutes).

Set-up (llama-cpp-python builds llama.cpp from source: ~15-20 min on 2 cores; keep it out of the
fixture venv):
    python3 -m venv /work/venv-llamacpp
    CMAKE_BUILD_PARALLEL_LEVEL=2 /work/venv-llamacpp/bin/pip install llama-cpp-python==0.3.36
    # the torch side is the venv of make_model_fixtures.py (torch 2.15.0, transformers 5.23.0)
Run (from the repo root, on a quiet machine):
    /work/venv-fixtures/bin/python tools/bench_peers_inference.py \
        --model models/SmolLM2-135M-Instruct.Q4_1.gguf \
        --llamacpp-python /work/venv-llamacpp/bin/python --repeats 3 > peers-inference.jsonl
"""

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

from fixture_common import SMOLLM2_GGUF, cpu_name, log, peak_rss_mib

PEERS = ("llamacpp", "pytorch")


def current_rss_mib() -> float:
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024.0  # kB
    return float("nan")


def timed(fn, repeats: int):
    """One untimed warmup, then `repeats` wall times of fn()."""
    fn()
    out = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def record(peer, test, n_tokens, times, args, **extra):
    med = statistics.median(times)
    return {
        "peer": peer,
        "test": test,
        "tokens_per_s": round(n_tokens / med, 2),
        "run_s_median": round(med, 4),
        "run_s": [round(t, 4) for t in times],
        "repeats": args.repeats,
        "threads": args.threads,
        "model": args.model.name,
        "cpu": cpu_name(),
        **extra,
    }


# ---------------------------------------------------------------- subprocess: llama.cpp
def run_llamacpp(args):
    import llama_cpp
    from llama_cpp import Llama

    n_ctx = args.n_prompt + args.n_gen + 8
    llm = Llama(model_path=str(args.model), n_ctx=n_ctx, n_batch=args.n_prompt, n_ubatch=args.n_prompt,
                n_threads=args.threads, n_threads_batch=args.threads, logits_all=False, verbose=False)
    rng = random.Random(args.seed)
    vocab = llm.n_vocab()
    prompt = [rng.randrange(vocab) for _ in range(args.n_prompt)]
    gen = [rng.randrange(vocab) for _ in range(args.n_gen)]

    def pp():
        llm.reset()
        llm.eval(prompt)

    def tg():
        llm.reset()
        for tok in gen:
            llm.eval([tok])

    extra = {"llama_cpp_python": llama_cpp.__version__,
             "system_info": llama_cpp.llama_print_system_info().decode(errors="replace").strip()}
    log(f"  llama.cpp pp{args.n_prompt}")
    t_pp = timed(pp, args.repeats)
    log(f"  llama.cpp tg{args.n_gen}")
    t_tg = timed(tg, args.repeats)
    rss = round(peak_rss_mib(), 1)
    print(json.dumps(record("llama.cpp", f"pp{args.n_prompt}", args.n_prompt, t_pp, args,
                            peak_rss_mib=rss, **extra)), flush=True)
    print(json.dumps(record("llama.cpp", f"tg{args.n_gen}", args.n_gen, t_tg, args,
                            peak_rss_mib=rss, **extra)), flush=True)


# ---------------------------------------------------------------- subprocess: PyTorch
def run_pytorch(args):
    import torch

    torch.set_num_threads(args.threads)
    import transformers
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(args.model.parent), gguf_file=args.model.name,
                                                 dtype=torch.float32).eval()
    load_peak = round(peak_rss_mib(), 1)
    gen = torch.Generator().manual_seed(args.seed)
    ids = torch.randint(0, model.config.vocab_size, (1, args.n_prompt), generator=gen)

    def fwd():
        with torch.inference_mode():
            out = model(input_ids=ids, use_cache=False, logits_to_keep=1)
        assert out.logits.shape[1] == 1

    log(f"  pytorch forward{args.n_prompt}")
    times = timed(fwd, args.repeats)
    print(json.dumps(record("pytorch", f"forward{args.n_prompt}", args.n_prompt, times, args,
                            peak_rss_mib=round(peak_rss_mib(), 1), load_peak_rss_mib=load_peak,
                            rss_end_mib=round(current_rss_mib(), 1), dtype="float32",
                            attention=model.config._attn_implementation, torch=torch.__version__,
                            transformers=transformers.__version__,
                            torch_threads=torch.get_num_threads())), flush=True)


# ---------------------------------------------------------------- driver
def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", type=Path, default=SMOLLM2_GGUF,
                   help="GGUF file (default: models/SmolLM2-135M-Instruct.Q4_1.gguf)")
    p.add_argument("--peers", default=",".join(PEERS), help=f"comma-separated, of {', '.join(PEERS)}")
    p.add_argument("--repeats", type=int, default=3, help="timed runs per test (median reported)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--n-prompt", type=int, default=512, help="prompt tokens (pp / forward test)")
    p.add_argument("--n-gen", type=int, default=128, help="generated tokens (tg test)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--llamacpp-python", default=sys.executable,
                   help="Python with llama-cpp-python installed (default: this one)")
    p.add_argument("--torch-python", default=sys.executable,
                   help="Python with torch + transformers + gguf installed (default: this one)")
    p.add_argument("--one", choices=PEERS, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    for peer in args.peers.split(","):
        if peer not in PEERS:
            p.error(f"--peers: unknown peer {peer!r}; choose from {', '.join(PEERS)}")
    if args.repeats < 1 or args.threads < 1 or args.n_prompt < 1 or args.n_gen < 1:
        p.error("--repeats, --threads, --n-prompt and --n-gen must be >= 1")
    args.model = args.model.resolve()
    return args


def main():
    args = parse_args()
    if args.one == "llamacpp":
        run_llamacpp(args)
        return
    if args.one == "pytorch":
        run_pytorch(args)
        return
    if not args.model.is_file():
        sys.exit(f"bench_peers_inference: no GGUF at {args.model}; pass --model")
    common = ["--model", str(args.model), "--repeats", str(args.repeats), "--threads", str(args.threads),
              "--n-prompt", str(args.n_prompt), "--n-gen", str(args.n_gen), "--seed", str(args.seed)]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)}
    failed = False
    for peer in args.peers.split(","):
        python = args.llamacpp_python if peer == "llamacpp" else args.torch_python
        log(f"{peer} ({python})")
        res = subprocess.run([python, str(Path(__file__).resolve()), "--one", peer] + common,
                             env=env, stdout=subprocess.PIPE, text=True)
        sys.stdout.write(res.stdout)
        sys.stdout.flush()
        if res.returncode != 0:
            failed = True
            print(json.dumps({"peer": peer, "error": f"exit code {res.returncode}"}), flush=True)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
