#!/usr/bin/env python3
"""Check `qlora adapters combine` against PEFT: the adapter qlora wrote must load in PEFT, and
its ΔW must agree with PEFT's add_weighted_adapter(..., combination_type="svd") (or "cat" for
--concat) on the same inputs and weights. Reads only; writes nothing.

    /work/venv-fixtures/bin/python tools/check_peft_combine.py --base Tests/QLoRATests/Fixtures/tiny-llama \
        --adapters A B --weights 0.7 0.3 --rank 4 --qlora OUT
    /work/venv-fixtures/bin/python tools/check_peft_combine.py --base models/SmolLM2-135M-Instruct.Q4_1.gguf ...

--base: a Hugging Face folder or a GGUF file (transformers dequantizes it; only the module
names and shapes matter here, not the weights). Per adapted linear, in Float64:

    exact  = Σ w_i · get_delta_weight(adapter_i)          (PEFT's own ΔW of each input)
    peft   = get_delta_weight("peft_svd")                 (torch.linalg.svd of the full ΔW)
    qlora  = get_delta_weight("qlora")                    (the folder qlora wrote, as PEFT reads it)

and prints ‖qlora − peft‖/‖exact‖ (must be small: both are the best rank-r approximation),
both errors ‖exact − x‖/‖exact‖, per module (worst five) and over all modules. The first input
must not use rsLoRA (PEFT copies its config for the combination, rsLoRA included, while its
factors assume scale 1). Exit status 1 when the agreement is worse than --tolerance.

Environment: the venv of tools/make_peft_adapter_fixtures.py (torch 2.15.0, transformers 5.23.0,
peft 0.21.2, gguf 0.19.0), CPU, one thread.
"""

import argparse
import os
import sys

import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--base", required=True)
    p.add_argument("--adapters", nargs="+", required=True)
    p.add_argument("--weights", nargs="+", type=float, required=True)
    p.add_argument("--rank", type=int, help="svd rank (default: the largest input rank)")
    p.add_argument("--concat", action="store_true", help="compare with PEFT's 'cat' instead of 'svd'")
    p.add_argument("--qlora", required=True, help="the adapter folder qlora adapters combine wrote")
    p.add_argument("--tolerance", type=float, default=1e-4)
    a = p.parse_args()
    assert len(a.weights) == len(a.adapters)
    torch.set_num_threads(1)
    if os.path.isfile(a.base):
        model = AutoModelForCausalLM.from_pretrained(os.path.dirname(os.path.abspath(a.base)),
                                                     gguf_file=os.path.basename(a.base), dtype=torch.float32)
    else:
        model = AutoModelForCausalLM.from_pretrained(a.base, dtype=torch.float32)
    names = [f"in{i}" for i in range(len(a.adapters))]
    pm = PeftModel.from_pretrained(model, a.adapters[0], adapter_name=names[0])
    for n, d in zip(names[1:], a.adapters[1:]):
        pm.load_adapter(d, adapter_name=n)
    if a.concat:
        pm.add_weighted_adapter(names, a.weights, "peft_ref", combination_type="cat")
    else:
        pm.add_weighted_adapter(names, a.weights, "peft_ref", combination_type="svd", svd_rank=a.rank)
    pm.load_adapter(a.qlora, adapter_name="qlora")

    rows, tot = [], {"agree": 0.0, "peft": 0.0, "qlora": 0.0, "norm": 0.0}
    for name, m in pm.named_modules():
        if not hasattr(m, "lora_A") or "peft_ref" not in m.lora_A:
            continue
        exact = sum(w * m.get_delta_weight(n).double() for n, w in zip(names, a.weights) if n in m.lora_A)
        ref = m.get_delta_weight("peft_ref").double()
        assert "qlora" in m.lora_A, f"{name}: PEFT adapts it in the combination, qlora's adapter does not"
        got = m.get_delta_weight("qlora").double()
        norm = exact.norm().item()
        d = {"agree": (got - ref).norm().item(), "peft": (exact - ref).norm().item(), "qlora": (exact - got).norm().item(), "norm": norm}
        for k in tot:
            tot[k] += d[k] ** 2
        rows.append((d["agree"] / norm, name, d["peft"] / norm, d["qlora"] / norm))
    assert rows, "no module of the combination found"
    for k in tot:
        tot[k] = tot[k] ** 0.5
    print(f"{len(rows)} modules; qlora's adapter loaded by PEFT 0.21 as 'qlora'")
    print("worst modules: ‖qlora − peft‖/‖ΔW‖, error of peft, error of qlora")
    for r in sorted(rows, reverse=True)[:5]:
        print(f"  {r[1]}: {r[0]:.3e}  peft {r[2]:.6f}  qlora {r[3]:.6f}")
    agree = tot["agree"] / tot["norm"]
    print(f"over all modules: ‖qlora − peft‖/‖ΔW‖ = {agree:.3e}; error of peft {tot['peft'] / tot['norm']:.6f}, "
          f"error of qlora {tot['qlora'] / tot['norm']:.6f}")
    sys.exit(0 if max(r[0] for r in rows) <= a.tolerance else 1)


if __name__ == "__main__":
    main()
