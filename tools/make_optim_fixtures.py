#!/usr/bin/env python3
"""Generate the AdamW + gradient-clipping reference fixture for qlora's optimizer.

Writes Tests/QLoRATests/Fixtures/optim-adamw.json (and nothing else), produced by
torch.optim.AdamW itself (CPU, float32, default non-fused non-foreach path, i.e.
torch.optim.adam._single_tensor_adam with decoupled_weight_decay=True) and
torch.nn.utils.clip_grad_norm_.

Two scenarios, each 5 steps over two parameters:
  a  [3, 5]   15 elements: below one AVX-512 vector, so torch runs its scalar loops
  b  [4, 16]  64 elements: torch runs its vectorized loops, whose sqrt (MKL/VML) is not
              correctly rounded (off by up to 1 ulp), so qlora matches it within ulps there
  "adamw"          grads as given, lr changing every step (as a scheduler would set it)
  "adamw_clipped"  clip_grad_norm_(max_norm=1.0) before every step; grads are scaled so
                   that some steps clip and some do not; the pre-clip total norms are saved

All float arrays are float32 as lowercase hex of little-endian bytes; lr values are
Python floats (float64) written with repr.

Environment (CPU only, x86_64 with AVX-512, Python 3.11):
    /work/venv-fixtures/bin/pip install torch==2.15.0 numpy==2.4.6
    /work/venv-fixtures/bin/python tools/make_optim_fixtures.py
Inputs come from numpy.random.default_rng(20240611); torch runs single-threaded; running
the script twice gives identical files.
"""
import numpy as np
import torch

import fixture_common as fc

OUT = fc.QLORA_FIXTURES / "optim-adamw.json"
SHAPES = {"a": [3, 5], "b": [4, 16]}
STEPS = 5
LRS = [1e-2, 8e-3, 6e-3, 4e-3, 2e-3]
BETAS = (0.9, 0.95)
EPS = 1e-8
WEIGHT_DECAY = 0.1
MAX_NORM = 1.0
# Gradient scale per step in the clipped scenario: total norms around 0.3 .. 30.
CLIP_SCALES = [3.0, 0.05, 1.0, 0.02, 0.5]


def run(clip, rng):
    inits = {n: rng.standard_normal(s).astype(np.float32) for n, s in SHAPES.items()}
    grads = []
    for k in range(STEPS):
        scale = np.float32(CLIP_SCALES[k] if clip else 1.0)
        grads.append({n: (rng.standard_normal(s).astype(np.float32) * scale) for n, s in SHAPES.items()})
    params = {n: torch.nn.Parameter(torch.tensor(v)) for n, v in inits.items()}
    opt = torch.optim.AdamW(list(params.values()), lr=LRS[0], betas=BETAS, eps=EPS, weight_decay=WEIGHT_DECAY)
    assert not opt.defaults["fused"] and not opt.defaults["foreach"]
    after, norms = [], []
    for k in range(STEPS):
        for n, p in params.items():
            p.grad = torch.tensor(grads[k][n])
        if clip:
            norms.append(fc.f32_hex(torch.nn.utils.clip_grad_norm_(list(params.values()), MAX_NORM).detach().numpy().reshape(1)))
        for group in opt.param_groups:
            group["lr"] = LRS[k]
        opt.step()
        after.append({n: fc.f32_hex(p.detach().numpy()) for n, p in params.items()})
    out = {
        "params": [{"name": n, "shape": SHAPES[n], "init": fc.f32_hex(inits[n])} for n in SHAPES],
        "grads": [{n: fc.f32_hex(g[n]) for n in SHAPES} for g in grads],
        "after": after,
        "exp_avg": {n: fc.f32_hex(opt.state[p]["exp_avg"].numpy()) for n, p in params.items()},
        "exp_avg_sq": {n: fc.f32_hex(opt.state[p]["exp_avg_sq"].numpy()) for n, p in params.items()},
    }
    if clip:
        out["max_norm"] = MAX_NORM
        out["total_norms"] = norms
    return out


def main():
    torch.set_num_threads(1)
    rng = np.random.default_rng(20240611)
    doc = {
        "generator": "tools/make_optim_fixtures.py",
        "torch": torch.__version__,
        "lr": LRS,
        "betas": list(BETAS),
        "eps": EPS,
        "weight_decay": WEIGHT_DECAY,
        "scenarios": {"adamw": run(False, rng), "adamw_clipped": run(True, rng)},
    }
    OUT.write_text(fc.fixture_json(doc))
    print("wrote", OUT)


if __name__ == "__main__":
    main()
