#!/usr/bin/env python3
"""Check that llama.cpp runs what `qlora export --format gguf` writes, with the logits of the
merge qlora computed.

Reference: transformers (float32, eager attention) on the Hugging Face folder `qlora export`
wrote for the same model and adapter: W' = dequant(W) + scale·B·A in fp32, the values the
Swift tests (GGUFExportTests) find bit for bit in the f32 GGUF, and whose logits
make_export_fixtures.py --check-export compares with PEFT's. llama.cpp (llama-cpp-python)
reads each GGUF given and computes the logits of the same token ids at every position; the
script prints max |Δlogit| / max |logit| per file and fails above the tolerance of its type
(files with other types, such as a `merge --requantize q4_0` output, are reported only):

    F32   1e-4   llama.cpp multiplies F32 weights by F32 activations: summation order only
                 (the KV cache is made F32 too; its default F16 cache alone costs ≈ 1e-3)
    F16   1e-2   ggml rounds the activations to F16 for an F16 weight's dot products
    Q8_0  8e-2   and to Q8_0 blocks for a Q8_0 weight's

It also compares the token ids llama.cpp's tokenizer gives (from the GGUF's tokenizer.ggml.*
metadata) with transformers' (tokenizer.json of the folder) on the prompt, and with
--ppl-text computes llama.cpp's perplexity of each GGUF as llama-perplexity does (windows of
--ctx tokens from an empty cache, the second half of each scored), to set beside
`qlora perplexity` on the same text and --ctx.

Writes nothing; exits non-zero when a check fails. CI does not run it (no torch, no llama.cpp).

Usage, from the repo root (SmolLM2, an adapter trained by qlora):
    swift build -c release && Q=.build/release/qlora
    M=models/SmolLM2-135M-Instruct.Q4_1.gguf A=runs/smol/lora_final
    $Q export --model $M --adapter $A -o /tmp/smol-hf
    for t in f32 f16 q8_0; do $Q export --model $M --adapter $A --format gguf --type $t -o /tmp/smol-$t.gguf; done
    /work/venv-fixtures/bin/python tools/check_gguf_export.py --hf /tmp/smol-hf /tmp/smol-*.gguf \\
        --ppl-text /usr/share/common-licenses/GPL-3 --ctx 256

Environments (CPU only, x86_64, Python 3.11):
    /work/venv-fixtures: torch==2.15.0 transformers==5.23.0 safetensors==0.8.0 numpy==2.4.6
    /work/venv-llamacpp: llama-cpp-python==0.3.36 numpy (llama.cpp built from source by pip),
        run by this script as a subprocess (--worker) so the two need not share a venv.
"""
import argparse
import json
import math
import os
import subprocess
import sys
import tempfile

LLAMACPP_PYTHON = "/work/venv-llamacpp/bin/python"
TOLERANCE = {"F32": 1e-4, "F16": 1e-2, "Q8_0": 8e-2}
PROMPT = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "What is the capital of France? Answer in one sentence, then list 3 facts about it."},
]


def worker(spec):
    """Runs in the llama.cpp venv: logits of spec['ids'] at every position, the tokenizer's ids
    of spec['text'], and optionally the perplexity of a text file."""
    import numpy as np
    from llama_cpp import Llama

    out = {}
    # KV cache in F32 (type 0): llama.cpp's default F16 cache alone costs ≈ 1e-3 of the logits.
    llm = Llama(model_path=spec["gguf"], n_ctx=max(512, spec.get("ctx", 0)), n_batch=512, logits_all=True,
                n_threads=os.cpu_count(), type_k=0, type_v=0, verbose=False)
    out["tokens"] = llm.tokenize(spec["text"].encode(), add_bos=False, special=True)
    llm.reset()
    llm.eval(spec["ids"])
    np.save(spec["logits_out"], np.array(llm.scores[: len(spec["ids"])], dtype=np.float32))
    if spec.get("ppl_text"):
        ctx = spec["ctx"]
        text = open(spec["ppl_text"], encoding="utf-8").read()
        add_bos = llm.metadata.get("tokenizer.ggml.add_bos_token", "false") == "true"
        tokens = llm.tokenize(text.encode(), add_bos=False, special=False)
        nll, count, nll2 = 0.0, 0, 0.0
        first = ctx // 2
        for start in range(0, len(tokens) - ctx + 1, ctx):
            window = tokens[start : start + ctx]
            if add_bos:
                window = [llm.token_bos()] + window[1:]
            llm.reset()
            llm.eval(window)
            logits = np.array(llm.scores[:ctx], dtype=np.float64)
            for j in range(first, ctx - 1):
                row = logits[j]
                m = row.max()
                lse = m + math.log(np.exp(row - m).sum())
                v = lse - row[tokens[start + j + 1]]
                nll += v
                nll2 += v * v
                count += 1
        mean = nll / count
        err = math.sqrt(max(nll2 / count - mean * mean, 0) / (count - 1))
        out["ppl"] = [math.exp(mean), math.exp(mean) * err, count]
    print(json.dumps(out))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hf", help="the Hugging Face folder `qlora export` wrote for the same model and adapter")
    ap.add_argument("gguf", nargs="*", help="GGUF files `qlora export --format gguf` (or merge) wrote")
    ap.add_argument("--ppl-text", help="a text file for llama.cpp's perplexity of each GGUF")
    ap.add_argument("--ctx", type=int, default=256)
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return worker(json.loads(args.worker))

    import numpy as np
    import torch
    from gguf import GGUFReader
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(args.hf)
    text = tok.apply_chat_template(PROMPT, tokenize=False, add_generation_prompt=True)
    ids = tok(text, add_special_tokens=False)["input_ids"]
    model = AutoModelForCausalLM.from_pretrained(args.hf, dtype=torch.float32, attn_implementation="eager").eval()
    with torch.no_grad():
        ref = model(torch.tensor([ids])).logits[0].double().numpy()
    scale = np.abs(ref).max()
    print(f"reference: transformers float32 on {args.hf}, {len(ids)} tokens of a chat prompt")

    failed = False
    for path in args.gguf:
        reader = GGUFReader(path)
        types = {t.tensor_type.name for t in reader.tensors if not t.name.endswith("norm.weight")}
        kind = "/".join(sorted(types))
        with tempfile.TemporaryDirectory() as d:
            spec = {"gguf": path, "ids": ids, "text": text, "logits_out": os.path.join(d, "logits.npy")}
            if args.ppl_text:
                spec.update(ppl_text=args.ppl_text, ctx=args.ctx)
            run = subprocess.run([LLAMACPP_PYTHON, __file__, "--worker", json.dumps(spec)], capture_output=True, text=True)
            if run.returncode != 0:
                print(f"{path}: llama.cpp failed:\n{run.stderr[-3000:]}")
                failed = True
                continue
            out = json.loads(run.stdout.strip().splitlines()[-1])
            logits = np.load(spec["logits_out"]).astype(np.float64)
        err = np.abs(logits - ref).max() / scale
        same_argmax = (logits.argmax(-1) == ref.argmax(-1)).mean()
        tol = max((TOLERANCE.get(t, math.inf) for t in types), default=math.inf)
        ok = err <= tol
        tokens_ok = out["tokens"] == ids
        failed |= not ok or not tokens_ok
        bound = f"tolerance {tol:g}" if tol < math.inf else "report only"
        line = (f"{os.path.basename(path)} [{kind}]: max |Δlogit| / max |logit| = {err:.2e} ({bound}), "
                f"argmax agrees at {same_argmax:.1%} of positions, tokenizer {'same ids' if tokens_ok else 'DIFFERENT ids'}")
        if "ppl" in out:
            ppl, pe, n = out["ppl"]
            line += f"; llama.cpp PPL {ppl:.4f} ± {pe:.5f} ({n} tokens, ctx {args.ctx})"
        print(("ok   " if ok and tokens_ok else "FAIL ") + line)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
