#!/usr/bin/env python3
"""Loads a merged Hugging Face folder that `qlora export` wrote with transformers and compares
its logits at every position with qlora's own on the unmerged base + adapter.

    .build/release/qlora perplexity --model models/gemma-3-270m.Q4_K_M.gguf --text ids.txt \
        --adapter runs/gemma/lora_final --logits-out qlora-logits.bin     # ids.txt: token ids
    .build/release/qlora export --model models/gemma-3-270m.Q4_K_M.gguf --adapter runs/gemma/lora_final -o gemma-merged
    /work/venv-fixtures/bin/python tools/check_real_model_export.py gemma-merged ids.txt qlora-logits.bin

Prints the model class transformers built, max |Δ| / max |logit| and whether the arg max of
every position agrees; exits 1 when the relative difference passes --tolerance (5e-5: fp32 sums in another order over 24 blocks give ~1e-5).
Environment: tools/fixture_common.py's pins (torch, transformers); CPU, fp32, eager attention.
"""
import argparse
import sys

import numpy as np
import torch
from transformers import AutoModelForCausalLM


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("folder")
    p.add_argument("ids")
    p.add_argument("logits")
    p.add_argument("--tolerance", type=float, default=5e-5)
    a = p.parse_args()
    torch.set_num_threads(1)
    ids = [int(x) for x in open(a.ids).read().replace(",", " ").split()]
    model = AutoModelForCausalLM.from_pretrained(a.folder, dtype=torch.float32, attn_implementation="eager")
    with torch.no_grad():
        want = model(torch.tensor([ids])).logits[0].numpy()
    got = np.fromfile(a.logits, dtype="<f4").reshape(want.shape)
    rel = float(np.abs(want - got).max() / np.abs(want).max())
    same = bool((want.argmax(-1) == got.argmax(-1)).all())
    print(f"{type(model).__name__}: max|Δ|/max|logit| = {rel:.2e}, arg max equal at every position: {same}")
    return 0 if rel <= a.tolerance and same else 1


if __name__ == "__main__":
    sys.exit(main())
