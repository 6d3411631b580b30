#!/usr/bin/env python3
"""DoRA reference fixtures for qlora, from PEFT on the tiny bitsandbytes NF4 base.

Writes
  Tests/QLoRATests/Fixtures/tiny-llama-dora-grads.json
  Tests/QLoRATests/Fixtures/tiny-llama-peft-dora-adapter/   (PeftModel.save_pretrained of case "dora_all")

Input: the committed folder Tests/QLoRATests/Fixtures/tiny-llama-bnb-nf4 (tools/make_model_fixtures.py),
loaded by transformers on the CPU in float32 with eager attention; get_peft_model wraps each
target linear as peft.tuners.lora.bnb.Linear4bit with LoraConfig(use_dora=True). PEFT 0.21.2's
DoRA (tuners/lora/dora.py, DoraLinearLayer) with lora_dropout 0 computes

    W = dequantize_4bit(weight)                         [out, in]
    n = ||W + scaling * B A||  per output row, detached  [out]
    y = base(x) + (m/n - 1) * base(x) + (m/n) * scaling * (x A^T) B^T = (m/n) * (x W^T + scaling x A^T B^T)

with m the trained `lora_magnitude_vector` [out], initialized by PEFT to ||W|| (B = 0 at init).

Cases (the batch of tools/make_lora_fixtures.py):
  dora_all      r=4, lora_alpha=8, q/k/v/o/gate/up/down_proj, dropout 0; logits of the last
                position of each row recorded; the adapter saved as tiny-llama-peft-dora-adapter
                (after the values below were set), and the merged fp32 weight of
                model.layers.0.self_attn.q_proj and model.layers.1.mlp.down_proj (PEFT's
                merge_and_unload on the dequantized fp32 copy) recorded.
  dora_rslora_qv   use_rslora, layers_to_transform=[1], q_proj and v_proj only.
After get_peft_model, from one torch.Generator seeded with SEED in sorted parameter-name order:
lora_A ~ N(0, 0.1), lora_B ~ N(0, 0.02), lora_magnitude_vector m <- m * (1 + N(0, 0.05)), so
m/n differs from 1 through both m and B.

Checks made on every run: the same PEFT setup on a float32 LlamaForCausalLM whose linears hold
dequantize_4bit of the NF4 weights gives the same loss, and gradients within 1e-6 of each
tensor's largest; the saved adapter has PEFT's key names (…q_proj.lora_magnitude_vector) and
"use_dora": true. Run it twice: identical JSON.

Environment: /work/venv-fixtures as in tools/make_lora_fixtures.py (torch 2.15.0,
bitsandbytes 0.50.2, transformers 5.23.0, peft 0.21.2); run from the repo root:

    /work/venv-fixtures/bin/python tools/make_dora_fixtures.py
"""

import json
import shutil

import torch

import fixture_common as fc

PINS = {"torch": "2.15.0", "bitsandbytes": "0.50.2", "transformers": "5.23.0", "peft": "0.21.2", "numpy": "2.4.6"}

OUT = fc.QLORA_FIXTURES / "tiny-llama-dora-grads.json"
ADAPTER = fc.QLORA_FIXTURES / "tiny-llama-peft-dora-adapter"

SEED = 20261206
BATCH, SEQ = 2, 12
MASKED_PREFIX = [4, 6]
A_STD, B_STD, M_STD = 0.1, 0.02, 0.05
ALL_LINEARS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
MERGED = ["model.layers.0.self_attn.q_proj", "model.layers.1.mlp.down_proj"]

CASES = [
    dict(name="dora_all", lora=dict(r=4, lora_alpha=8, lora_dropout=0.0, bias="none", target_modules=ALL_LINEARS,
                                    use_rslora=False, layers_to_transform=None, use_dora=True), save=True),
    dict(name="dora_rslora_qv", lora=dict(r=4, lora_alpha=8, lora_dropout=0.0, bias="none", target_modules=["q_proj", "v_proj"],
                                          use_rslora=True, layers_to_transform=[1], use_dora=True), save=False),
]


def make_batch():
    return fc.labelled_batch(SEED, BATCH, SEQ, MASKED_PREFIX)


def wrap(model, case):
    pm = fc.seeded_lora(model, case["lora"], SEED, A_STD, B_STD, magnitude_std=M_STD)
    pm.train()
    return pm


def run_case(case, ids, labels, tmp):
    nf4, linears = fc.load_tiny_nf4()
    ref = fc.dequantized_fp32_copy(nf4, linears)
    pm = wrap(nf4, case)
    out, params = fc.peft_loss_and_grads(pm, ids, labels)
    fc.assert_not_repacked(linears)
    pref = wrap(ref, case)
    out_ref, params_ref = fc.peft_loss_and_grads(pref, ids, labels)
    assert abs(out.loss.item() - out_ref.loss.item()) <= 1e-6 * abs(out_ref.loss.item()), (out.loss.item(), out_ref.loss.item())
    worst = fc.assert_grads_match(params, params_ref)
    assert any("lora_magnitude_vector" in k for k in params)

    rec = {
        "name": case["name"],
        "lora_config": dict(fc.lora_config_record(pm), use_dora=True),
        "scaling": fc.lora_scaling(pm),
        "loss": float(out.loss.detach().item()),
        "loss_f32": fc.f32_hex(out.loss.reshape(1)),
        "params": fc.lora_params_record(params),
    }
    if case["save"]:
        last = out.logits[:, -1, :]
        rec["logits_last"] = {"shape": list(last.shape), "f32": fc.f32_hex(last)}
        pm.eval()
        pm.save_pretrained(str(tmp))
        saved = json.loads((tmp / "adapter_config.json").read_text())
        assert saved["use_dora"] is True
        # PEFT writes target_modules in set order, which Python's string hashing changes from
        # run to run: sorted, the committed file is reproducible.
        saved["target_modules"] = sorted(saved["target_modules"])
        (tmp / "adapter_config.json").write_text(json.dumps(saved, indent=2, sort_keys=True))
        from safetensors import safe_open
        with safe_open(str(tmp / "adapter_model.safetensors"), "pt") as f:
            keys = set(f.keys())
        assert keys == set(params.keys()), sorted(keys ^ set(params.keys()))[:4]
        # PEFT's merge on the dequantized fp32 copy: W' = (m / ||W + s B A||) * (W + s B A).
        pref.eval()
        merged = pref.merge_and_unload()
        rec["merged"] = {name: {"shape": list(w.shape), "f32": fc.f32_hex(w)}
                         for name in MERGED for w in [merged.get_submodule(name).weight.detach()]}
    summary = (f"{case['name']}: loss {rec['loss']:.9f}, {len(params)} tensors, scaling {rec['scaling']}, "
               f"max rel |grad - dequantized fp32 grad| {worst:.2e}")
    return rec, summary


def build(tmp):
    ids, labels = make_batch()
    doc = {
        "generator": "tools/make_dora_fixtures.py",
        "versions": fc.module_versions("torch", "bitsandbytes", "transformers", "peft"),
        "model": "tiny-llama-bnb-nf4",
        "encoding": fc.F32_HEX_ENCODING,
        "note": fc.LORA_GRADS_NOTE + " DoRA: y = (m/n) * (base(x) + scaling * (x A^T) B^T), n = ||W + scaling B A|| per "
                "output row (detached); lora_magnitude_vector m [out].",
        "input_ids": ids.tolist(),
        "labels": labels.tolist(),
        "n_counted_tokens": int((labels[:, 1:] != -100).sum().item()),
        "cases": [],
    }
    summaries = []
    for case in CASES:
        rec, s = run_case(case, ids, labels, tmp)
        doc["cases"].append(rec)
        summaries.append(s)
    return fc.fixture_json(doc), summaries


def main():
    import tempfile
    from pathlib import Path

    fc.check_versions(PINS)
    fc.deterministic_torch()
    with tempfile.TemporaryDirectory() as t1, tempfile.TemporaryDirectory() as t2:
        text, summaries = build(Path(t1))
        again, _ = build(Path(t2))
        assert text == again, "two runs gave different JSON"
        assert (Path(t1) / "adapter_model.safetensors").read_bytes() == (Path(t2) / "adapter_model.safetensors").read_bytes()
        OUT.write_text(text)
        if ADAPTER.exists():
            shutil.rmtree(ADAPTER)
        ADAPTER.mkdir()
        for f in ["adapter_config.json", "adapter_model.safetensors"]:
            shutil.copy(Path(t1) / f, ADAPTER / f)
    files = [OUT, ADAPTER / "adapter_config.json", ADAPTER / "adapter_model.safetensors"]
    fc.make_readable(files)
    for s in summaries:
        print(s)
    assert fc.list_files(files) < 1 << 20


if __name__ == "__main__":
    main()
