#!/usr/bin/env python3
"""PiSSA and OLoRA initializations of PEFT on the tiny float32 Llama, for qlora's LoRAInitialization.

Writes Tests/QLoRATests/Fixtures/lora-init-peft.json (and nothing else).

Input: the committed folder Tests/QLoRATests/Fixtures/tiny-llama (float32 weights, 2 layers, hidden
64, intermediate 320; tools/make_model_fixtures.py), loaded by transformers on the CPU in float32.
For each case, get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj",
"down_proj"], init_lora_weights=INIT)) and, for model.layers.0.self_attn.q_proj [64, 64] and
model.layers.1.mlp.down_proj [64, 320], records (and each weight before, once, under "weights")

  "lora_A"    [r, in] and "lora_B" [out, r] as PEFT set them
  "residual"  the base weight PEFT leaves in the model (W - scaling * B @ A, float32)

Cases: "pissa" (torch.linalg.svd, exact), "olora" (torch.linalg.qr), and "pissa_niter_4"
(torch.svd_lowrank, random: qlora draws its own sketch, so only the subspace is comparable).
PEFT 0.21.2's formulas (tuners/lora/layer.py): pissa  B = V_r sqrt(S_r / s), A = sqrt(S_r / s) Uh_r;
olora  B = Q[:, :r], A = R[:r]; both  W <- W - s B A.  scaling s = 8 / 4 = 2.
LoftQ is not here: PEFT's loftq_init needs CUDA (it moves the weight to "cuda"); qlora's LoftQ is
checked against its definition in LoRAInitializationTests.

Environment: /work/venv-fixtures (torch 2.15.0, transformers 5.23.0, peft 0.21.2), from the repo root:
    /work/venv-fixtures/bin/python tools/make_lora_init_fixtures.py
Run twice: identical JSON (the svd_lowrank case seeds torch's generator).
"""

import torch

import fixture_common as fc

PINS = {"torch": "2.15.0", "transformers": "5.23.0", "peft": "0.21.2"}
OUT = fc.QLORA_FIXTURES / "lora-init-peft.json"
MODULES = ["model.layers.0.self_attn.q_proj", "model.layers.1.mlp.down_proj"]
CASES = ["pissa", "olora", "pissa_niter_4"]


def run_case(init):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(fc.QLORA_FIXTURES / "tiny-llama", dtype=torch.float32)
    before = {m: model.get_submodule(m).weight.detach().clone() for m in MODULES}
    pm = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["q_proj", "down_proj"],
                                          init_lora_weights=init))
    out = {}
    for m in MODULES:
        layer = pm.base_model.model.get_submodule(m)
        a, b = layer.lora_A["default"].weight.detach(), layer.lora_B["default"].weight.detach()
        residual = layer.base_layer.weight.detach()
        s = layer.scaling["default"]
        assert torch.allclose(residual + s * b @ a, before[m], atol=1e-5), m
        out[m] = {"lora_A": fc.f32_hex(a), "lora_B": fc.f32_hex(b), "residual": fc.f32_hex(residual), "scaling": s}
    return out, before


def build():
    doc = {"generator": "tools/make_lora_init_fixtures.py", "versions": fc.module_versions("torch", "transformers", "peft"),
           "encoding": fc.F32_HEX_ENCODING, "rank": 4, "lora_alpha": 8, "cases": {}}
    for init in CASES:
        doc["cases"][init], before = run_case(init)
    doc["weights"] = {m: {"shape": list(w.shape), "f32": fc.f32_hex(w)} for m, w in before.items()}
    return fc.fixture_json(doc)


def main():
    fc.check_versions(PINS)
    fc.deterministic_torch()
    text = build()
    assert text == build(), "two runs gave different JSON"
    OUT.write_text(text)
    fc.make_readable([OUT])
    assert fc.list_files([OUT]) < 1 << 20


if __name__ == "__main__":
    main()
