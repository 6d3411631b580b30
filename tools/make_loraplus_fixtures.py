#!/usr/bin/env python3
"""Generate the LoRA+ fixture: PEFT's create_loraplus_optimizer on a tiny Llama.

Writes Tests/QLoRATests/Fixtures/optim-loraplus.json (and nothing else). A one-block Llama
(transformers, random weights) gets a PEFT LoRA on q/k/v/o/gate/up/down_proj (B initialized
non-zero) and trainable RMSNorm weights (the block's two and the final one, as qlora's
--train-norms trains them); peft.optimizers.create_loraplus_optimizer groups them for
torch.optim.AdamW with loraplus_lr_ratio 16 and loraplus_weight_decay 0.01. Three steps with
given gradients and a learning rate that changes per step as a scheduler's lambda would (each
group's lr × the factor) record every parameter after each step.

The fixture holds, per trainable parameter, qlora's name (PEFT's without base_model.model. and
.default), its shape, the lr factor of its group (the group's lr / lr), its initial values,
the gradients of each step and the values after each step.

Environment (CPU only, Python 3.11):
    /work/venv-fixtures/bin/pip install torch==2.15.0 transformers==5.23.0 peft==0.21.2 numpy==2.4.6
    /work/venv-fixtures/bin/python tools/make_loraplus_fixtures.py
Seeds fixed; torch single-threaded; running it twice gives identical files.
"""
import numpy as np
import torch

import fixture_common as fc

OUT = fc.QLORA_FIXTURES / "optim-loraplus.json"
LR = 1e-2
RATIO = 16.0
WEIGHT_DECAY = 0.01
BETAS = (0.9, 0.999)
EPS = 1e-8
FACTORS = [1.0, 0.6, 0.3]  # the scheduler's lambda at steps 1..3


def main():
    from peft import LoraConfig, get_peft_model
    from peft.optimizers import create_loraplus_optimizer
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.set_num_threads(1)
    torch.manual_seed(7)
    config = LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=24, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=32)
    model = LlamaForCausalLM(config)
    lora = LoraConfig(r=2, lora_alpha=4, lora_dropout=0.0, init_lora_weights=False,
                      target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
    model = get_peft_model(model, lora)
    for name, p in model.named_parameters():
        if name.endswith("layernorm.weight") or name.endswith("model.norm.weight"):
            p.requires_grad_(True)
    optimizer = create_loraplus_optimizer(model, torch.optim.AdamW, lr=LR, loraplus_lr_ratio=RATIO,
                                          loraplus_weight_decay=WEIGHT_DECAY, betas=BETAS, eps=EPS)
    assert not optimizer.defaults["fused"] and not optimizer.defaults["foreach"]
    factor_of = {}
    for group in optimizer.param_groups:
        for p in group["params"]:
            factor_of[id(p)] = group["lr"] / LR
    initial_lrs = [g["lr"] for g in optimizer.param_groups]
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    def qlora_name(n):
        return n.removeprefix("base_model.model.").replace(".default", "")
    params = [{"name": qlora_name(n), "peft_name": n, "shape": list(p.shape), "lr_factor": factor_of[id(p)],
               "init": fc.f32_hex(p)} for n, p in named]
    rng = np.random.default_rng(20261206)
    grads, after = [], []
    for k, f in enumerate(FACTORS):
        step = {}
        for n, p in named:
            g = rng.standard_normal(tuple(p.shape)).astype(np.float32)
            p.grad = torch.tensor(g)
            step[qlora_name(n)] = fc.f32_hex(g)
        grads.append(step)
        for group, lr0 in zip(optimizer.param_groups, initial_lrs):
            group["lr"] = lr0 * f
        optimizer.step()
        after.append({qlora_name(n): fc.f32_hex(p) for n, p in named})
    doc = {
        "generator": "tools/make_loraplus_fixtures.py",
        "versions": fc.module_versions("torch", "transformers", "peft"),
        "encoding": fc.F32_HEX_ENCODING,
        "lr": LR, "lr_factors": FACTORS, "loraplus_lr_ratio": RATIO, "weight_decay": WEIGHT_DECAY,
        "betas": list(BETAS), "eps": EPS,
        "params": params, "grads": grads, "after": after,
    }
    OUT.write_text(fc.fixture_json(doc))
    print("wrote", OUT, "-", len(params), "parameters,", sum(1 for p in params if p["lr_factor"] != 1), "at lr ×", RATIO)


if __name__ == "__main__":
    main()
