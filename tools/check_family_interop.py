#!/usr/bin/env python3
"""Per model family, the interop of qlora's adapters and exports with PEFT, transformers and
llama.cpp's GGUF conventions, on the committed tiny models (tools/make_model_fixtures.py,
tools/make_family_fixtures.py). Prints one table row per family:

  qlora→PEFT   `qlora train --model tiny-FAM-bnb-nf4 --lora-targets all-linear --train-norms`
               (the tiny models have no tokenizer: seeded random ids) for a few updates at a high
               learning rate; PeftModel.from_pretrained loads lora_final (every tensor of it,
               norms into modules_to_save, checked value for value) onto the NF4 model that
               transformers loads; its logits vs qlora's for the same ids.
  PEFT→qlora   a seeded PEFT adapter (fc.seeded_lora: every linear of the family, phi3's fused
               qkv_proj/gate_up_proj included; modules_to_save=["norm"], i.e. every norm, each
               perturbed) saved by save_pretrained; qlora's logits with --adapter vs PEFT's.
  HF export    `qlora export --model NF4 --adapter A -o DIR` for both adapters above;
               AutoModelForCausalLM.from_pretrained(DIR) (the class config.json names) vs PEFT's
               logits on the NF4 model with A (unmerged).
  GGUF export  `qlora export ... --format gguf --type f32` for both adapters, read by gguf-py:
               general.architecture is llama.cpp's for the family (mistral → llama); every tensor
               name is the one gguf.get_tensor_name_map(arch) gives the HF export's tensor, and is
               in gguf.MODEL_TENSORS[arch] (so phi3's qkv_proj is attn_qkv and gate_up_proj ffn_up,
               2·F rows); the values equal the HF export's: q/k rows permuted as
               convert_hf_to_gguf.py's LlamaModel.permute for llama/mistral only, gemma3's norms
               stored as 1 + w (every *norm.weight, q/k norms included), all others as they are;
               the <arch>.* hyperparameters are config.json's (hparams_as_gguf) and gemma3/phi3
               carry the sliding window. Then qlora reads the GGUF back (no adapter): its logits
               within READBACK_TOL of PEFT's (qlora requantizes F32 GGUF linears to Q8_0), over the
               positions GGUF can express (mistral: the first 4, its window being lost in llama.cpp's
               llama architecture; gemma3: against transformers with llama.cpp's gemma3
               assumptions, gemma3_as_gguf).

qlora's logits come from `qlora perplexity --logits-out FILE` (hidden option: --text holds token
ids, one forward over all of them, fp32 logits [T, V]). Numbers are max |Δlogit| / max |logit| of
the reference; GGUF: max |Δ| over all tensor values (f32, exact expected). Also `qlora merge --requantize nf4` of the trained adapter ("merge nf4"): qlora's logits on
the new bitsandbytes folder vs transformers' on it; and a GGUF base ("GGUF base",
check_gguf_source): train on the model exported as Q8_0 GGUF, PEFT on its HF export as the
reference. Tolerances: 2e-5
(unmerged qlora vs PEFT: the same fp32 math in another order; FamilyModelTests' 2e-5), 1e-5 for
a merged export (make_export_fixtures.py's EXPORT_TOL), 0 for GGUF values.

Usage, from the repo root (writes only under a temporary folder; exits non-zero on a failure):
    swift build && /work/venv-fixtures/bin/python tools/check_family_interop.py [FAMILY ...] [--keep DIR] [--dora]
--dora runs every check with DoRA adapters (qlora train --use-dora; PEFT's use_dora=True, its
magnitude ‖W‖ per row as PEFT initializes it, B non-zero so that m/n differs from 1).

Environment: /work/venv-fixtures (torch 2.15.0, bitsandbytes 0.50.2, transformers 5.23.0,
peft 0.21.2, gguf 0.19.0, safetensors 0.8.0, numpy 2.4.6), CPU only.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import traceback
from pathlib import Path

import numpy as np
import torch

import fixture_common as fc

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing is fetched: every model and adapter is local

PINS = {"torch": "2.15.0", "bitsandbytes": "0.50.2", "transformers": "5.23.0", "peft": "0.21.2",
        "gguf": "0.19.0", "numpy": "2.4.6"}
QLORA = fc.ROOT / ".build" / "debug" / "qlora"
FAMILIES = ["llama", "mistral", "qwen2", "qwen3", "gemma2", "gemma3", "phi3"]
GGUF_ARCH = {"llama": "LLAMA", "mistral": "LLAMA", "qwen2": "QWEN2", "qwen3": "QWEN3", "gemma2": "GEMMA2", "gemma3": "GEMMA3", "phi3": "PHI3"}
PERMUTES_QK = {"llama", "mistral"}
NORM_OFFSET = {"gemma2": 1.0, "gemma3": 1.0}
SPLIT = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
FUSED = ["qkv_proj", "o_proj", "gate_up_proj", "down_proj"]
# 12 ids < 256 (every tiny vocab); longer than mistral's and gemma3's sliding window 4
INPUT_IDS = [1, 17, 42, 99, 128, 200, 255, 3, 64, 77, 150, 31]
SEED = 20261205
A_STD, B_STD, NORM_STD = 0.1, 0.02, 0.2
UNMERGED_TOL, EXPORT_TOL = 2e-5, 1e-5
# GGUF keys llama.cpp reads the window from (convert_hf_to_gguf writes them); its llama
# architecture, Mistral's, has none
SLIDING_WINDOW_KEY = {"gemma2", "gemma3", "phi3"}
# Reading a GGUF back, positions that can match: the tiny Mistral's window (4) is lost in the
# llama architecture, so only the rows it does not cut yet. Gemma 3: see gemma3_as_gguf.
READBACK_ROWS = {"mistral": 4}
# qlora trains on 4- or 8-bit linears: it requantizes a GGUF's F32 linears to Q8_0 at load
# (QuantizedModel.loadFormat), which alone moves the tiny models' logits by 1–2e-2
READBACK_TOL = 5e-2

# --dora: DoRA adapters in both directions.
DORA = False

TRAIN = ["--lora-targets", "all-linear", "--train-norms", "--lora-r", "4", "--lora-alpha", "8", "--lora-dropout", "0",
         "--max-steps", "6", "--warmup-steps", "0", "--lr", "3e-2", "--schedule", "constant", "--batch-size", "2",
         "--max-len", "16", "--ema", "0", "--seed", "7", "--no-plan"]


def qlora(*args):
    r = subprocess.run([str(QLORA), *map(str, args)], capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"qlora {' '.join(map(str, args))} exited {r.returncode}: {r.stderr.strip()[-800:]}")
    return r.stdout


def qlora_logits(model: Path, adapter, work: Path, tag="") -> torch.Tensor:
    """qlora's logits [T, V] of INPUT_IDS on model (a folder or GGUF) with adapter (or none)."""
    ids_file = work / "ids.txt"
    out = work / f"logits-{tag or adapter.parent.name}.bin"
    ids_file.write_text(" ".join(map(str, INPUT_IDS)) + "\n")
    qlora("perplexity", "--model", model, "--text", ids_file, "--logits-out", out,
          *(["--adapter", adapter] if adapter else []))
    a = np.fromfile(out, dtype="<f4")
    return torch.from_numpy(a.reshape(len(INPUT_IDS), -1).copy())


def logits_of(model) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(input_ids=torch.tensor([INPUT_IDS]), use_cache=False).logits[0].float().clone()


def rel(got, want) -> float:
    return ((got - want).abs().max() / want.abs().max()).item()


def load_nf4(nf4: Path):
    from transformers import AutoModelForCausalLM
    m = AutoModelForCausalLM.from_pretrained(nf4, device_map="cpu", dtype=torch.float32, attn_implementation="eager").eval()
    linears = fc.bnb_linears(m)
    assert linears, f"{nf4}: no bitsandbytes 4-bit linears"
    fc.use_fp32_dequant_path(linears)
    return m


def peft_with(nf4: Path, adapter: Path):
    """PeftModel.from_pretrained on a fresh NF4 model, after checking that every tensor of the
    adapter file landed, bit for bit, in the parameter the forward uses."""
    from peft import PeftModel
    from safetensors.torch import load_file
    pm = PeftModel.from_pretrained(load_nf4(nf4), adapter).eval()
    saved = load_file(adapter / "adapter_model.safetensors")
    params = {dora_key(n.replace(".modules_to_save.default.", ".").replace(".default.", ".")): p
              for n, p in pm.named_parameters() if ".lora_" in n or ".modules_to_save." in n}
    assert params.keys() == saved.keys(), f"only in one: {sorted(params.keys() ^ saved.keys())[:8]}"
    for k, t in saved.items():
        assert torch.equal(params[k].detach(), t), k
    norms = sum(k.endswith("norm.weight") for k in saved)
    return pm, len(saved), norms


def dora_key(name: str) -> str:
    """DoRA's magnitude as PEFT saves it: `…lora_magnitude_vector` (in memory `….default.weight`)."""
    return name[: -len(".weight")] if name.endswith(".lora_magnitude_vector.weight") else name


def norms_moved(nf4: Path, adapter: Path) -> float:
    """Largest change of a norm weight the adapter holds against the base's (both in the HF file
    convention): that --train-norms trained them."""
    from safetensors.torch import load_file
    base = load_file(nf4 / "model.safetensors")
    saved = load_file(adapter / "adapter_model.safetensors")
    prefix = "base_model.model."
    diffs = [(v - base[k[len(prefix):]]).abs().max().item() for k, v in saved.items() if k.endswith("norm.weight")]
    assert diffs, "no trained norms in the adapter"
    return max(diffs)


# ---------------------------------------------------------------- the checks
def check_qlora_to_peft(fam, nf4, work):
    run = work / "run"
    qlora("train", "--model", nf4, *TRAIN, "--out", run, "--overwrite")
    adapter = run / "lora_final"
    pm, n, norms = peft_with(nf4, adapter)
    want = logits_of(pm)
    got = qlora_logits(nf4, adapter, work)
    with pm.disable_adapter():
        base = logits_of(pm)
    r = rel(got, want)
    moved = norms_moved(nf4, adapter)
    note = f"{n} tensors ({norms} norms, trained: max |Δw| {moved:.1e}), adapter moves logits {rel(want, base):.1e}"
    return r <= UNMERGED_TOL, r, note, adapter, want


def write_peft_adapter(fam, nf4, work):
    targets = FUSED if fam == "phi3" else SPLIT
    lora = dict(r=4, lora_alpha=8, lora_dropout=0.0, bias="none", target_modules=targets, modules_to_save=["norm"], use_dora=DORA)
    pm = fc.seeded_lora(load_nf4(nf4), lora, SEED + FAMILIES.index(fam), A_STD, B_STD, NORM_STD)
    out = work / "peft" / "adapter"
    pm.save_pretrained(out)
    return out, logits_of(pm)


def check_peft_to_qlora(fam, nf4, work):
    adapter, want0 = write_peft_adapter(fam, nf4, work)
    pm, n, norms = peft_with(nf4, adapter)
    want = logits_of(pm)
    assert torch.equal(want, want0), "the saved PEFT adapter gives other logits"
    got = qlora_logits(nf4, adapter, work)
    r = rel(got, want)
    return r <= UNMERGED_TOL, r, f"{n} tensors ({norms} norms)", adapter, want


def check_hf_export(fam, nf4, adapters, work):
    from transformers import AutoModelForCausalLM
    worst, notes = 0.0, []
    for name, (adapter, want) in adapters.items():
        out = work / f"hf-{name}"
        qlora("export", "--model", nf4, "--adapter", adapter, "-o", out, "--overwrite")
        m = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32, attn_implementation="eager").eval()
        want_class = json.loads((nf4 / "config.json").read_text())["architectures"][0]
        assert type(m).__name__ == want_class, f"{type(m).__name__}, not {want_class}"
        assert getattr(m.config, "quantization_config", None) is None
        assert all(p.dtype == torch.float32 for p in m.parameters())
        r = rel(logits_of(m), want)
        worst = max(worst, r)
        notes.append(type(m).__name__)
    return worst <= EXPORT_TOL, worst, sorted(set(notes))[0], None, None


def hparams_as_gguf(cfg) -> dict:
    """The <arch>.* keys convert_hf_to_gguf.py writes from config.json, which llama.cpp reads."""
    heads = cfg["num_attention_heads"]
    rope = cfg.get("rope_parameters") or {}
    theta = (rope.get("full_attention") or rope).get("rope_theta", cfg.get("rope_theta"))
    keys = {"context_length": cfg["max_position_embeddings"], "embedding_length": cfg["hidden_size"],
            "feed_forward_length": cfg["intermediate_size"], "block_count": cfg["num_hidden_layers"],
            "attention.head_count": heads, "attention.head_count_kv": cfg.get("num_key_value_heads") or heads,
            "attention.layer_norm_rms_epsilon": np.float32(cfg["rms_norm_eps"]), "rope.freq_base": theta,
            "vocab_size": cfg["vocab_size"]}
    head_dim = cfg.get("head_dim") or cfg["hidden_size"] // heads
    if head_dim * heads != cfg["hidden_size"]:
        keys["attention.key_length"] = keys["attention.value_length"] = head_dim
    keys["rope.dimension_count"] = head_dim
    return keys


def gemma3_as_gguf(cfg) -> dict:
    """What a gemma3 GGUF cannot hold and llama.cpp (and qlora reading one) assume instead: scores
    × head_dim^-1/2 and every 6th layer global. The tiny Gemma 3 has query_pre_attn_scalar 24 and
    layer 2 of 2 global, so its reference for reading back is transformers with those values."""
    n = cfg["num_hidden_layers"]
    return dict(query_pre_attn_scalar=cfg["head_dim"],
                layer_types=["full_attention" if (i + 1) % 6 == 0 else "sliding_attention" for i in range(n)])


def gemma2_as_gguf(cfg) -> dict:
    """The same for gemma2: llama.cpp scales a gemma2 GGUF's scores by head_dim^-1/2 (the tiny
    Gemma 2 has query_pre_attn_scalar 24); its layers alternate, as the tiny one's do."""
    return dict(query_pre_attn_scalar=cfg["head_dim"])


def llama_permute(w: np.ndarray, heads: int) -> np.ndarray:
    """convert_hf_to_gguf.py's LlamaModel.permute (rows of each head: halves interleaved)."""
    return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def check_gguf_export(fam, nf4, adapters, work):
    import gguf
    from transformers import AutoModelForCausalLM
    from safetensors.numpy import load_file
    arch = gguf.MODEL_ARCH[GGUF_ARCH[fam]]
    cfg = json.loads((nf4 / "config.json").read_text())
    n_layers, heads = cfg["num_hidden_layers"], cfg["num_attention_heads"]
    kv_heads = cfg.get("num_key_value_heads") or heads
    tmap = gguf.get_tensor_name_map(arch, n_layers)
    allowed = {gguf.TENSOR_NAMES[t].format(bid=b) for t in gguf.MODEL_TENSORS[arch] for b in range(n_layers)}
    worst, checked, readback = 0.0, set(), []
    for name, (adapter, _) in adapters.items():
        hf = work / f"hf-{name}"
        if not hf.exists():
            qlora("export", "--model", nf4, "--adapter", adapter, "-o", hf, "--overwrite")
        out = work / f"{name}.gguf"
        qlora("export", "--model", nf4, "--adapter", adapter, "--format", "gguf", "--type", "f32", "-o", out, "--overwrite")
        reader = gguf.GGUFReader(out)
        got_arch = reader.fields["general.architecture"].contents()
        assert got_arch == gguf.MODEL_ARCH_NAMES[arch], f"general.architecture {got_arch!r}"
        blocks = reader.fields[f"{got_arch}.block_count"].contents()
        assert blocks == n_layers, f"{got_arch}.block_count {blocks}"
        for key, want in hparams_as_gguf(cfg).items():
            got = reader.fields[f"{got_arch}.{key}"].contents() if f"{got_arch}.{key}" in reader.fields else None
            assert got is not None and np.isclose(got, want, rtol=1e-7, atol=0), f"{got_arch}.{key}: {got}, want {want}"
        checked.add("hparams")
        window = cfg.get("sliding_window")
        if got_arch in SLIDING_WINDOW_KEY and window:
            key = f"{got_arch}.attention.sliding_window"
            assert key in reader.fields and reader.fields[key].contents() == window, f"{key} missing or not {window}"
            checked.add("sliding_window")
        tensors = {t.name: t for t in reader.tensors}
        hf_tensors = load_file(hf / "model.safetensors")
        expected = {}
        for hf_name, value in hf_tensors.items():
            g = tmap.get_name(hf_name, try_suffixes=(".weight", ".bias"))
            assert g is not None, f"gguf has no name for {hf_name}"
            expected[g] = (hf_name, value)
        assert tensors.keys() == expected.keys(), f"names only in one: {sorted(tensors.keys() ^ expected.keys())}"
        bad = [n for n in tensors if n.rsplit(".", 1)[0] not in allowed]
        assert not bad, f"not in gguf.MODEL_TENSORS[{arch.name}]: {bad}"
        for g, t in tensors.items():
            hf_name, want = expected[g]
            assert t.tensor_type == gguf.GGMLQuantizationType.F32, (g, t.tensor_type)
            got = np.asarray(t.data).reshape(want.shape)
            role = g.rsplit(".", 2)[-2] if g.count(".") >= 2 else g.split(".")[0]
            if fam in PERMUTES_QK and role in ("attn_q", "attn_k") and want.ndim == 2:
                unpermuted = want
                want = llama_permute(want, heads if role == "attn_q" else kv_heads)
                assert not np.array_equal(got, unpermuted), f"{g}: rows not permuted"
                checked.add("q/k permuted")
            if hf_name.endswith("norm.weight"):
                off = NORM_OFFSET.get(fam, 0.0)
                if off:
                    assert not np.array_equal(got, want), f"{g}: stored as HF's w, not 1 + w"
                    checked.add("norms 1+w")
                want = want + np.float32(off)
            worst = max(worst, float(np.abs(got - want).max()))
            if fam == "phi3" and role in ("attn_qkv", "ffn_up"):
                rows = (heads + 2 * kv_heads) * (cfg["hidden_size"] // heads) if role == "attn_qkv" \
                    else 2 * cfg["intermediate_size"]
                assert got.shape[0] == rows, (g, got.shape)
                checked.add("attn_qkv, ffn_up 2F rows")
        # qlora reads the file back (as llama.cpp's conventions say): PEFT's logits where GGUF can
        # hold the model; see READBACK_ROWS
        got = qlora_logits(out, None, work, tag=f"{name}-gguf")
        if fam in ("gemma2", "gemma3"):
            as_gguf = gemma3_as_gguf(cfg) if fam == "gemma3" else gemma2_as_gguf(cfg)
            want_logits = logits_of(AutoModelForCausalLM.from_pretrained(
                hf, dtype=torch.float32, attn_implementation="eager", **as_gguf))
        else:
            want_logits = adapters[name][1]
        rows = READBACK_ROWS.get(fam, len(INPUT_IDS))
        r = rel(got[:rows], want_logits[:rows])
        readback.append(r)
        assert r <= READBACK_TOL, f"qlora reading {out.name} back: {r:.1e} of max |logit|"
    note = f"{got_arch}, {len(tensors)} tensors" + (", " + ", ".join(sorted(checked)) if checked else "")
    rows = READBACK_ROWS.get(fam, len(INPUT_IDS))
    note += f"; qlora reads it back: {max(readback):.1e} vs PEFT over {rows} positions"
    if fam in ("gemma2", "gemma3"):
        note += f" (transformers on the HF export with llama.cpp's {fam} assumptions: {fam}_as_gguf)"
    return worst == 0.0, worst, note, None, None


def check_merge_requantize(fam, nf4, adapters, work):
    """`qlora merge --requantize nf4` of the trained adapter: a bitsandbytes folder that
    transformers loads (every linear Linear4bit) and computes what qlora computes on it."""
    adapter, want = adapters["qlora"]
    out = work / "merged-nf4"
    qlora("merge", "--model", nf4, "--adapter", adapter, "--requantize", "nf4", "-o", out, "--overwrite")
    m = load_nf4(out)
    ref = logits_of(m)
    r = rel(qlora_logits(out, None, work, tag="merged-nf4"), ref)
    note = f"{len(fc.bnb_linears(m))} Linear4bit; requantizing moved the logits {rel(ref, want):.1e} from PEFT's unmerged"
    return r <= UNMERGED_TOL, r, note, None, None


def check_gguf_source(fam, nf4, adapters, work):
    """A GGUF base: the NF4 model exported as a Q8_0 GGUF (no tokenizer, so train runs random
    ids), trained on with --train-norms; reference: PEFT with that adapter on transformers
    loading qlora's HF export of the GGUF (the same Q8_0 values in fp32, and the hyperparameters
    qlora reads from the GGUF). Checks qlora's logits on GGUF + adapter and the merged export
    of GGUF + adapter; the worse of the two."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM
    src = work / "gguf-source"
    src.mkdir(exist_ok=True)
    g = src / "base.Q8_0.gguf"
    qlora("export", "--model", nf4, "--format", "gguf", "--type", "q8_0", "-o", g, "--overwrite")
    qlora("export", "--model", g, "-o", src / "base-hf", "--overwrite")
    qlora("train", "--model", g, *TRAIN, "--out", src / "run", "--overwrite")
    adapter = src / "run" / "lora_final"
    base = AutoModelForCausalLM.from_pretrained(src / "base-hf", dtype=torch.float32, attn_implementation="eager")
    want = logits_of(PeftModel.from_pretrained(base, adapter))
    unmerged = rel(qlora_logits(g, adapter, src, tag="gguf-source"), want)
    qlora("export", "--model", g, "--adapter", adapter, "-o", src / "merged-hf", "--overwrite")
    merged = rel(logits_of(AutoModelForCausalLM.from_pretrained(src / "merged-hf", dtype=torch.float32,
                                                                attn_implementation="eager")), want)
    note = f"{type(base).__name__}; qlora on GGUF + adapter {unmerged:.1e}, merged export {merged:.1e}"
    return unmerged <= UNMERGED_TOL and merged <= EXPORT_TOL, max(unmerged, merged), note, None, None


def family_row(fam, work: Path):
    nf4 = fc.QLORA_FIXTURES / f"tiny-{fam}-bnb-nf4"
    row, adapters = {}, {}
    for key, fn in (("qlora→PEFT", check_qlora_to_peft), ("PEFT→qlora", check_peft_to_qlora)):
        try:
            ok, r, note, adapter, want = fn(fam, nf4, work)
            row[key] = (ok, r, note)
            adapters["qlora" if key == "qlora→PEFT" else "peft"] = (adapter, want)
        except Exception as e:  # a failing check is a table cell, the others still run
            traceback.print_exc()
            row[key] = (False, None, f"{type(e).__name__}: {e}"[:200])
    for key, fn in (("HF export", check_hf_export), ("GGUF f32", check_gguf_export), ("merge nf4", check_merge_requantize),
                    ("GGUF base", check_gguf_source)):
        if not adapters:
            row[key] = (False, None, "no adapter")
            continue
        try:
            ok, r, note, _, _ = fn(fam, nf4, adapters, work)
            row[key] = (ok, r, note)
        except Exception as e:
            traceback.print_exc()
            row[key] = (False, None, f"{type(e).__name__}: {e}"[:200])
    return row


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("families", nargs="*", default=FAMILIES, help=f"some of {' '.join(FAMILIES)}")
    ap.add_argument("--keep", metavar="DIR", help="keep the adapters, exports and logits here (default: a temporary folder)")
    ap.add_argument("--dora", action="store_true", help="DoRA adapters both ways (qlora train --use-dora, PEFT use_dora=True)")
    args = ap.parse_args()
    global DORA
    DORA = args.dora
    if DORA:
        TRAIN.append("--use-dora")
    unknown = [f for f in args.families if f not in FAMILIES]
    if unknown:
        ap.error(f"unknown families {unknown}")
    if not QLORA.exists():
        sys.exit(f"{QLORA} is missing: run `swift build` first")
    fc.check_versions(PINS)
    fc.deterministic_torch()
    import transformers
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    root = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="qlora-interop-"))
    rows = {}
    try:
        for fam in args.families:
            work = root / fam
            shutil.rmtree(work, ignore_errors=True)
            work.mkdir(parents=True)
            fc.log(f"--- {fam}")
            rows[fam] = family_row(fam, work)
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    keys = ["qlora→PEFT", "PEFT→qlora", "HF export", "GGUF f32", "merge nf4", "GGUF base"]
    print(f"\nmax |Δlogit| / max |logit| (GGUF: max |Δ| of tensor values vs the HF export); tolerances "
          f"{UNMERGED_TOL:g} unmerged and merge nf4, {EXPORT_TOL:g} HF export, 0 GGUF")
    print("| family | " + " | ".join(keys) + " |")
    print("|---" * (len(keys) + 1) + "|")
    failed = False
    for fam, row in rows.items():
        cells = []
        for k in keys:
            ok, r, note = row[k]
            failed |= not ok
            cells.append(f"{'ok' if ok else 'FAIL'} {'' if r is None else f'{r:.1e}'}".strip())
        print(f"| {fam} | " + " | ".join(cells) + " |")
    print()
    for fam, row in rows.items():
        for k in keys:
            print(f"{fam:8s} {k:11s} {row[k][2]}")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
