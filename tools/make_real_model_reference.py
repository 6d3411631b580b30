#!/usr/bin/env python3
"""Reference outputs of Hugging Face transformers for the real non-Llama GGUF models that
tools/fetch_real_models.sh fetches (Qwen2.5-Coder-0.5B-Instruct Q4_K_M, architecture qwen2;
Gemma 3 270M base Q4_K_M, architecture gemma3).

Reads models/<file> (only those files: the Hugging Face Hub is never contacted) and writes
Tests/QLoRATests/Fixtures/real-models-reference.json (and nowhere else). A model whose file is
missing is skipped with a note (fetch it with tools/fetch_real_models.sh). transformers loads
each GGUF by dequantizing every tensor to float32 (K-quants included); the model then runs in
float32 on the CPU with eager attention, one torch thread.

Each model is run three times, and all are recorded:
  "gguf_fp32"         the GGUF's own weights, dequantized exactly (what llama.cpp computes with,
                      up to its 8-bit activations)
  "qlora_load_requant" the same, except each linear weight (q/k/v/o, gate/up/down) whose GGML
                      type qlora's GEMMs do not take is rounded as `QuantizedModel.loadFormat`
                      does at load: Q2_K/Q3_K/Q4_K -> Q4_1, every other type (Q5_0, Q5_1, Q5_K,
                      Q6_K, F16, ...) -> Q8_0, with gguf-py's quantizers (ggml's reference
                      rounding: Q8_0 round-half-away of x/(amax/127), Q4_1 trunc(x·15/(max-min)
                      + 0.5)); Q4_0/Q4_1/Q8_0 weights and the embeddings / LM head are left as
                      they are (qlora keeps them too). This is what `qlora perplexity` and
                      `qlora generate` on the GGUF should match, to float32 summation order.
  "k_quants_q8_0"     the same, but Q2_K/Q3_K/Q4_K linears too become Q8_0 (every linear
                      requantized to Q8_0 unless Q4_0/Q4_1/Q8_0): what keeping the K-quants at
                      8 bits instead of 4 would give.

Keys of each model's entry:
  "file", "size", "sha256", "architecture"
  "config"            what transformers built from the GGUF metadata
  "ggml_types"        linear weights by GGML type (count), and what qlora's load turns them into
  "load_messages"     what transformers logged or warned while converting the GGUF
  "prompt"            the fixed prompt (chat messages rendered with the GGUF's chat template, or
                      plain text with BOS when the model has no template), and its ids
  "<variant>.top10"   ids and float32 logits of the 10 largest logits at the prompt's last
                      position (ties by lower id)
  "<variant>.greedy"  16 greedy tokens after the prompt (ids, text)
  "<variant>.perplexity"  /usr/share/common-licenses/GPL-3 scored as llama.cpp's
                      llama-perplexity (and `qlora perplexity`) does, on the first 2048 tokens
                      at ctx 256: the text tokenized whole (BOS first when the GGUF says
                      add_bos_token), cut into 8 windows of 256 tokens, each run from an empty
                      cache with its first token replaced by BOS when the model adds one, and
                      the targets at positions 129..255 of each scored (NLL in float64)
                      -> ppl, its ± (the standard error of the mean NLL through exp), mean NLL,
                      tokens scored
  "perplexity_input"  the tokens used: count, first ids, sha256 of the ids as little-endian
                      uint32, and "text_prefix_chars": the text cut there (at a line end; GPL-3
                      is ASCII, so `head -c N`) tokenizes to the same first 2048 tokens and to
                      fewer than 2304, so `qlora perplexity --ctx 256` on it scores the same 8
                      windows:  head -c N /usr/share/common-licenses/GPL-3 > /tmp/gpl3-N.txt

Floats are float32 values written as JSON numbers (Python's shortest repr of the float64 equal
to them), except the perplexity figures, which are float64.

Environment (CPU only, Python 3.11), as for tools/make_smollm2_reference.py:
    /work/venv-fixtures: torch==2.15.0 transformers==5.23.0 tokenizers==0.23.3 gguf==0.19.0
                         numpy==2.4.6 safetensors==0.8.0
    tools/fetch_real_models.sh all
    nice /work/venv-fixtures/bin/python tools/make_real_model_reference.py [qwen25] [gemma3]

About 6 minutes for both on 2 shared cores (one torch thread); peak RSS ≈ 5 GB (Qwen2.5's
151936 × 896 embedding and LM head in fp32, twice while converting).
"""

import hashlib
import logging
import math
import os
import sys
import time
import warnings

import numpy as np

import fixture_common as fc

PINNED = {
    "python": "3.11",
    "torch": "2.15.0",
    "transformers": "5.23.0",
    "tokenizers": "0.23.3",
    "gguf": "0.19.0",
    "numpy": "2.4.6",
}

MODEL_DIR = fc.ROOT / "models"
OUT = fc.QLORA_FIXTURES / "real-models-reference.json"
PPL_TEXT = "/usr/share/common-licenses/GPL-3"
PPL_CTX = 256
PPL_TOKENS = 2048
TOP_K = 10
GREEDY_NEW = 16

MODELS = {
    "qwen25": {
        "file": "qwen2.5-coder-0.5b-instruct.Q4_K_M.gguf",
        "chat": [{"role": "user", "content": "Write a Python function that reverses a string"}],
    },
    "gemma3": {
        "file": "gemma-3-270m.Q4_K_M.gguf",
        "text": "The capital of France is",
    },
}

# GGUF linear tensor suffix -> transformers module path under model.layers.N
LINEARS = {
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}


def f32(x):
    return float(np.float32(x))


def qlora_load_type(name, low_bit="Q4_1"):
    """QuantizedModel.loadFormat(for:): (format name, requantized). low_bit is what Q2_K/Q3_K/
    Q4_K become (Q4_1 today; Q8_0 for the "k_quants_q8_0" variant)."""
    if name in ("Q4_0", "Q4_1", "Q8_0"):
        return name, False
    if name in ("Q2_K", "Q3_K", "Q4_K"):
        return low_bit, True
    return "Q8_0", True


def capture_load(fn):
    """Runs fn() and returns (result, sorted unique messages transformers logged or warned)."""
    import transformers

    captured = []

    class Grab(logging.Handler):
        def emit(self, record):
            captured.append(f"{record.levelname} {record.name}: {record.getMessage()}"[:300])

    transformers.logging.set_verbosity_warning()
    transformers.logging.disable_progress_bar()
    handler = Grab()
    logging.getLogger("transformers").addHandler(handler)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            result = fn()
    finally:
        logging.getLogger("transformers").removeHandler(handler)
    captured += [f"{w.category.__name__}: {w.message}"[:300] for w in caught]
    return result, sorted(set(captured))


def llama_cpp_perplexity(model, tokens, ctx, bos):
    """llama-perplexity's default mode over len(tokens) // ctx windows (see the docstring)."""
    import torch

    nll_sum, nll2_sum, count = 0.0, 0.0, 0
    first = ctx // 2
    for k in range(len(tokens) // ctx):
        window = list(tokens[k * ctx:(k + 1) * ctx])
        if bos is not None:
            window[0] = bos
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([window])).logits[0].double()
        lse = torch.logsumexp(logits[first:ctx - 1], dim=-1)
        targets = torch.tensor(window[first + 1:ctx])
        nll = lse - logits[first:ctx - 1].gather(1, targets[:, None])[:, 0]
        nll_sum += float(nll.sum())
        nll2_sum += float((nll * nll).sum())
        count += nll.numel()
    mean = nll_sum / count
    err = math.sqrt(max(nll2_sum / count - mean * mean, 0.0) / (count - 1))
    return {"ppl": math.exp(mean), "ppl_error": math.exp(mean) * err, "mean_nll": mean,
            "scored_tokens": count, "windows": len(tokens) // ctx}


def run_variant(model, tok, prompt_ids, ppl_tokens, bos, eos_ids):
    import torch

    t0 = time.time()
    ids = torch.tensor([prompt_ids])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0, -1].float().numpy()
    order = sorted(range(len(logits)), key=lambda i: (-float(logits[i]), i))[:TOP_K]
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=GREEDY_NEW,
                             min_new_tokens=GREEDY_NEW, do_sample=False, num_beams=1,
                             pad_token_id=tok.pad_token_id if tok.pad_token_id is not None else eos_ids[0],
                             temperature=None, top_p=None, top_k=None)
    new_ids = out[0, ids.shape[1]:].tolist()
    assert new_ids[0] == order[0], (new_ids[0], order[0])
    t1 = time.time()
    ppl = llama_cpp_perplexity(model, ppl_tokens, PPL_CTX, bos)
    t2 = time.time()
    fc.log(f"  ppl {ppl['ppl']:.4f} ± {ppl['ppl_error']:.4f}  greedy {tok.decode(new_ids)!r}  "
           f"({t1 - t0:.0f} s logits+greedy, {t2 - t1:.0f} s perplexity)")
    return {
        "top10": [{"id": i, "logit": f32(logits[i])} for i in order],
        "greedy": {"ids": new_ids, "text": tok.decode(new_ids, skip_special_tokens=False),
                   "min_new_tokens": GREEDY_NEW},
        "perplexity": ppl,
        "seconds": {"logits_and_greedy": round(t1 - t0, 1), "perplexity": round(t2 - t1, 1)},
    }


def requantize_linears(model, reader, low_bit="Q4_1", check=True):
    """Rounds each linear weight as qlora's load does; checks first that the GGUF tensor,
    dequantized by gguf-py, is transformers' weight bit for bit (no row permutation for these
    architectures). Returns {ggml type: {"count", "qlora_load"}}."""
    import torch
    from gguf.quants import dequantize, quantize
    from gguf.constants import GGMLQuantizationType

    params = dict(model.named_parameters())
    types = {}
    for t in reader.tensors:
        parts = t.name.split(".")
        if len(parts) != 4 or parts[0] != "blk" or parts[2] not in LINEARS or parts[3] != "weight":
            continue
        hf = f"model.layers.{parts[1]}.{LINEARS[parts[2]]}.weight"
        p = params[hf]
        raw = dequantize(t.data, t.tensor_type).astype(np.float32)
        assert raw.shape == tuple(p.shape), (t.name, raw.shape, p.shape)
        # rounding starts from the GGUF's weight, not from p, which a previous call may have
        # rounded (kept types are never changed); the check holds on the first call only
        assert not check or np.array_equal(raw.view(np.uint32), p.detach().numpy().view(np.uint32)), \
            f"{t.name} dequantized is not {hf} bit for bit"
        name = t.tensor_type.name
        target, requant = qlora_load_type(name, low_bit)
        e = types.setdefault(name, {"count": 0, "qlora_load": target + (" (requantized)" if requant else " (kept)")})
        e["count"] += 1
        if requant:
            qt = GGMLQuantizationType[target]
            rounded = dequantize(quantize(raw, qt), qt).astype(np.float32)
            with torch.no_grad():
                p.copy_(torch.from_numpy(rounded))
    return types


def reference(key, spec):
    import torch
    from gguf import GGUFReader
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = MODEL_DIR / spec["file"]
    if not path.exists():
        fc.log(f"{key}: {path} missing (tools/fetch_real_models.sh {key}); skipped")
        return {"skipped": f"models/{spec['file']} not present"}
    fc.log(f"{key}: {path.name}")
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 24), b""):
            h.update(chunk)
    reader = GGUFReader(str(path))
    arch = reader.fields["general.architecture"].contents()
    add_bos = bool(reader.fields["tokenizer.ggml.add_bos_token"].contents()) \
        if "tokenizer.ggml.add_bos_token" in reader.fields else False

    def load():
        tok = AutoTokenizer.from_pretrained(str(MODEL_DIR), gguf_file=spec["file"])
        model = AutoModelForCausalLM.from_pretrained(str(MODEL_DIR), gguf_file=spec["file"],
                                                     dtype=torch.float32, attn_implementation="eager")
        return tok, model.eval()

    t0 = time.time()
    try:
        (tok, model), messages = capture_load(load)
    except Exception as e:  # an architecture this transformers cannot load
        fc.log(f"{key}: transformers failed to load it: {e}")
        return {"file": f"models/{spec['file']}", "sha256": h.hexdigest(), "architecture": arch,
                "transformers_error": f"{type(e).__name__}: {e}"[:500]}
    fc.log(f"  loaded in {time.time() - t0:.0f} s")
    cfg = model.config
    bos = tok.bos_token_id if add_bos else None
    eos = cfg.eos_token_id if isinstance(cfg.eos_token_id, list) else [cfg.eos_token_id]

    # ---- prompt
    if "chat" in spec:
        prompt_text = tok.apply_chat_template(spec["chat"], tokenize=False, add_generation_prompt=True)
        prompt_ids = tok(prompt_text, add_special_tokens=False)["input_ids"]
        prompt = {"chat": spec["chat"], "add_generation_prompt": True, "rendered": prompt_text}
    else:
        prompt_text = spec["text"]
        prompt_ids = ([bos] if add_bos else []) + tok(prompt_text, add_special_tokens=False)["input_ids"]
        prompt = {"text": prompt_text, "bos_first": add_bos}
    prompt["ids"] = prompt_ids

    # ---- perplexity tokens: the first PPL_TOKENS of the whole file (BOS first if added)
    text = open(PPL_TEXT, encoding="utf-8").read()
    enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
    body = enc["input_ids"]
    lead = [bos] if add_bos else []
    tokens = (lead + body)[:PPL_TOKENS]
    n_body = PPL_TOKENS - len(lead)
    end = enc["offset_mapping"][n_body - 1][1]
    cut = text.index("\n", end) + 1  # whole lines: the prefix ends at a line end
    prefix_ids = tok(text[:cut], add_special_tokens=False)["input_ids"]
    assert prefix_ids[:n_body] == body[:n_body], "prefix re-tokenizes differently"
    assert len(lead) + len(prefix_ids) < PPL_TOKENS + PPL_CTX, len(prefix_ids)
    ppl_input = {
        "text": PPL_TEXT, "text_sha256": hashlib.sha256(text.encode()).hexdigest(),
        "ctx": PPL_CTX, "tokens": PPL_TOKENS, "bos_first": add_bos,
        "whole_text_tokens": len(lead) + len(body),
        "first_ids": tokens[:16],
        "ids_sha256_u32le": hashlib.sha256(np.asarray(tokens, dtype="<u4").tobytes()).hexdigest(),
        "text_prefix_chars": cut, "text_prefix_tokens": len(lead) + len(prefix_ids),
    }

    entry = {
        "file": f"models/{spec['file']}",
        "size": path.stat().st_size,
        "sha256": h.hexdigest(),
        "architecture": arch,
        "config": {k: getattr(cfg, k, None) for k in (
            "model_type", "vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
            "num_key_value_heads", "head_dim", "intermediate_size", "rms_norm_eps", "rope_parameters",
            "tie_word_embeddings", "sliding_window", "layer_types", "query_pre_attn_scalar",
            "final_logit_softcapping", "attn_logit_softcapping", "hidden_activation", "hidden_act",
            "bos_token_id", "eos_token_id", "pad_token_id")
            if getattr(cfg, k, None) is not None},
        "lm_head_tied_to_embed_tokens": model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr(),
        "load_messages": messages,
        "prompt": prompt,
        "perplexity_input": ppl_input,
    }
    fc.log("  gguf_fp32:")
    entry["gguf_fp32"] = run_variant(model, tok, prompt_ids, tokens, bos, eos)
    entry["ggml_types"] = requantize_linears(model, reader)
    fc.log(f"  qlora_load_requant ({entry['ggml_types']}):")
    entry["qlora_load_requant"] = run_variant(model, tok, prompt_ids, tokens, bos, eos)
    requantize_linears(model, reader, low_bit="Q8_0", check=False)
    fc.log("  k_quants_q8_0:")
    entry["k_quants_q8_0"] = run_variant(model, tok, prompt_ids, tokens, bos, eos)
    del model
    return entry


def main():
    import json

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    fc.deterministic_torch(threads=1)
    versions = fc.check_versions(PINNED)
    keys = sys.argv[1:] or list(MODELS)
    for k in keys:
        if k not in MODELS:
            sys.exit(f"unknown model {k!r}; known: {', '.join(MODELS)}")
    doc = {}
    if OUT.exists():  # keep the entries of models not rerun
        doc = json.loads(OUT.read_text())
    doc["generator"] = {
        "script": "tools/make_real_model_reference.py",
        "versions": versions,
        "dtype": "float32", "attn_implementation": "eager", "torch_threads": 1,
        "cpu": fc.cpu_name(),
    }
    models = doc.setdefault("models", {})
    for k in keys:
        models[k] = reference(k, MODELS[k])
    doc["models"] = {k: models[k] for k in MODELS if k in models}
    OUT.write_text(fc.fixture_json(doc))
    print(f"wrote {OUT.relative_to(fc.ROOT)} ({OUT.stat().st_size} bytes); peak RSS {fc.peak_rss_mib():.0f} MiB")


if __name__ == "__main__":
    main()
