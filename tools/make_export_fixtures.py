#!/usr/bin/env python3
"""Reference fixtures for `qlora export` (LoRA merged into the dequantized 4-bit base), and the
check that transformers loads a folder qlora exported.

Default mode writes into Tests/QLoRATests/Fixtures/ (and nowhere else):

  tiny-llama-export-adapter/      a seeded LoRA adapter, saved by PEFT's save_pretrained
                                  (adapter_config.json, adapter_model.safetensors; the model
                                  card README.md is removed)
  tiny-llama-export-expected.json input ids and PEFT's logits at every position [T, V] with
                                  that adapter on the NF4 base

Input: the committed folder Tests/QLoRATests/Fixtures/tiny-llama-bnb-nf4 (tools/
make_model_fixtures.py: 2 layers, hidden 64, intermediate 320, 4 heads / 2 KV heads, head_dim
16, vocab 256, NF4 with double quantization, untied LM head).  Loaded by transformers on the
CPU in float32, eager attention, bitsandbytes' CPU bf16 path off (see the caveats in
make_model_fixtures.py), so every target linear is peft.tuners.lora.bnb.Linear4bit:
    y = F.linear(x, dequantize_4bit(W)) + scaling * lora_B(lora_A(x))
LoraConfig(r=4, lora_alpha=16, lora_dropout=0, bias="none", target_modules = every linear but
up_proj (so the export also writes linears without an adapter)); scaling 16 / 4 = 4.
lora_A ~ N(0, 0.1), lora_B ~ N(0, 0.02) (B non-zero, so the merge changes W), drawn from one
torch.Generator seeded with SEED in sorted parameter-name order.

Checks on every run:
  * the saved adapter, loaded back with PeftModel.from_pretrained onto a fresh NF4 base, gives
    the recorded logits bit for bit;
  * a plain float32 Llama holding dequantize_4bit of every NF4 linear, with the same adapter
    merged by PEFT's merge_and_unload, gives the recorded logits within 1e-5 of their largest
    magnitude: the merged fp32 model that `qlora export` writes is expected to do the same;
  * building twice gives the same JSON text (and two runs of the script byte-identical files:
    adapter_config.json is rewritten with target_modules sorted, base_model_name_or_path
    relative).

--check-export DIR
    Loads DIR (a folder written by `qlora export`) with AutoModelForCausalLM.from_pretrained in
    float32 and compares its logits with tiny-llama-export-expected.json (for an export of
    tiny-llama-bnb-nf4 with tiny-llama-export-adapter):
      swift run qlora export --model Tests/QLoRATests/Fixtures/tiny-llama-bnb-nf4 \\
          --adapter Tests/QLoRATests/Fixtures/tiny-llama-export-adapter -o /tmp/tiny-merged
      /work/venv-fixtures/bin/python tools/make_export_fixtures.py --check-export /tmp/tiny-merged
--check-export DIR --gguf FILE
    Compares DIR (an export of FILE without an adapter) with transformers reading FILE itself
    (from_pretrained(..., gguf_file=...), which dequantizes with gguf-py): the chat template
    and token ids of AutoTokenizer on both, then logits at every position of a chat prompt.
      swift run qlora export --model models/SmolLM2-135M-Instruct.Q4_1.gguf -o /tmp/smol-fp32
      /work/venv-fixtures/bin/python tools/make_export_fixtures.py --check-export /tmp/smol-fp32 \\
          --gguf models/SmolLM2-135M-Instruct.Q4_1.gguf
--check-export DIR --gguf FILE --adapter ADAPTER
    The same for an export of FILE with a qlora adapter: the reference is transformers on FILE
    with the adapter applied by PeftModel.from_pretrained (unmerged); trained norms (PEFT's
    modules_to_save, which from_pretrained loads itself) are also copied into the model first,
    so adapters of the older qlora layout (qlora_trains_norms, ignored by PEFT) check the same.
Check modes write nothing and exit non-zero when a difference passes its tolerance.

Environment used for the committed fixtures (CPU only, x86_64, Python 3.11):

    python3 -m venv /work/venv-fixtures
    /work/venv-fixtures/bin/pip install torch==2.15.0 bitsandbytes==0.50.2 gguf==0.19.0 \\
        numpy==2.4.6 transformers==5.23.0 safetensors==0.8.0 accelerate==1.15.0 peft==0.21.2
    /work/venv-fixtures/bin/python tools/make_export_fixtures.py      # from the repo root
"""

import argparse
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import torch

from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer

import fixture_common as fc

PINS = {
    "torch": "2.15.0",
    "bitsandbytes": "0.50.2",
    "transformers": "5.23.0",
    "peft": "0.21.2",
    "numpy": "2.4.6",
}

ADAPTER_DIR = fc.QLORA_FIXTURES / "tiny-llama-export-adapter"
OUT = fc.QLORA_FIXTURES / "tiny-llama-export-expected.json"

SEED = 20240603
INPUT_IDS = [1, 17, 42, 99, 128, 200, 255, 3, 64, 77, 150, 31]
A_STD, B_STD = 0.1, 0.02
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "down_proj"]
LORA = dict(r=4, lora_alpha=16, lora_dropout=0.0, bias="none", target_modules=TARGETS)
MERGE_TOL = 1e-5        # of the largest |logit|: fp32 merge vs PEFT's unmerged forward
EXPORT_TOL = 1e-5       # the same for a folder qlora exported
GGUF_TOL = 1e-4         # of the largest |logit|: qlora's fp32 export vs transformers on the GGUF
CHAT = [{"role": "user", "content": "What is the capital of France? Answer in one word."}]


def from_hex(s: str, shape) -> torch.Tensor:
    return torch.from_numpy(np.frombuffer(bytes.fromhex(s), dtype="<f4").copy()).reshape(shape)


def all_logits(model, ids) -> torch.Tensor:
    with torch.no_grad():
        out = model(input_ids=torch.tensor([ids], dtype=torch.long), use_cache=False)
    return out.logits[0].to(torch.float32).clone()


def rel_diff(a, b) -> float:
    return ((a - b).abs().max() / b.abs().max()).item()


def build():
    nf4, _ = fc.load_tiny_nf4()
    pm = fc.seeded_lora(nf4.eval(), LORA, SEED, A_STD, B_STD)
    pm.eval()
    logits = all_logits(pm, INPUT_IDS)
    scaling = fc.lora_scaling(pm)
    assert scaling == 4.0, scaling

    if ADAPTER_DIR.exists():
        shutil.rmtree(ADAPTER_DIR)
    pm.save_pretrained(ADAPTER_DIR, safe_serialization=True)
    (ADAPTER_DIR / "README.md").unlink(missing_ok=True)
    # PEFT records the base as the absolute path it was loaded from (keep the fixture portable)
    # and target_modules in set order, which varies with PYTHONHASHSEED (keep it reproducible)
    cfg_path = ADAPTER_DIR / "adapter_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["base_model_name_or_path"] = fc.TINY_NF4_DIR.name
    cfg["target_modules"] = sorted(cfg["target_modules"])
    cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    fc.make_readable(ADAPTER_DIR.iterdir())

    fresh, _ = fc.load_tiny_nf4()
    reloaded = PeftModel.from_pretrained(fresh.eval(), ADAPTER_DIR).eval()
    assert torch.equal(all_logits(reloaded, INPUT_IDS), logits), "saved adapter gives other logits"

    dequantized = fc.dequantized_fp32_copy(*fc.load_tiny_nf4()).eval()
    merged = PeftModel.from_pretrained(dequantized, ADAPTER_DIR).merge_and_unload().eval()
    merge_diff = rel_diff(all_logits(merged, INPUT_IDS), logits)
    assert merge_diff < MERGE_TOL, merge_diff

    doc = {
        "generator": "tools/make_export_fixtures.py",
        "versions": fc.module_versions("torch", "bitsandbytes", "transformers", "peft"),
        "model": "tiny-llama-bnb-nf4",
        "adapter": "tiny-llama-export-adapter",
        "encoding": fc.F32_HEX_ENCODING,
        "note": (
            "PEFT LoRA (lora_config) on the bitsandbytes NF4 model, float32, eager attention, bnb's "
            "CPU bf16 path off. logits [T, V] at every position of input_ids. "
            "merged_fp32_rel_diff: max |logits of merge_and_unload on the dequantized fp32 base - "
            "logits| / max |logits|."
        ),
        "lora_config": dict(LORA, use_rslora=False),
        "scaling": scaling,
        "input_ids": INPUT_IDS,
        "logits": {"shape": list(logits.shape), "f32": fc.f32_hex(logits)},
        "merged_fp32_rel_diff": merge_diff,
    }
    return fc.fixture_json(doc), merge_diff


def make_fixtures():
    text, merge_diff = build()
    again, _ = build()
    assert text == again, "two runs gave different JSON"
    OUT.write_text(text)
    fc.make_readable([OUT])
    print(f"merge_and_unload on the dequantized fp32 base vs PEFT on NF4: {merge_diff:.2e} of max |logit|")
    fc.list_files([*sorted(ADAPTER_DIR.iterdir()), OUT])


def load_export(directory):
    model = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32, attn_implementation="eager").eval()
    assert getattr(model.config, "quantization_config", None) is None, "the export is not plain fp32"
    assert all(p.dtype == torch.float32 for p in model.parameters())
    return model


def check_tiny(directory) -> bool:
    doc = json.loads(OUT.read_text())
    expected = from_hex(doc["logits"]["f32"], doc["logits"]["shape"])
    got = all_logits(load_export(directory), doc["input_ids"])
    diff = (got - expected).abs().max().item()
    rel = rel_diff(got, expected)
    print(f"{directory}: max |logits - PEFT's| = {diff:.3e}, {rel:.3e} of max |logit| (tolerance {EXPORT_TOL:g}); "
          f"PEFT's own fp32 merge: {doc['merged_fp32_rel_diff']:.3e}")
    return rel < EXPORT_TOL


def gguf_with_adapter(model, adapter):
    """transformers' GGUF model with a qlora adapter: trained norms copied in, LoRA by PEFT."""
    from safetensors.torch import load_file
    tensors = load_file(Path(adapter) / "adapter_model.safetensors")
    prefix = "base_model.model."
    norms = {k[len(prefix):]: v for k, v in tensors.items() if k.endswith("norm.weight")}
    sd = model.state_dict()
    with torch.no_grad():
        for name, value in norms.items():
            sd[name].copy_(value)
    return PeftModel.from_pretrained(model, adapter).eval(), len(norms)


def check_gguf(directory, gguf, adapter=None) -> bool:
    gguf = Path(gguf).resolve()
    tok_gguf = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    tok_export = AutoTokenizer.from_pretrained(directory)
    text_gguf = tok_gguf.apply_chat_template(CHAT, tokenize=False, add_generation_prompt=True)
    text_export = tok_export.apply_chat_template(CHAT, tokenize=False, add_generation_prompt=True)
    ids = tok_export(text_export, add_special_tokens=False)["input_ids"]
    same_tokens = text_gguf == text_export and ids == tok_gguf(text_gguf, add_special_tokens=False)["input_ids"]
    print(f"chat template and token ids equal: {same_tokens} ({len(ids)} tokens)")

    reference = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32,
                                                     attn_implementation="eager").eval()
    model = load_export(directory)
    sd_ref, sd = reference.state_dict(), model.state_dict()
    missing = sorted(set(sd_ref) ^ set(sd))
    if adapter is None:
        weight_diff = max((sd[k] - sd_ref[k]).abs().max().item() for k in sd_ref if k in sd)
        print(f"weights: max |export - transformers' GGUF dequantization| = {weight_diff:.3e}; names only in one: {missing}")
    else:
        reference, n_norms = gguf_with_adapter(reference, adapter)
        print(f"reference: PEFT adapter {adapter} on transformers' GGUF model, {n_norms} trained norms copied in; "
              f"names only in one: {missing}")
    got, expected = all_logits(model, ids), all_logits(reference, ids)
    diff = (got - expected).abs().max().item()
    rel = rel_diff(got, expected)
    print(f"logits over {len(ids)} positions: max |diff| = {diff:.3e}, {rel:.3e} of max |logit| {expected.abs().max().item():.2f} "
          f"(tolerance {GGUF_TOL:g}); same argmax at every position: {torch.equal(got.argmax(-1), expected.argmax(-1))}")
    return same_tokens and not missing and rel < GGUF_TOL


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--check-export", metavar="DIR", help="check a folder written by qlora export")
    ap.add_argument("--gguf", metavar="FILE", help="with --check-export: the GGUF file DIR was exported from")
    ap.add_argument("--adapter", metavar="DIR", help="with --gguf: the qlora adapter DIR was exported with")
    args = ap.parse_args()
    fc.check_versions(PINS)
    fc.deterministic_torch()
    if args.check_export is None:
        if args.gguf or args.adapter:
            ap.error("--gguf and --adapter go with --check-export")
        make_fixtures()
        return
    if args.adapter and not args.gguf:
        ap.error("--adapter goes with --gguf (the tiny check knows its adapter)")
    ok = check_gguf(args.check_export, args.gguf, args.adapter) if args.gguf else check_tiny(args.check_export)
    print("OK" if ok else "FAILED")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
