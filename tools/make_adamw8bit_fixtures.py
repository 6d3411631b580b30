#!/usr/bin/env python3
"""Generate the 8-bit AdamW fixture: bitsandbytes' AdamW8bit on its CPU backend.

Writes Tests/QLoRATests/Fixtures/optim-adamw8bit.json (and nothing else). Three parameters
step four times under bitsandbytes.optim.AdamW8bit (optim_bits 8, block-wise, min_8bit_size
4096, no percentile clipping) with given gradients and a learning rate set per step:
  big    [64, 80]  5120 values: 8-bit states, 20 whole blocks of 256
  tail   [4100]    4100 values: 8-bit states, 16 whole blocks and one of 4
  small  [16, 8]    128 values: below min_8bit_size, fp32 states (bitsandbytes' 32-bit update)
The fixture holds the dynamic maps (qmap1 signed, qmap2 unsigned), each parameter's initial
values, gradients and values after every step, and the final states: codes (uint8) and
block absmax (float32) for the 8-bit ones, float32 moments for the small one.

Environment (CPU only, x86_64, Python 3.11):
    /work/venv-fixtures/bin/pip install torch==2.15.0 bitsandbytes==0.50.2 numpy==2.4.6
    /work/venv-fixtures/bin/python tools/make_adamw8bit_fixtures.py
Seeds fixed; torch single-threaded; running it twice gives identical files.
"""
import numpy as np
import torch

import fixture_common as fc

OUT = fc.QLORA_FIXTURES / "optim-adamw8bit.json"
SHAPES = {"big": [64, 80], "tail": [4100], "small": [16, 8]}
LRS = [1e-3, 8e-4, 6e-4, 4e-4]
BETAS = (0.9, 0.999)
EPS = 1e-8
WEIGHT_DECAY = 0.01


def main():
    import bitsandbytes as bnb

    torch.set_num_threads(1)
    rng = np.random.default_rng(20261207)
    inits = {n: rng.standard_normal(s).astype(np.float32) for n, s in SHAPES.items()}
    params = {n: torch.nn.Parameter(torch.tensor(v)) for n, v in inits.items()}
    opt = bnb.optim.AdamW8bit(list(params.values()), lr=LRS[0], betas=BETAS, eps=EPS, weight_decay=WEIGHT_DECAY)
    grads, after = [], []
    for lr in LRS:
        step = {}
        for n, p in params.items():
            g = (rng.standard_normal(SHAPES[n]) * 0.1).astype(np.float32)
            p.grad = torch.tensor(g)
            step[n] = fc.f32_hex(g)
        grads.append(step)
        for group in opt.param_groups:
            group["lr"] = lr
        opt.step()
        after.append({n: fc.f32_hex(p) for n, p in params.items()})
    states = {}
    qmaps = {}
    for n, p in params.items():
        st = opt.state[p]
        if st["state1"].dtype == torch.uint8:
            states[n] = {"codes1": fc.u8_hex(st["state1"].numpy()), "codes2": fc.u8_hex(st["state2"].numpy()),
                         "absmax1": fc.f32_hex(st["absmax1"]), "absmax2": fc.f32_hex(st["absmax2"])}
            qmaps = {"qmap1": fc.f32_hex(st["qmap1"]), "qmap2": fc.f32_hex(st["qmap2"])}
        else:
            states[n] = {"exp_avg": fc.f32_hex(st["state1"]), "exp_avg_sq": fc.f32_hex(st["state2"])}
    doc = {
        "generator": "tools/make_adamw8bit_fixtures.py",
        "versions": fc.module_versions("torch", "bitsandbytes"),
        "encoding": fc.F32_HEX_ENCODING,
        "lr": LRS, "betas": list(BETAS), "eps": EPS, "weight_decay": WEIGHT_DECAY,
        **qmaps,
        "params": [{"name": n, "shape": SHAPES[n], "init": fc.f32_hex(inits[n])} for n in SHAPES],
        "grads": grads, "after": after, "states": states,
    }
    OUT.write_text(fc.fixture_json(doc))
    print("wrote", OUT)


if __name__ == "__main__":
    main()
