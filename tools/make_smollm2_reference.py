#!/usr/bin/env python3
"""Reference outputs of Hugging Face transformers for the SmolLM2-135M-Instruct Q4_1 GGUF.

Reads models/SmolLM2-135M-Instruct.Q4_1.gguf (only that file: the Hugging Face Hub is never
contacted) and writes Tests/QLoRATests/Fixtures/smollm2-reference.json (and nowhere else).
transformers loads the GGUF by dequantizing every tensor to float32 and undoing llama.cpp's
row permutation of the q/k projections; the model then runs in float32 on the CPU with eager
attention. Keys of the JSON:

  "generator"     this script, the pinned versions, the model file's name, size and sha256
  "q_proj_rows"   rows 0..7 and 60..67 of some projection weights, as lowercase hex of
                  little-endian float32, one string per row (576 floats):
      "transformers"  keyed by transformers' parameter name (model.layers.{0,29}.self_attn.
                      {q,k}_proj.weight, model.layers.0.self_attn.v_proj.weight): the weight
                      [out, in] as transformers holds it after loading (un-permuted)
      "gguf_raw"      keyed by GGUF tensor name (blk.{0,29}.attn_{q,k}.weight): the same rows
                      of the GGUF tensor dequantized by gguf.quants.dequantize, NOT un-permuted.
                      The raw v tensor (blk.0.attn_v.weight) is not stored: llama.cpp does not
                      permute v, and this script asserts that its rows equal transformers' bit
                      for bit (recorded in "checks").
      "permutation"   the mapping: llama.cpp's convert script stores, for a weight of
                      n_head heads of head_dim rows, gguf_row(h*head_dim + 2*i + s) =
                      hf_row(h*head_dim + s*head_dim/2 + i), i < head_dim/2, s in {0,1}
                      (n_head = 9 for q, n_head_kv = 3 for k).
      "checks"        what this script asserted, comparing whole tensors
  "tokens"        for each test string, the ids transformers' GGUF tokenizer gives with
                  add_special_tokens=False; "tokens_extra" the same for a few more strings
                  chosen to probe digit handling; "tokens_digits_split" gives the ids of
                  both lists (in that order) with a
                  pre-tokenizer that first isolates every digit (\\p{N}), as llama.cpp's
                  "smollm" pre-tokenizer and the original SmolLM2 tokenizer.json do, and
                  "tokens_differ" lists the strings on which the two disagree (see below)
  "chat"          apply_chat_template of one user message with add_generation_prompt=True,
                  and the ids of that prompt
  "logits"        the float32 model's logits at the last position of the chat prompt: top 20
                  ids and logits (ties broken by lower id), the mean and std (population, ddof
                  0, computed in float64) of all 49152 logits, the logits at 32 fixed ids
                  (0..15 and 1000..1015), and the greedy continuation of 12 tokens
                  (do_sample=False; generation stops early at <|im_end|>, id 2) with, per step,
                  the chosen logit and its margin over the runner-up (a small margin means a
                  port may legitimately pick another token: step 0 here, "The" over "L", has a
                  margin of only ~0.08)
  "perplexity"    mean next-token negative log-likelihood (nats) and perplexity of the model on
                  a fixed English paragraph, with the ids used (no special tokens, no BOS)

Floats outside the hex rows are written as JSON numbers holding the float32 value exactly
(Python's shortest repr of the float64 that equals it).

Tokenizer caveat. The GGUF says tokenizer.ggml.pre = "smollm". transformers 5.23's GGUF
tokenizer conversion has no entry for "smollm" in GGUF_PRE_TOKENIZER_SPLITS, so it keeps
GPT2Tokenizer's default pre-tokenizer, ByteLevel(use_regex=True) (the GPT-2 regex, which keeps
runs of digits together: " 12345"), whereas llama.cpp (LLAMA_VOCAB_PRE_TYPE_SMOLLM: "\\p{N}"
then the GPT-2 regex) and the original tokenizer.json (Digits(individual_digits=True) then
ByteLevel) split every digit. The vocabulary has no merge involving an ASCII digit, so this
only matters where the GPT-2 regex glues a space to a digit that follows a run of spaces
("x  1": transformers "x","Ġ","Ġ","1"; llama.cpp / tokenizer.json "x","ĠĠ","1"). "tokens" is
what the brief asked for (transformers' ids); "tokens_digits_split" is what a
llama.cpp-compatible tokenizer should produce.

Environment used to generate the committed fixture (CPU only, Python 3.11, 2 threads):

    python3 -m venv /work/venv-fixtures
    /work/venv-fixtures/bin/pip install torch==2.15.0 transformers==5.23.0 tokenizers==0.23.3 \\
        gguf==0.19.0 numpy==2.4.6 safetensors==0.8.0
    /work/venv-fixtures/bin/python tools/make_smollm2_reference.py

(No extra package is needed for GGUF loading: transformers 5.23 reads GGUF itself.)
Runs in well under a minute. Output is deterministic on a given machine; float32 logits from
another CPU or torch build may differ in the last bits, so tests should compare them with a
tolerance.
"""

import hashlib
import json
import logging
import os
import sys
import warnings

import numpy as np
import torch

import tokenizers
import transformers
from gguf import GGUFReader
from gguf.quants import dequantize
from tokenizers import pre_tokenizers
from transformers import AutoModelForCausalLM, AutoTokenizer

import fixture_common as fc

PINNED = {
    "python": "3.11",
    "torch": "2.15.0",
    "transformers": "5.23.0",
    "tokenizers": "0.23.3",
    "gguf": "0.19.0",
    "numpy": "2.4.6",
}

MODEL_DIR = "models"
MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
OUT = "Tests/QLoRATests/Fixtures/smollm2-reference.json"

ROWS = list(range(0, 8)) + list(range(60, 68))
HEAD_DIM = 64
N_HEAD = 9
N_HEAD_KV = 3

# (transformers name, gguf name, heads the llama.cpp converter permuted with, or None)
PROJ = [
    ("model.layers.0.self_attn.q_proj.weight", "blk.0.attn_q.weight", N_HEAD),
    ("model.layers.29.self_attn.q_proj.weight", "blk.29.attn_q.weight", N_HEAD),
    ("model.layers.0.self_attn.k_proj.weight", "blk.0.attn_k.weight", N_HEAD_KV),
    ("model.layers.29.self_attn.k_proj.weight", "blk.29.attn_k.weight", N_HEAD_KV),
    ("model.layers.0.self_attn.v_proj.weight", "blk.0.attn_v.weight", None),
]

TEXTS = [
    "Hello, world!",
    "The capital of France is Paris.",
    "  leading spaces and 12345 digits",
    "naïve café — émigré",
    "<|im_start|>user\nHi<|im_end|>\n",
    "def f(x):\n    return x**2\n",
    "",
    "🙂 emoji",
]

# Not in the brief's list: probes where the pre-tokenizers disagree (a run of spaces before a
# digit: the GPT-2 regex gives "Ġ","Ġ","1", the digit split "ĠĠ","1") and where they agree.
TEXTS_EXTRA = [
    "x  1",
    "1  2   3",
    "in 2024, pi is 3.14",
    "abc123",
]

CHAT = [{"role": "user", "content": "What is the capital of France?"}]
FIXED_IDS = list(range(0, 16)) + list(range(1000, 1016))
TOP_K = 20
GREEDY_NEW = 12

PERPLEXITY_TEXT = (
    "The Eiffel Tower is a wrought-iron lattice tower on the Champ de Mars in Paris, France. "
    "It is named after the engineer Gustave Eiffel, whose company designed and built the tower "
    "from 1887 to 1889. Locally nicknamed the Iron Lady, it was constructed as the centerpiece "
    "of the 1889 World's Fair, and to crown the centennial anniversary of the French Revolution."
)


def f32(x):
    return float(np.float32(x))


def llama_cpp_permute(w, n_head):
    """What llama.cpp's convert_hf_to_gguf.py does to q/k weights (LlamaModel.permute)."""
    return (
        w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
        .swapaxes(1, 2)
        .reshape(w.shape)
    )


def main():
    if not os.path.exists(os.path.join(MODEL_DIR, MODEL_FILE)):
        sys.exit(f"run from the repository root; {MODEL_DIR}/{MODEL_FILE} not found")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    fc.deterministic_torch(threads=2)
    torch.manual_seed(0)
    versions = fc.check_versions(PINNED)

    path = os.path.join(MODEL_DIR, MODEL_FILE)
    with open(path, "rb") as f:
        sha = hashlib.sha256(f.read()).hexdigest()

    # Collect whatever transformers logs or warns while converting the GGUF.
    captured = []

    class Grab(logging.Handler):
        def emit(self, record):
            captured.append(f"{record.levelname} {record.name}: {record.getMessage()}")

    transformers.logging.set_verbosity_warning()
    transformers.logging.disable_progress_bar()
    tlog = logging.getLogger("transformers")
    tlog.addHandler(Grab())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        tok = AutoTokenizer.from_pretrained(MODEL_DIR, gguf_file=MODEL_FILE)
        model = AutoModelForCausalLM.from_pretrained(
            MODEL_DIR, gguf_file=MODEL_FILE, dtype=torch.float32, attn_implementation="eager"
        )
    captured += [f"{w.category.__name__}: {w.message}" for w in caught]
    model.eval()

    tied = model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    assert tied, "lm_head is not tied to embed_tokens"
    assert model.config.tie_word_embeddings

    # ---- projection rows ------------------------------------------------------------------
    reader = GGUFReader(path)
    raw_tensors = {t.name: t for t in reader.tensors}
    assert "output.weight" not in raw_tensors  # tied: the GGUF has no separate output tensor
    params = dict(model.named_parameters())
    hf_rows, raw_rows, checks = {}, {}, {}
    for hf_name, gguf_name, n_head in PROJ:
        w_hf = params[hf_name].detach().cpu().numpy().astype(np.float32)
        t = raw_tensors[gguf_name]
        w_raw = dequantize(t.data, t.tensor_type).astype(np.float32)
        assert w_raw.shape == w_hf.shape, (w_raw.shape, w_hf.shape)
        hf_rows[hf_name] = {"rows": ROWS, "cols": int(w_hf.shape[1]), "shape": list(w_hf.shape),
                            "f32": [fc.f32_hex(w_hf[r]) for r in ROWS]}
        if n_head is None:
            same = bool(np.array_equal(w_raw.view(np.uint32), w_hf.view(np.uint32)))
            assert same, f"{gguf_name} differs from {hf_name}"
            checks[gguf_name] = {"ggml_type": t.tensor_type.name, "transformers_name": hf_name,
                                 "raw_equals_transformers_bitwise": same}
        else:
            permuted = llama_cpp_permute(w_hf, n_head)
            same = bool(np.array_equal(permuted.view(np.uint32), w_raw.view(np.uint32)))
            assert same, f"{gguf_name} != permute({hf_name}, {n_head})"
            assert not np.array_equal(w_raw, w_hf)
            raw_rows[gguf_name] = {"rows": ROWS, "cols": int(w_raw.shape[1]),
                                   "shape": list(w_raw.shape), "ggml_type": t.tensor_type.name,
                                   "f32": [fc.f32_hex(w_raw[r]) for r in ROWS]}
            checks[gguf_name] = {"ggml_type": t.tensor_type.name, "transformers_name": hf_name,
                                 "n_head": n_head,
                                 "raw_equals_permute_of_transformers_bitwise": same,
                                 "raw_equals_transformers": False}

    # The tied embedding: transformers' embed_tokens equals the Q8_0 token_embd dequantized.
    te = raw_tensors["token_embd.weight"]
    emb_raw = dequantize(te.data, te.tensor_type).astype(np.float32)
    emb_hf = model.model.embed_tokens.weight.detach().cpu().numpy()
    emb_same = bool(np.array_equal(emb_raw.view(np.uint32), emb_hf.view(np.uint32)))
    assert emb_same
    checks["token_embd.weight"] = {"ggml_type": te.tensor_type.name,
                                   "transformers_name": "model.embed_tokens.weight (= lm_head.weight, tied)",
                                   "raw_equals_transformers_bitwise": emb_same}

    # ---- tokenizer --------------------------------------------------------------------------
    backend = tok.backend_tokenizer
    def hf_ids(texts):
        out = [{"text": s, "ids": tok(s, add_special_tokens=False)["input_ids"]} for s in texts]
        for e in out:
            assert tok.decode(e["ids"]) == e["text"], (e, tok.decode(e["ids"]))
        return out

    tokens, tokens_extra = hf_ids(TEXTS), hf_ids(TEXTS_EXTRA)

    split_tok = tokenizers.Tokenizer.from_str(backend.to_str())
    split_tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True),
    ])
    tokens_split = [{"text": s, "ids": split_tok.encode(s, add_special_tokens=False).ids}
                    for s in TEXTS + TEXTS_EXTRA]
    differ = [a["text"] for a, b in zip(tokens + tokens_extra, tokens_split) if a["ids"] != b["ids"]]

    # ---- chat + logits ----------------------------------------------------------------------
    prompt = tok.apply_chat_template(CHAT, tokenize=False, add_generation_prompt=True)
    prompt_ids = tok(prompt, add_special_tokens=False)["input_ids"]
    assert prompt_ids == split_tok.encode(prompt, add_special_tokens=False).ids

    ids = torch.tensor([prompt_ids], dtype=torch.long)
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0, -1].float().numpy()
    assert logits.shape == (model.config.vocab_size,)
    order = sorted(range(len(logits)), key=lambda i: (-float(logits[i]), i))[:TOP_K]
    l64 = logits.astype(np.float64)

    with torch.no_grad():
        out = model.generate(
            input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=GREEDY_NEW,
            do_sample=False, num_beams=1, pad_token_id=tok.pad_token_id,
            output_scores=True, return_dict_in_generate=True,
            temperature=None, top_p=None, top_k=None,
        )
    new_ids = out.sequences[0, ids.shape[1]:].tolist()
    steps = []
    for tid, score in zip(new_ids, out.scores):
        s = score[0].float()
        top2 = torch.topk(s, 2)
        assert int(top2.indices[0]) == tid
        steps.append({"id": tid, "logit": f32(top2.values[0]),
                      "runner_up_id": int(top2.indices[1]),
                      "margin": f32(top2.values[0] - top2.values[1])})

    # Cross-check: step 0 of generate() equals the plain forward pass's argmax.
    assert new_ids[0] == order[0]

    # ---- perplexity -------------------------------------------------------------------------
    ppl_ids = tok(PERPLEXITY_TEXT, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        pl = model(input_ids=torch.tensor([ppl_ids])).logits[0].double()
    nll = torch.nn.functional.cross_entropy(pl[:-1], torch.tensor(ppl_ids[1:]), reduction="none")

    result = {
        "generator": {
            "script": "tools/make_smollm2_reference.py",
            "versions": versions,
            "model_file": f"{MODEL_DIR}/{MODEL_FILE}",
            "model_size": os.path.getsize(path),
            "model_sha256": sha,
            "dtype": "float32",
            "attn_implementation": "eager",
            "torch_threads": 2,
            "lm_head_tied_to_embed_tokens": tied,
            "tokenizer_pre_in_gguf": "smollm",
            "transformers_pre_tokenizer": json.loads(backend.to_str())["pre_tokenizer"],
            "transformers_load_messages": sorted(set(captured)),
        },
        "config": {
            "vocab_size": model.config.vocab_size,
            "hidden_size": model.config.hidden_size,
            "num_hidden_layers": model.config.num_hidden_layers,
            "num_attention_heads": model.config.num_attention_heads,
            "num_key_value_heads": model.config.num_key_value_heads,
            "head_dim": model.config.head_dim,
            "intermediate_size": model.config.intermediate_size,
            "rms_norm_eps": model.config.rms_norm_eps,
            "rope_theta": model.config.rope_parameters["rope_theta"],
            "bos_token_id": model.config.bos_token_id,
            "eos_token_id": model.config.eos_token_id,
            "pad_token_id": model.config.pad_token_id,
        },
        "q_proj_rows": {
            "rows": ROWS,
            "encoding": "lowercase hex of little-endian float32, one string per row",
            "permutation": "gguf_row(h*head_dim + 2*i + s) = hf_row(h*head_dim + s*head_dim/2 + i)",
            "head_dim": HEAD_DIM,
            "transformers": hf_rows,
            "gguf_raw": raw_rows,
            "checks": checks,
        },
        "tokens": tokens,
        "tokens_extra": tokens_extra,
        "tokens_digits_split": tokens_split,
        "tokens_differ": differ,
        "chat": {"messages": CHAT, "add_generation_prompt": True, "prompt": prompt, "ids": prompt_ids},
        "logits": {
            "position": len(prompt_ids) - 1,
            "top": [{"id": i, "logit": f32(logits[i])} for i in order],
            "mean": float(l64.mean()),
            "std": float(l64.std()),
            "fixed": [{"id": i, "logit": f32(logits[i])} for i in FIXED_IDS],
            "greedy": {
                "max_new_tokens": GREEDY_NEW,
                "ids": new_ids,
                "text": tok.decode(new_ids, skip_special_tokens=False),
                "stopped_at_eos": new_ids[-1] == model.config.eos_token_id and len(new_ids) < GREEDY_NEW,
                "steps": steps,
            },
        },
        "perplexity": {
            "text": PERPLEXITY_TEXT,
            "ids": ppl_ids,
            "mean_nll": float(nll.mean()),
            "perplexity": float(torch.exp(nll.mean())),
            "predicted_tokens": len(ppl_ids) - 1,
        },
    }

    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    with open(OUT, "w", encoding="utf-8") as f:
        json.dump(result, f, indent=1, ensure_ascii=False)
        f.write("\n")
    print(f"wrote {OUT} ({os.path.getsize(OUT)} bytes)")
    print("prompt:", repr(prompt))
    print("greedy:", repr(result["logits"]["greedy"]["text"]))
    print("tokens differ (transformers vs digit split):", differ)
    print("load messages:", result["generator"]["transformers_load_messages"])


if __name__ == "__main__":
    main()
