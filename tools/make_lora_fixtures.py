#!/usr/bin/env python3
"""Generate LoRA loss / gradient reference fixtures for qlora from PEFT on a bitsandbytes NF4 base.

Writes Tests/QLoRATests/Fixtures/tiny-llama-lora-grads.json (and nothing else).

Input: the committed folder Tests/QLoRATests/Fixtures/tiny-llama-bnb-nf4 (made by
tools/make_model_fixtures.py: 2 layers, hidden 64, intermediate 320, 4 heads / 2 KV heads,
head_dim 16, vocab 256, NF4 with double quantization, blocks of 64).  It is loaded by
transformers on the CPU in float32 with eager attention and wrapped by PEFT's get_peft_model,
so each target linear is peft.tuners.lora.bnb.Linear4bit:
    y = base(x) + lora_B(lora_A(x)) * scaling,   base(x) = F.linear(x, dequantize_4bit(W))
with scaling = lora_alpha / r, or lora_alpha / sqrt(r) with use_rslora.

Cases (the same batch for all three):
  all_linears      LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, bias="none",
                   target_modules=q/k/v/o/gate/up/down_proj); scaling 2.  Also records the
                   logits of the last position of each row.
  rslora_norms     the same with use_rslora=True (scaling 8 / sqrt(4) = 4), and every RMSNorm
                   weight (input_layernorm, post_attention_layernorm, model.norm) trainable:
                   their values and gradients are recorded too.
  layer1_qv        layers_to_transform=[1], target_modules=q_proj, v_proj only.
Every lora_A ~ N(0, 0.1) and lora_B ~ N(0, 0.02) (B non-zero, so dA is non-zero), drawn from
one torch.Generator seeded with SEED, in sorted parameter-name order over the case's own LoRA
parameters (so all_linears and rslora_norms start from the same values; layer1_qv does not).

Batch: input_ids [2, 12] (ids < 256, from the generator), no attention mask; labels = input_ids
with the first 4 positions of row 0 and the first 6 of row 1 set to -100.  loss =
model(input_ids=..., labels=...).loss: transformers shifts the labels by one inside
(position t predicts label t+1) and takes the mean cross-entropy over the counted tokens,
here (11 - 3) + (11 - 5) = 14.  Then loss.backward().

JSON layout: parameters are keyed by the name PEFT writes into adapter_model.safetensors
(the adapter name "default" dropped), e.g.
base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight, shape lora_A [r, in],
lora_B [out, r]; norms as base_model.model.model.layers.0.input_layernorm.weight [64].
Each has "shape", "value_f32" (initial value) and "grad_f32" (gradient of the loss).  Float32
arrays are lowercase hex of little-endian bytes, row-major; "loss" is the float32 loss widened
to float64 (exact), "loss_f32" its bytes.

Environment used for the committed fixture (CPU only, x86_64, Python 3.11):

    python3 -m venv /work/venv-fixtures
    /work/venv-fixtures/bin/pip install torch==2.15.0 bitsandbytes==0.50.2 gguf==0.19.0 \
        numpy==2.4.6 transformers==5.23.0 safetensors==0.8.0 accelerate==1.15.0 peft==0.21.2
    /work/venv-fixtures/bin/python tools/make_lora_fixtures.py      # from the repo root

Determinism: one torch thread, deterministic algorithms, explicit generator; the script
computes every case twice from a fresh load and asserts the two JSON texts are identical.

Checks made on every run:
  * bitsandbytes' CPU bf16 path is off (module.support_avx512bf16_for_cpu = False, see the
    caveats in make_model_fixtures.py), so the base forward is dequantize_4bit in float32 +
    F.linear and the backward dX = dY @ dequantize_4bit(W) in float32.
  * the loss equals, and the gradients match within 1e-6 relative to each tensor's largest
    value, the same PEFT setup on a plain float32 LlamaForCausalLM whose 14 linears hold
    bitsandbytes.functional.dequantize_4bit of the NF4 weights: i.e. these numbers are what a
    float32 LoRA on the dequantized base gives, which is what qlora computes.
"""

import torch

import fixture_common as fc

PINS = {
    "torch": "2.15.0",
    "bitsandbytes": "0.50.2",
    "transformers": "5.23.0",
    "peft": "0.21.2",
    "numpy": "2.4.6",
}

OUT = fc.QLORA_FIXTURES / "tiny-llama-lora-grads.json"

SEED = 20240602
BATCH, SEQ = 2, 12
MASKED_PREFIX = [4, 6]  # labels[b, :MASKED_PREFIX[b]] = -100
A_STD, B_STD = 0.1, 0.02
ALL_LINEARS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]

CASES = [
    dict(
        name="all_linears",
        lora=dict(r=4, lora_alpha=8, lora_dropout=0.0, bias="none", target_modules=ALL_LINEARS,
                  use_rslora=False, layers_to_transform=None),
        train_norms=False,
        record_logits=True,
    ),
    dict(
        name="rslora_norms",
        lora=dict(r=4, lora_alpha=8, lora_dropout=0.0, bias="none", target_modules=ALL_LINEARS,
                  use_rslora=True, layers_to_transform=None),
        train_norms=True,
        record_logits=False,
    ),
    dict(
        name="layer1_qv",
        lora=dict(r=4, lora_alpha=8, lora_dropout=0.0, bias="none", target_modules=["q_proj", "v_proj"],
                  use_rslora=False, layers_to_transform=[1]),
        train_norms=False,
        record_logits=False,
    ),
]


def make_batch():
    return fc.labelled_batch(SEED, BATCH, SEQ, MASKED_PREFIX)


def is_norm(name: str) -> bool:
    return name.endswith("norm.weight")


def wrap(model, case):
    pm = fc.seeded_lora(model, case["lora"], SEED, A_STD, B_STD)
    if case["train_norms"]:
        for name, p in pm.named_parameters():
            if is_norm(name):
                p.requires_grad_(True)
    pm.train()
    return pm


def run_case(case, ids, labels):
    nf4, linears = fc.load_tiny_nf4()
    ref = fc.dequantized_fp32_copy(nf4, linears)

    pm = wrap(nf4, case)
    out, params = fc.peft_loss_and_grads(pm, ids, labels)
    fc.assert_not_repacked(linears)

    pref = wrap(ref, case)
    out_ref, params_ref = fc.peft_loss_and_grads(pref, ids, labels)
    assert out.loss.item() == out_ref.loss.item(), (out.loss.item(), out_ref.loss.item())
    worst = fc.assert_grads_match(params, params_ref)

    n_lora = sum(".lora_" in k for k in params)
    n_norm = sum(is_norm(k) for k in params)

    rec = {
        "name": case["name"],
        "lora_config": fc.lora_config_record(pm),
        "scaling": fc.lora_scaling(pm),
        "trainable_norms": case["train_norms"],
        "loss": float(out.loss.detach().to(torch.float32).item()),
        "loss_f32": fc.f32_hex(out.loss.reshape(1)),
        "params": fc.lora_params_record(params),
    }
    if case["record_logits"]:
        last = out.logits[:, -1, :]
        rec["logits_last"] = {"shape": list(last.shape), "f32": fc.f32_hex(last)}
    summary = (f"{case['name']}: loss {rec['loss']:.9f}, {n_lora} LoRA + {n_norm} norm tensors, "
               f"scaling {rec['scaling']}, max rel |grad - dequantized fp32 grad| {worst:.2e}")
    return rec, summary


def build():
    ids, labels = make_batch()
    n_counted = int((labels[:, 1:] != -100).sum().item())
    doc = {
        "generator": "tools/make_lora_fixtures.py",
        "versions": fc.module_versions("torch", "bitsandbytes", "transformers", "peft"),
        "model": "tiny-llama-bnb-nf4",
        "encoding": fc.F32_HEX_ENCODING,
        "note": fc.LORA_GRADS_NOTE,
        "input_ids": ids.tolist(),
        "labels": labels.tolist(),
        "n_counted_tokens": n_counted,
        "cases": [],
    }
    summaries = []
    for case in CASES:
        rec, s = run_case(case, ids, labels)
        doc["cases"].append(rec)
        summaries.append(s)
    return fc.fixture_json(doc), summaries


def main():
    fc.check_versions(PINS)
    fc.deterministic_torch()
    text, summaries = build()
    again, _ = build()
    assert text == again, "two runs gave different JSON"
    OUT.write_text(text)
    fc.make_readable([OUT])
    for s in summaries:
        print(s)
    assert fc.list_files([OUT]) < 1 << 20


if __name__ == "__main__":
    main()
