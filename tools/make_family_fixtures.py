#!/usr/bin/env python3
"""Generate tiny reference fixtures for the model families beyond Llama: Mistral, Qwen2, Qwen3,
Gemma3 (text), Phi3 and Gemma2, the same kinds of files the tiny-llama ones are.

Writes into Tests/QLoRATests/Fixtures/ (and nowhere else; each file or folder below is deleted
and rewritten on every run), for each FAMILY in mistral, qwen2, qwen3, gemma3, phi3, gemma2:

  tiny-FAMILY/                 the HF folder: config.json, generation_config.json and one float32
                               model.safetensors, random weights
  tiny-FAMILY-bnb-nf4/         tiny-FAMILY/ loaded by transformers with
                               BitsAndBytesConfig(load_in_4bit, nf4, double quant, compute fp32)
                               on the CPU and saved with save_pretrained (as tiny-llama-bnb-nf4)
  tiny-FAMILY-expected.json    input ids [T = 12]; logits at ALL positions [T, vocab] of the
                               fp32 folder and of the nf4 folder; one dequantized linear
                               (mistral: the same logits again with sliding_window 4096;
                               gemma2: again with both soft-cappings None)
  tiny-FAMILY-lora-grads.json  PEFT LoRA on the nf4 folder over every linear of the family:
                               loss, every lora_A/lora_B value and gradient (tiny-llama-lora-
                               grads.json's layout, one case "all_linears")

Nothing is downloaded from the Hugging Face Hub: each model is built from its config class in
code, and no tokenizer is written.

Models (all: hidden 64, intermediate 320, 2 layers, 4 heads, vocab 256, max_position_embeddings
128, float32; intermediate 320 for double quantization with two nested blocks, as
make_model_fixtures.py explains):
  mistral  MistralForCausalLM, 2 KV heads, head_dim 16, rope_theta 10000, rms_norm_eps 1e-5,
           sliding_window 4 (every layer), untied lm_head
  qwen2    Qwen2ForCausalLM, 2 KV heads, head_dim 16, q/k/v_proj with bias (o_proj without),
           rope_theta 1e6, rms_norm_eps 1e-6, tied lm_head, no sliding window
  qwen3    Qwen3ForCausalLM, 2 KV heads, head_dim 32 (≠ 64 / 4), q_norm/k_norm (RMSNorm over
           head_dim, per head, before RoPE), rope_theta 1e6, rms_norm_eps 1e-6, untied lm_head
  gemma3   Gemma3ForCausalLM (model_type gemma3_text), 1 KV head, head_dim 32,
           query_pre_attn_scalar 24 (scores * 24^-0.5, not head_dim^-0.5), layer_types
           [sliding_attention, full_attention], sliding_window 4, RoPE theta 10000 on the sliding
           layer and 1e6 on the full one (config.json: rope_parameters.sliding_attention /
           .full_attention), gelu_pytorch_tanh, rms_norm_eps 1e-6, four norms per layer plus
           q_norm/k_norm, embeddings * sqrt(64) = 8, tied lm_head, no softcapping
  phi3     Phi3ForCausalLM, 2 KV heads, head_dim 16, fused qkv_proj [q; k; v rows] and
           gate_up_proj [gate; up rows], rope_theta 10000 (no scaling), rms_norm_eps 1e-5,
           pad_token_id 0, untied lm_head
  gemma2   Gemma2ForCausalLM (model_type gemma2), 2 KV heads, head_dim 32, query_pre_attn_scalar 24,
           layer_types [sliding_attention, full_attention] (set explicitly; Gemma2Config's default
           alternates the same way, sliding on even layer indices), sliding_window 4, one RoPE theta
           10000 for both, attn_logit_softcapping 50 and final_logit_softcapping 30 (Gemma 2's
           defaults), gelu_pytorch_tanh, rms_norm_eps 1e-6, four norms per layer (no q_norm/k_norm),
           embeddings * sqrt(64) = 8, tied lm_head, eager attention (soft-capping needs it)
Weights: every Linear weight and bias and the embedding ~ N(0, 0.05); every norm weight
~ 1 + N(0, 0.1), except Gemma3's and Gemma2's, stored as offsets (the norm multiplies by 1 + w),
~ N(0, 0.1); drawn from one torch.Generator in sorted parameter-name order (a tied lm_head is not
a parameter of its own), seeded per family (SEED + its index in FAMILIES; gemma2 is last so the
others keep theirs).  Gemma2's q_proj and k_proj ~ N(0, 0.6) and embedding ~ N(0, 0.3) instead,
so that the attention scores (|q.k| * 24^-0.5 up to ~90, median ~17) and the logits (up to ~17)
are large enough for both soft-cappings to matter: each alone is asserted to change the logits by
more than 1e-3 of max |logit| (about 0.04 attention, 0.10 final), and the final cap is asserted
to be exactly 30 * tanh(logits / 30) of the same model with final_logit_softcapping None.

expected.json: logits of the fp32 folder as transformers loads it and of the nf4 folder on
bitsandbytes' default CPU path (dequantize_4bit to float32 + F.linear, the bf16 path off: see
make_model_fixtures.py's caveats); the nf4 logits are asserted equal, bit for bit, to a float32
forward of the same class whose linears hold dequantize_4bit of the saved tensors.  Mistral: the
first 4 rows of the window-4096 logits equal the window-4 ones, later rows differ (asserted);
Gemma3 and Gemma2: the sliding layer's window is asserted to change the logits too.  Gemma2:
logits_fp32_nocap_f32 / logits_bnb_nf4_nocap_f32, the same folders loaded with
attn_logit_softcapping = final_logit_softcapping = None, for diagnostics.

lora-grads.json: LoraConfig(r=4, lora_alpha=8, lora_dropout=0, bias="none", target_modules =
the family's linears: q/k/v/o_proj + gate/up/down_proj, or for phi3 qkv_proj, o_proj,
gate_up_proj, down_proj); lora_A ~ N(0, 0.1), lora_B ~ N(0, 0.02) (non-zero, so dA is non-zero)
by fc.seeded_lora; batch [2, 12] of ids in [3, 256) with labels -100 on the first 4 / 6 positions;
loss = model(input_ids, labels).loss (shifted inside), then backward.  The loss equals, and the
gradients match within 1e-6 relative, the same PEFT setup on the dequantized float32 copy.

Environment used for the committed fixtures (CPU only, x86_64, Python 3.11):

    python3 -m venv /work/venv-fixtures
    /work/venv-fixtures/bin/pip install torch==2.15.0 bitsandbytes==0.50.2 gguf==0.19.0 \\
        numpy==2.4.6 transformers==5.23.0 safetensors==0.8.0 accelerate==1.15.0 peft==0.21.2
    /work/venv-fixtures/bin/python tools/make_family_fixtures.py [FAMILY ...]   # from the repo root

Determinism: one torch thread, deterministic algorithms, explicit generators, eager attention,
nf4 folders saved before any forward; running the script twice gives byte-identical files
(checked).
"""

import shutil
import sys
from pathlib import Path

import torch
import transformers

import bitsandbytes.functional as bnbf
from safetensors.torch import load_file
from transformers import (AutoModelForCausalLM, BitsAndBytesConfig, Gemma2Config, Gemma2ForCausalLM,
                          Gemma3ForCausalLM, Gemma3TextConfig, MistralConfig, MistralForCausalLM, Phi3Config,
                          Phi3ForCausalLM, Qwen2Config, Qwen2ForCausalLM, Qwen3Config, Qwen3ForCausalLM)

import fixture_common as fc

PINS = {
    "torch": "2.15.0",
    "bitsandbytes": "0.50.2",
    "transformers": "5.23.0",
    "safetensors": "0.8.0",
    "peft": "0.21.2",
    "numpy": "2.4.6",
}

FIX = fc.QLORA_FIXTURES

SEED = 20240610  # family i uses SEED + i for its weights, SEED + 100 + i for its LoRA batch and adapters
INPUT_IDS = [1, 17, 42, 99, 128, 200, 255, 3, 64, 77, 150, 31]
WIDE_WINDOW = 4096

BATCH, SEQ = 2, 12
MASKED_PREFIX = [4, 6]  # labels[b, :MASKED_PREFIX[b]] = -100
A_STD, B_STD = 0.1, 0.02
SPLIT_LINEARS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
FUSED_LINEARS = ["qkv_proj", "o_proj", "gate_up_proj", "down_proj"]
STD_QK, STD_EMBED = 0.6, 0.3  # gemma2's q/k_proj and embedding (every other weight: 0.05)

COMMON = dict(
    hidden_size=64,
    intermediate_size=320,
    num_hidden_layers=2,
    num_attention_heads=4,
    vocab_size=256,
    max_position_embeddings=128,
    initializer_range=0.05,
    attn_implementation="eager",
)

FAMILIES = {
    "mistral": dict(
        config=MistralConfig, model=MistralForCausalLM, targets=SPLIT_LINEARS, offset_norms=False,
        kwargs=dict(num_key_value_heads=2, head_dim=16, rms_norm_eps=1e-5,
                    rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
                    sliding_window=4, tie_word_embeddings=False, bos_token_id=1, eos_token_id=2),
    ),
    "qwen2": dict(
        config=Qwen2Config, model=Qwen2ForCausalLM, targets=SPLIT_LINEARS, offset_norms=False,
        kwargs=dict(num_key_value_heads=2, rms_norm_eps=1e-6,
                    rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
                    use_sliding_window=False, tie_word_embeddings=True, bos_token_id=1, eos_token_id=2),
    ),
    "qwen3": dict(
        config=Qwen3Config, model=Qwen3ForCausalLM, targets=SPLIT_LINEARS, offset_norms=False,
        kwargs=dict(num_key_value_heads=2, head_dim=32, rms_norm_eps=1e-6, attention_bias=False,
                    rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
                    use_sliding_window=False, tie_word_embeddings=False, bos_token_id=1, eos_token_id=2),
    ),
    "gemma3": dict(
        config=Gemma3TextConfig, model=Gemma3ForCausalLM, targets=SPLIT_LINEARS, offset_norms=True,
        kwargs=dict(num_key_value_heads=1, head_dim=32, query_pre_attn_scalar=24, rms_norm_eps=1e-6,
                    hidden_activation="gelu_pytorch_tanh", sliding_window=4,
                    layer_types=["sliding_attention", "full_attention"], sliding_window_pattern=2,
                    rope_parameters={
                        "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
                        "full_attention": {"rope_type": "default", "rope_theta": 1000000.0},
                    },
                    final_logit_softcapping=None, attn_logit_softcapping=None, tie_word_embeddings=True,
                    pad_token_id=0, eos_token_id=1, bos_token_id=2),
    ),
    "phi3": dict(
        config=Phi3Config, model=Phi3ForCausalLM, targets=FUSED_LINEARS, offset_norms=False,
        kwargs=dict(num_key_value_heads=2, rms_norm_eps=1e-5, original_max_position_embeddings=128,
                    rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
                    sliding_window=None, tie_word_embeddings=False, bos_token_id=1, eos_token_id=2,
                    pad_token_id=0),
    ),
    # last, so that the families above keep their seeds (SEED + index) and their bytes
    "gemma2": dict(
        config=Gemma2Config, model=Gemma2ForCausalLM, targets=SPLIT_LINEARS, offset_norms=True,
        kwargs=dict(num_key_value_heads=2, head_dim=32, query_pre_attn_scalar=24, rms_norm_eps=1e-6,
                    hidden_activation="gelu_pytorch_tanh", sliding_window=4,
                    layer_types=["sliding_attention", "full_attention"],
                    rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
                    attn_logit_softcapping=50.0, final_logit_softcapping=30.0, attention_bias=False,
                    tie_word_embeddings=True, pad_token_id=0, eos_token_id=1, bos_token_id=2),
        # large enough that both soft-cappings change the logits (asserted)
        std={"q_proj.weight": STD_QK, "k_proj.weight": STD_QK, "embed_tokens.weight": STD_EMBED},
    ),
}

NF4 = BitsAndBytesConfig(
    load_in_4bit=True,
    bnb_4bit_quant_type="nf4",
    bnb_4bit_use_double_quant=True,
    bnb_4bit_compute_dtype=torch.float32,
)


# ---------------------------------------------------------------- models
def make_config(fam: str):
    spec = FAMILIES[fam]
    return spec["config"](**COMMON, **spec["kwargs"])


def make_model(fam: str):
    spec = FAMILIES[fam]
    seed = SEED + list(FAMILIES).index(fam)
    torch.manual_seed(seed)
    model = spec["model"](make_config(fam)).to(torch.float32).eval()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(model.named_parameters()):
            noise = torch.randn(p.shape, generator=gen, dtype=torch.float32)
            std = [v for k, v in spec.get("std", {}).items() if name.endswith(k)]
            if name.endswith("norm.weight"):
                p.copy_(0.1 * noise if spec["offset_norms"] else 1.0 + 0.1 * noise)
            elif std:
                p.copy_(std[0] * noise)
            else:
                p.copy_(0.05 * noise)
    return model


def load(path, **kwargs):
    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation="eager",
                                                **kwargs).eval()


def load_nf4(path, **kwargs):
    """A saved nf4 folder on the CPU, bitsandbytes' float32 dequantize path."""
    q = load(path, device_map="cpu", **kwargs)
    linears = fc.bnb_linears(q)
    fc.use_fp32_dequant_path(linears)
    return q, linears


def n_linears(model) -> int:
    """Linears transformers quantizes: all but lm_head."""
    return sum(isinstance(m, torch.nn.Linear) and n != "lm_head" for n, m in model.named_modules())


def reset(name: str) -> Path:
    p = FIX / name
    if p.is_dir():
        shutil.rmtree(p)
    elif p.exists():
        p.unlink()
    return p


def write_json(name: str, doc) -> Path:
    p = reset(name)
    p.write_text(fc.fixture_json(doc))
    fc.make_readable([p])
    return p


def all_logits(model, ids=INPUT_IDS) -> torch.Tensor:
    with torch.no_grad():
        out = model(input_ids=torch.tensor([ids], dtype=torch.long), use_cache=False)
    return out.logits[0].to(torch.float32).clone()


# ---------------------------------------------------------------- folders + expected.json
def make_folders_and_logits(fam: str) -> list:
    spec = FAMILIES[fam]
    base = f"tiny-{fam}"
    model = make_model(fam)
    d = reset(base)
    model.save_pretrained(d, safe_serialization=True)
    fc.make_readable(d.iterdir())

    fp32 = load(d)
    assert type(fp32) is spec["model"], type(fp32)
    sd = fp32.state_dict()
    for k, v in model.state_dict().items():
        assert torch.equal(v, sd[k]), k
    logits_fp32 = all_logits(fp32)
    vocab = fp32.config.vocab_size
    assert list(logits_fp32.shape) == [len(INPUT_IDS), vocab]

    # nf4: quantized by transformers + bitsandbytes, saved before any forward
    torch.manual_seed(SEED)
    q = load(d, quantization_config=NF4, device_map="cpu")
    assert len(fc.bnb_linears(q)) == n_linears(model), fc.bnb_linears(q)
    dq = reset(base + "-bnb-nf4")
    q.save_pretrained(dq, safe_serialization=True)
    fc.make_readable(dq.iterdir())
    del q

    q, linears = load_nf4(dq)
    saved = load_file(dq / "model.safetensors")
    for mod_name, m in linears:
        assert torch.equal(m.weight.data.view(-1), saved[mod_name + ".weight"].view(-1)), mod_name
    ref = fc.dequantized_fp32_copy(q, linears).eval()
    logits_nf4 = all_logits(q)
    logits_ref = all_logits(ref)
    assert torch.equal(logits_nf4, logits_ref), (logits_nf4 - logits_ref).abs().max()
    fc.assert_not_repacked(linears)

    first_name = "model.layers.0.self_attn." + spec["targets"][0]  # q_proj, or phi3's qkv_proj
    first = dict(linears)[first_name]
    w = bnbf.dequantize_4bit(first.weight.data, first.weight.quant_state).to(torch.float32)

    doc = {
        "generator": "tools/make_family_fixtures.py",
        "versions": fc.module_versions("torch", "bitsandbytes", "transformers", "safetensors"),
        "family": fam,
        "model_type": fp32.config.model_type,
        "architecture": type(fp32).__name__,
        "folders": {"fp32": base, "bnb_nf4": base + "-bnb-nf4"},
        "encoding": fc.F32_HEX_ENCODING,
        "input_ids": INPUT_IDS,
        "logits_shape": [len(INPUT_IDS), vocab],
        "logits_note": (
            "logits at every position [T, vocab], eager attention, float32 arithmetic, no "
            "attention mask, positions 0..T-1. fp32: the fp32 folder as transformers loads it. "
            "bnb_nf4: the nf4 folder on bitsandbytes' default CPU path (dequantize_4bit to "
            "float32 + linear), identical bit for bit to a float32 forward of the same class "
            "with the quantized linears replaced by bitsandbytes.functional.dequantize_4bit."
        ),
        "logits_fp32_f32": fc.f32_hex(logits_fp32),
        "logits_bnb_nf4_f32": fc.f32_hex(logits_nf4),
    }
    notes = [f"{fam}: max |nf4 - fp32| = {(logits_nf4 - logits_fp32).abs().max().item():.6f}"]

    window = getattr(fp32.config, "sliding_window", None)
    if window is not None:
        wide_fp32 = all_logits(load(d, sliding_window=WIDE_WINDOW))
        # positions < window see the same keys either way; later ones must see more
        assert torch.equal(wide_fp32[:window], logits_fp32[:window]), fam
        assert (wide_fp32[window:] - logits_fp32[window:]).abs().amax(dim=1).min().item() > 1e-4, fam
        notes.append(f"{fam}: window {window} vs {WIDE_WINDOW}: max |diff| = "
                     f"{(wide_fp32 - logits_fp32).abs().max().item():.6f}")
        if fam == "mistral":
            wide_nf4 = all_logits(load_nf4(dq, sliding_window=WIDE_WINDOW)[0])
            assert torch.equal(wide_nf4[:window], logits_nf4[:window])
            doc["sliding_window"] = window
            doc["wide_window"] = WIDE_WINDOW
            doc["window_note"] = (
                f"logits_*_window{WIDE_WINDOW}_f32: the same folders loaded with sliding_window="
                f"{WIDE_WINDOW} (i.e. plain causal for T = {len(INPUT_IDS)}). With window W, query t "
                "attends to keys s with t - W < s <= t (W keys, itself included): rows t < W are "
                "equal in both, later rows differ."
            )
            doc[f"logits_fp32_window{WIDE_WINDOW}_f32"] = fc.f32_hex(wide_fp32)
            doc[f"logits_bnb_nf4_window{WIDE_WINDOW}_f32"] = fc.f32_hex(wide_nf4)

    if getattr(fp32.config, "attn_logit_softcapping", None) is not None:
        notes += softcapping(fam, d, dq, fp32.config, logits_fp32, logits_nf4, doc)

    doc["dequantized"] = {"tensor": first_name + ".weight", "shape": list(w.shape), "bnb_nf4_f32": fc.f32_hex(w)}
    write_json(base + "-expected.json", doc)
    return notes


def rel_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| / max |b|"""
    return ((a - b).abs().max() / b.abs().max()).item()


def softcapping(fam: str, d: Path, dq: Path, cfg, logits_fp32, logits_nf4, doc: dict) -> list:
    """Gemma2: the logits without soft-capping (diagnostics), and asserts that each soft-capping,
    attention and final, changes the logits by more than 1e-3 relative."""
    attn_cap, final_cap = cfg.attn_logit_softcapping, cfg.final_logit_softcapping
    assert attn_cap is not None and final_cap is not None, fam

    def loaded(path, nf4=False, **caps):
        m = load_nf4(path, **caps)[0] if nf4 else load(path, **caps)
        for k, v in caps.items():
            assert getattr(m.config, k) == v, (k, getattr(m.config, k))
        return all_logits(m)

    nocap = dict(attn_logit_softcapping=None, final_logit_softcapping=None)
    nocap_fp32 = loaded(d, **nocap)
    nocap_nf4 = loaded(dq, nf4=True, **nocap)
    no_attn_cap = loaded(d, attn_logit_softcapping=None)
    no_final_cap = loaded(d, final_logit_softcapping=None)
    # the final cap is final_cap * tanh(logits / final_cap) of the uncapped lm_head output
    assert torch.equal(logits_fp32, torch.tanh(no_final_cap / final_cap) * final_cap), fam
    effects = {
        "both (fp32)": rel_diff(logits_fp32, nocap_fp32),
        "both (nf4)": rel_diff(logits_nf4, nocap_nf4),
        "attention only (fp32)": rel_diff(logits_fp32, no_attn_cap),
        "final only (fp32)": rel_diff(logits_fp32, no_final_cap),
    }
    for what, e in effects.items():
        assert e > 1e-3, (fam, what, e)

    doc["softcapping"] = {"attn_logit_softcapping": attn_cap, "final_logit_softcapping": final_cap}
    doc["softcapping_note"] = (
        "logits_*_nocap_f32: the same folders loaded with attn_logit_softcapping = "
        "final_logit_softcapping = None (diagnostics). With soft-capping, eager attention computes "
        "scores = (q . k) * query_pre_attn_scalar^-0.5, then scores = cap * tanh(scores / cap), "
        "then adds the mask, then softmax; the logits are final_cap * tanh(lm_head(h) / final_cap). "
        "max |capped - uncapped| / max |uncapped| over the logits: "
        + ", ".join(f"{k} {v:.4f}" for k, v in effects.items()) + "."
    )
    doc["logits_fp32_nocap_f32"] = fc.f32_hex(nocap_fp32)
    doc["logits_bnb_nf4_nocap_f32"] = fc.f32_hex(nocap_nf4)
    return [f"{fam}: soft-capping effect on the logits, max |capped - uncapped| / max |uncapped|: "
            + ", ".join(f"{k} {v:.4f}" for k, v in effects.items())]


# ---------------------------------------------------------------- lora-grads.json
def make_batch(seed: int):
    return fc.labelled_batch(seed, BATCH, SEQ, MASKED_PREFIX)


def loss_and_grads(model, lora, seed, ids, labels):
    pm = fc.seeded_lora(model, lora, seed, A_STD, B_STD)
    pm.train()
    out, params = fc.peft_loss_and_grads(pm, ids, labels)
    return pm, out, params


def lora_doc(fam: str):
    spec = FAMILIES[fam]
    seed = SEED + 100 + list(FAMILIES).index(fam)
    ids, labels = make_batch(seed)
    lora = dict(r=4, lora_alpha=8, lora_dropout=0.0, bias="none", target_modules=spec["targets"],
                use_rslora=False, layers_to_transform=None)

    nf4, linears = load_nf4(FIX / f"tiny-{fam}-bnb-nf4")
    ref = fc.dequantized_fp32_copy(nf4, linears)
    pm, out, params = loss_and_grads(nf4, lora, seed, ids, labels)
    fc.assert_not_repacked(linears)
    _, out_ref, params_ref = loss_and_grads(ref, lora, seed, ids, labels)
    assert out.loss.item() == out_ref.loss.item(), (out.loss.item(), out_ref.loss.item())
    n_layers = nf4.config.num_hidden_layers
    assert len(params) == 2 * len(spec["targets"]) * n_layers, sorted(params)
    for k in params:
        assert ".lora_A." in k or ".lora_B." in k, k
    worst = fc.assert_grads_match(params, params_ref)

    last = out.logits[:, -1, :]
    case = {
        "name": "all_linears",
        "lora_config": fc.lora_config_record(pm),
        "scaling": fc.lora_scaling(pm),
        "trainable_norms": False,
        "loss": float(out.loss.detach().to(torch.float32).item()),
        "loss_f32": fc.f32_hex(out.loss.reshape(1)),
        "params": fc.lora_params_record(params),
        "logits_last": {"shape": list(last.shape), "f32": fc.f32_hex(last)},
    }
    doc = {
        "generator": "tools/make_family_fixtures.py",
        "versions": fc.module_versions("torch", "bitsandbytes", "transformers", "peft"),
        "model": f"tiny-{fam}-bnb-nf4",
        "encoding": fc.F32_HEX_ENCODING,
        "note": fc.LORA_GRADS_NOTE,
        "input_ids": ids.tolist(),
        "labels": labels.tolist(),
        "n_counted_tokens": int((labels[:, 1:] != -100).sum().item()),
        "cases": [case],
    }
    summary = (f"{fam}: LoRA loss {case['loss']:.9f}, {len(params)} LoRA tensors, "
               f"max rel |grad - dequantized fp32 grad| {worst:.2e}")
    return doc, summary


def main():
    fams = sys.argv[1:] or list(FAMILIES)
    unknown = [f for f in fams if f not in FAMILIES]
    if unknown:
        sys.exit(f"unknown family {unknown}; families: {' '.join(FAMILIES)}")
    fc.check_versions(PINS)
    fc.deterministic_torch()
    transformers.utils.logging.disable_progress_bar()
    FIX.mkdir(parents=True, exist_ok=True)

    paths, notes = [], []
    for fam in fams:
        fc.log(f"{fam} ...")
        notes += make_folders_and_logits(fam)
        doc, summary = lora_doc(fam)
        again, _ = lora_doc(fam)
        assert fc.fixture_json(doc) == fc.fixture_json(again), f"{fam}: two LoRA runs differ"
        write_json(f"tiny-{fam}-lora-grads.json", doc)
        notes.append(summary)
        for n in (f"tiny-{fam}", f"tiny-{fam}-bnb-nf4"):
            paths += sorted((FIX / n).iterdir())
        paths += [FIX / f"tiny-{fam}-expected.json", FIX / f"tiny-{fam}-lora-grads.json"]
    for n in notes:
        print(n)
    print(f"{fc.list_files(paths):9d}  total")


if __name__ == "__main__":
    main()
