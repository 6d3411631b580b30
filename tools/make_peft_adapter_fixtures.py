#!/usr/bin/env python3
"""Generate PEFT-format adapter fixtures for qlora: adapters PEFT writes, which qlora must
read, and PEFT's logits with an adapter qlora wrote, which PEFT must read.

Writes into Tests/QLoRATests/Fixtures/ (and nowhere else; each folder is deleted and rewritten):

  tiny-llama-peft-adapter/          PeftModel.save_pretrained of get_peft_model(tiny NF4 model,
                                    LoraConfig(r=4, lora_alpha=8, lora_dropout=0, bias="none",
                                    target_modules=q/k/v/o/gate/up/down_proj)): adapter_config.json
                                    and adapter_model.safetensors as PEFT writes them
  tiny-llama-peft-adapter-layer0/   the same with r=2, lora_alpha=3.5 (a float), use_rslora,
                                    target_modules=q_proj,v_proj and layers_to_transform=[0]
                                    (a layer set that is not "the last N" of the 2 layers)
  tiny-llama-peft-adapter-expected.json
                                    input_ids [2, 6] and the logits [2, 6, 256] of every position
                                    for three cases: the two adapters above, and the committed
                                    qlora-written adapter below loaded by PeftModel.from_pretrained
  tiny-llama-peft-adapter-norms/    trained norms through PEFT's modules_to_save: r=4, lora_alpha=8,
                                    target_modules=q/k/v/o_proj, modules_to_save=["norm"] (PEFT's
                                    plain suffix match: every input_layernorm, post_attention_layernorm
                                    and model.norm), each wrapped norm's weight perturbed
  tiny-llama-peft-adapter-norms-subset/
                                    r=2, lora_alpha=4, target_modules=q_proj,v_proj,
                                    modules_to_save=["post_attention_layernorm", "model.norm"]: the
                                    input_layernorms stay the base's
  tiny-llama-peft-norms-expected.json
                                    the same input_ids and layout, for the two norm adapters above
                                    and the committed qlora-written tiny-llama-qlora-adapter-norms

Read, not written: Tests/QLoRATests/Fixtures/tiny-llama-qlora-adapter/ and
tiny-llama-qlora-adapter-norms/ (trained norms written as modules_to_save), adapters that qlora's
AdapterFiles.save wrote (AdapterFilesTests.testQLoRAWritten…MatchesCommittedFolder; run them
with QLORA_WRITE_ADAPTER_FIXTURE=1 to rewrite the folders, then run this script again).

Base model: the committed Tests/QLoRATests/Fixtures/tiny-llama-bnb-nf4 (tools/make_model_fixtures.py:
2 layers, hidden 64, intermediate 320, 4 heads / 2 KV heads, vocab 256, NF4 + double quant),
loaded as in tools/make_lora_fixtures.py: transformers on the CPU in float32, eager attention,
bitsandbytes' CPU bf16 path off (support_avx512bf16_for_cpu = False), so each adapted linear is
    y = F.linear(x, dequantize_4bit(W)) + lora_B(lora_A(x)) * scaling      (fp32)
with scaling = lora_alpha / r, or lora_alpha / sqrt(r) with use_rslora.  The script asserts that
the logits equal, within 1e-6 of the largest, those of the same adapter on a plain float32
LlamaForCausalLM holding the dequantized NF4 weights: i.e. what qlora computes.

Adapter values: every lora_A ~ N(0, 0.1), lora_B ~ N(0, 0.02), both non-zero, and every
modules_to_save norm weight w·(1 + N(0, 0.2)), from one torch.Generator seeded with SEED, in
sorted parameter-name order over the case's own LoRA and modules_to_save parameters.  PEFT's README.md model card is deleted from the adapter folders (qlora ignores
it); base_model_name_or_path is set to "tiny-llama-bnb-nf4" so no local path is written.

JSON layout: "input_ids" [[int]]; "cases" [{name, adapter (folder name), written_by, scaling,
"logits": {"shape": [2, 6, 256], "f32": hex}}].  Float32 arrays are lowercase hex of
little-endian bytes, row-major.

Environment used for the committed fixtures (CPU only, x86_64, Python 3.11):

    python3 -m venv /work/venv-fixtures
    /work/venv-fixtures/bin/pip install torch==2.15.0 bitsandbytes==0.50.2 gguf==0.19.0 \
        numpy==2.4.6 transformers==5.23.0 safetensors==0.8.0 accelerate==1.15.0 peft==0.21.2
    /work/venv-fixtures/bin/python tools/make_peft_adapter_fixtures.py     # from the repo root

Determinism: PYTHONHASHSEED=0 (the script re-executes itself with it: PEFT writes target_modules
in set order), one torch thread, deterministic algorithms, explicit generator; the script builds
everything twice from fresh loads and asserts the two builds are byte-identical.
"""

import os
import shutil
import sys
import tempfile
from pathlib import Path

import torch

import peft
from peft import PeftModel
from safetensors.torch import load_file

import fixture_common as fc

PINS = {
    "torch": "2.15.0",
    "bitsandbytes": "0.50.2",
    "transformers": "5.23.0",
    "peft": "0.21.2",
    "numpy": "2.4.6",
}

FIX = fc.QLORA_FIXTURES
QLORA_ADAPTER = FIX / "tiny-llama-qlora-adapter"
OUT_JSON = FIX / "tiny-llama-peft-adapter-expected.json"
QLORA_NORMS_ADAPTER = FIX / "tiny-llama-qlora-adapter-norms"
OUT_NORMS_JSON = FIX / "tiny-llama-peft-norms-expected.json"

SEED = 20240917
BATCH, SEQ = 2, 6
A_STD, B_STD = 0.1, 0.02
NORM_STD = 0.2
ALL_LINEARS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]

PEFT_CASES = [
    dict(name="peft_all_linears", folder="tiny-llama-peft-adapter",
         lora=dict(r=4, lora_alpha=8, lora_dropout=0.0, bias="none", target_modules=ALL_LINEARS)),
    dict(name="peft_layer0_qv_rslora", folder="tiny-llama-peft-adapter-layer0",
         lora=dict(r=2, lora_alpha=3.5, lora_dropout=0.0, bias="none", target_modules=["q_proj", "v_proj"],
                   use_rslora=True, layers_to_transform=[0])),
]

PEFT_NORM_CASES = [
    dict(name="peft_norms", folder="tiny-llama-peft-adapter-norms", norms=5,
         lora=dict(r=4, lora_alpha=8, lora_dropout=0.0, bias="none", target_modules=ALL_LINEARS[:4],
                   modules_to_save=["norm"])),
    dict(name="peft_norms_subset", folder="tiny-llama-peft-adapter-norms-subset", norms=3,
         lora=dict(r=2, lora_alpha=4, lora_dropout=0.0, bias="none", target_modules=["q_proj", "v_proj"],
                   modules_to_save=["post_attention_layernorm", "model.norm"])),
]


def make_ids():
    gen = torch.Generator().manual_seed(SEED)
    return torch.randint(3, 256, (BATCH, SEQ), generator=gen, dtype=torch.long)


def logits_of(pm, ids):
    pm.eval()
    with torch.no_grad():
        return pm(input_ids=ids, use_cache=False).logits


def seeded_peft(model, lora):
    pm = fc.seeded_lora(model, lora, SEED, A_STD, B_STD, NORM_STD)
    pm.peft_config["default"].base_model_name_or_path = fc.TINY_NF4_DIR.name
    return pm


def assert_matches_dequantized(logits, ref_logits, what):
    err = ((logits - ref_logits).abs().max() / ref_logits.abs().max()).item()
    assert err < 1e-6, (what, err)
    return err


def peft_case(case, ids, out_dir: Path):
    """Saves a seeded PEFT adapter into out_dir / folder; returns the case record."""
    nf4, linears = fc.load_tiny_nf4()
    ref = fc.dequantized_fp32_copy(nf4, linears)
    pm = seeded_peft(nf4, case["lora"])
    logits = logits_of(pm, ids)
    fc.assert_not_repacked(linears)
    err = assert_matches_dequantized(logits, logits_of(seeded_peft(ref, case["lora"]), ids), case["name"])
    folder = out_dir / case["folder"]
    pm.save_pretrained(folder)
    (folder / "README.md").unlink(missing_ok=True)
    saved = load_file(folder / "adapter_model.safetensors")
    norms = [k for k in saved if k.endswith("norm.weight")]
    assert len(norms) == case.get("norms", 0), sorted(saved)
    assert saved and all(".lora_A.weight" in k or ".lora_B.weight" in k or k in norms for k in saved), sorted(saved)
    rec = {"name": case["name"], "adapter": case["folder"], "written_by": f"peft {peft.__version__} save_pretrained",
           "scaling": fc.lora_scaling(pm), "logits": {"shape": list(logits.shape), "f32": fc.f32_hex(logits)}}
    return rec, f"{case['name']}: {len(saved)} tensors, scaling {rec['scaling']}, max rel vs dequantized fp32 {err:.1e}"


def qlora_case(ids, adapter=QLORA_ADAPTER, name="qlora_written"):
    """PEFT's logits with the adapter qlora wrote, after checking PEFT loaded every tensor of it
    (trained norms into the modules_to_save copies that the forward uses)."""
    assert (adapter / "adapter_model.safetensors").exists(), (
        f"{adapter} is missing: run QLORA_WRITE_ADAPTER_FIXTURE=1 swift test --filter "
        "'AdapterFilesTests/testQLoRAWritten' first")
    saved = load_file(adapter / "adapter_model.safetensors")
    logits = []
    for make in (lambda: fc.load_tiny_nf4()[0], lambda: fc.dequantized_fp32_copy(*fc.load_tiny_nf4())):
        pm = PeftModel.from_pretrained(make(), adapter)
        params = {n.replace(".modules_to_save.default.", ".").replace(".default.", "."): p
                  for n, p in pm.named_parameters() if ".lora_" in n or ".modules_to_save." in n}
        assert params.keys() == saved.keys(), (sorted(params.keys() ^ saved.keys()))
        for k, t in saved.items():
            assert torch.equal(params[k], t), k
        logits.append(logits_of(pm, ids))
        scaling = fc.lora_scaling(pm)
    err = assert_matches_dequantized(logits[0], logits[1], name)
    rec = {"name": name, "adapter": adapter.name, "written_by": "qlora AdapterFiles.save",
           "scaling": scaling, "logits": {"shape": list(logits[0].shape), "f32": fc.f32_hex(logits[0])}}
    return rec, f"{name}: {len(saved)} tensors loaded by PEFT, scaling {scaling}, max rel vs dequantized fp32 {err:.1e}"


def build(out_dir: Path):
    ids = make_ids()
    doc = {
        "generator": "tools/make_peft_adapter_fixtures.py",
        "versions": fc.module_versions("torch", "bitsandbytes", "transformers", "peft"),
        "model": fc.TINY_NF4_DIR.name,
        "encoding": fc.F32_HEX_ENCODING,
        "note": ("PEFT LoRA on the bitsandbytes NF4 model, float32, eager attention, bnb's CPU bf16 path off "
                 "(base forward = dequantize_4bit fp32 + F.linear). logits [batch, position, vocab] of every "
                 "position, no attention mask, no cache."),
        "input_ids": ids.tolist(),
        "cases": [],
    }
    summaries = []
    for case in PEFT_CASES:
        rec, s = peft_case(case, ids, out_dir)
        doc["cases"].append(rec)
        summaries.append(s)
    rec, s = qlora_case(ids)
    doc["cases"].append(rec)
    summaries.append(s)
    (out_dir / OUT_JSON.name).write_text(fc.fixture_json(doc))
    doc["note"] += (" Trained norms through modules_to_save: PEFT's forward uses the wrapped copies, "
                    "qlora's the norm weights it loads from the same tensors.")
    doc["cases"] = []
    for case in PEFT_NORM_CASES:
        rec, s = peft_case(case, ids, out_dir)
        doc["cases"].append(rec)
        summaries.append(s)
    rec, s = qlora_case(ids, QLORA_NORMS_ADAPTER, "qlora_written_norms")
    doc["cases"].append(rec)
    summaries.append(s)
    (out_dir / OUT_NORMS_JSON.name).write_text(fc.fixture_json(doc))
    return summaries


def tree_bytes(d: Path):
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


def main():
    if os.environ.get("PYTHONHASHSEED") != "0":
        # PEFT writes target_modules in set order, which depends on the string hash seed.
        os.execve(sys.executable, [sys.executable] + sys.argv, {**os.environ, "PYTHONHASHSEED": "0"})
    fc.check_versions(PINS)
    fc.deterministic_torch()
    with tempfile.TemporaryDirectory() as a, tempfile.TemporaryDirectory() as b:
        summaries = build(Path(a))
        build(Path(b))
        assert tree_bytes(Path(a)) == tree_bytes(Path(b)), "two builds differ"
        for case in PEFT_CASES + PEFT_NORM_CASES:
            dst = FIX / case["folder"]
            shutil.rmtree(dst, ignore_errors=True)
            shutil.copytree(Path(a) / case["folder"], dst)
        shutil.copyfile(Path(a) / OUT_JSON.name, OUT_JSON)
        shutil.copyfile(Path(a) / OUT_NORMS_JSON.name, OUT_NORMS_JSON)
    for s in summaries:
        print(s)
    written = [OUT_JSON, OUT_NORMS_JSON] + [p for c in PEFT_CASES + PEFT_NORM_CASES for p in sorted((FIX / c["folder"]).iterdir())]
    fc.make_readable(written)
    assert fc.list_files(written) < 1 << 20


if __name__ == "__main__":
    main()
