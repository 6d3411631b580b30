#!/usr/bin/env python3
"""Generate tiny Hugging Face / bitsandbytes model folders as reference fixtures for qlora.

Writes into Tests/QLoRATests/Fixtures/ (and nowhere else; each folder below is deleted and
rewritten on every run):

  tiny-llama/               LlamaForCausalLM, random weights, float32, one model.safetensors
  tiny-llama-bf16/          the same weights saved in bfloat16
  tiny-llama-sharded/       the same weights in float32, 3 shards + model.safetensors.index.json
  tiny-llama-bnb-nf4/       tiny-llama/ loaded by transformers with
                            BitsAndBytesConfig(load_in_4bit, nf4, double quant, compute fp32)
                            on the CPU and saved with save_pretrained: the "bnb-4bit" layout
  tiny-llama-bnb-fp4/       the same with fp4 and no double quantization
  tiny-llama-expected.json  input ids, last-position logits (fp32 model, bf16 weights,
                            nf4 model, fp4 model) and one dequantized linear per bnb folder,
                            all float32 arrays as lowercase hex of little-endian bytes

Everything is made by transformers + bitsandbytes themselves (transformers really quantizes on
the CPU with bitsandbytes >= 0.46; nothing here re-implements the format).  Nothing is
downloaded from the Hugging Face Hub: the model is built from a LlamaConfig in code, and no
tokenizer is written.

Model: hidden 64, intermediate 320, 2 layers, 4 heads, 2 KV heads, head_dim 16, vocab 256,
rms_norm_eps 1e-5, rope_theta 10000, untied lm_head, max_position_embeddings 128.
intermediate 320 (= 5 * 64) rather than 128 so that gate/up/down_proj have 20480 elements =
320 blocks of 64, i.e. MORE than 256 absmax values: double quantization then has two nested
blocks (256 + 64), which exercises nested_absmax of length 2 and a partial last nested block.
Weights: every Linear and the embedding ~ N(0, 0.05); every RMSNorm weight ~ 1 + N(0, 0.1)
(so that norms are not all ones); drawn from one torch.Generator in sorted parameter-name
order, so the values do not depend on transformers' init order.

Environment used for the committed fixtures (CPU only, x86_64 with AVX-512 incl. BF16,
Python 3.11):

    python3 -m venv /work/venv-fixtures
    /work/venv-fixtures/bin/pip install torch==2.15.0 bitsandbytes==0.50.2 gguf==0.19.0 \
        numpy==2.4.6 transformers==5.23.0 safetensors==0.8.0 accelerate==1.15.0
    /work/venv-fixtures/bin/python tools/make_model_fixtures.py      # from the repo root

Determinism: torch.manual_seed + an explicit generator, one torch thread, eager attention,
deterministic algorithms; running the script twice gives byte-identical files (checked).

Caveats found while making these (bitsandbytes 0.50.2 on a CPU with AVX512-BF16):
  * Linear4bit.forward on such a CPU first repacks the weight into a CPU-only layout
    (_convert_weight_packed_for_cpu: absmax dequantized, rounded to bfloat16, double quant
    dropped) and then runs a bf16 gemv (activations cast to bf16).  Logits then depend on the
    machine, and a save_pretrained AFTER a forward re-double-quantizes from the bf16-rounded
    absmax, i.e. writes a different file.  This script therefore saves the bnb folders before
    any forward and turns that path off (module.support_avx512bf16_for_cpu = False) for the
    logits, which makes bitsandbytes use its default path: dequantize_4bit in float32 +
    torch.nn.functional.linear.  The script asserts that those logits equal (bit for bit) an
    ordinary float32 forward of the fp32 model whose 14 quantized linears are replaced by
    bitsandbytes.functional.dequantize_4bit of the saved tensors.
"""

import shutil
from pathlib import Path

import torch

import bitsandbytes.functional as bnbf
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, BitsAndBytesConfig, LlamaConfig, LlamaForCausalLM

import fixture_common as fc

PINS = {
    "torch": "2.15.0",
    "bitsandbytes": "0.50.2",
    "transformers": "5.23.0",
    "safetensors": "0.8.0",
    "numpy": "2.4.6",
}

FIX = fc.QLORA_FIXTURES

SEED = 20240601
INPUT_IDS = [1, 17, 42, 99, 128, 200, 255, 3, 64, 77, 150, 31]
DEQUANT_TENSOR = "model.layers.0.self_attn.q_proj.weight"
SHARD_SIZE = "300KB"  # 722 KB of float32 weights -> 3 shards

BNB = {
    "tiny-llama-bnb-nf4": dict(quant_type="nf4", double_quant=True),
    "tiny-llama-bnb-fp4": dict(quant_type="fp4", double_quant=False),
}


def make_config() -> LlamaConfig:
    return LlamaConfig(
        hidden_size=64,
        intermediate_size=320,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        vocab_size=256,
        rms_norm_eps=1e-5,
        rope_theta=10000.0,
        tie_word_embeddings=False,
        max_position_embeddings=128,
        initializer_range=0.05,
        bos_token_id=1,
        eos_token_id=2,
        attn_implementation="eager",
    )


def make_model() -> LlamaForCausalLM:
    torch.manual_seed(SEED)
    model = LlamaForCausalLM(make_config()).to(torch.float32).eval()
    gen = torch.Generator().manual_seed(SEED)
    with torch.no_grad():
        for name, p in sorted(model.named_parameters()):
            noise = torch.randn(p.shape, generator=gen, dtype=torch.float32)
            if name.endswith("norm.weight"):
                p.copy_(1.0 + 0.1 * noise)
            else:
                p.copy_(0.05 * noise)
    return model


def reset_dir(name: str) -> Path:
    d = FIX / name
    if d.exists():
        shutil.rmtree(d)
    return d


def last_logits(model) -> torch.Tensor:
    ids = torch.tensor([INPUT_IDS], dtype=torch.long)
    with torch.no_grad():
        out = model(input_ids=ids, use_cache=False)
    return out.logits[0, -1].to(torch.float32).clone()


def main():
    fc.check_versions(PINS)
    fc.deterministic_torch()
    FIX.mkdir(parents=True, exist_ok=True)

    # 1. float32, bfloat16, sharded float32
    model = make_model()
    d = reset_dir("tiny-llama")
    model.save_pretrained(d, safe_serialization=True)
    fc.make_readable(d.iterdir())

    d = reset_dir("tiny-llama-sharded")
    model.save_pretrained(d, safe_serialization=True, max_shard_size=SHARD_SIZE)
    fc.make_readable(d.iterdir())
    shards = sorted(p.name for p in d.glob("model-*.safetensors"))
    assert 2 <= len(shards) <= 3 and (d / "model.safetensors.index.json").exists(), shards

    d = reset_dir("tiny-llama-bf16")
    make_model().to(torch.bfloat16).save_pretrained(d, safe_serialization=True)
    fc.make_readable(d.iterdir())

    # reference logits: the fp32 folder as transformers loads it
    fp32 = AutoModelForCausalLM.from_pretrained(
        FIX / "tiny-llama", dtype=torch.float32, attn_implementation="eager"
    ).eval()
    for k, v in model.state_dict().items():
        assert torch.equal(v, fp32.state_dict()[k]), k
    logits_fp32 = last_logits(fp32)
    sharded = AutoModelForCausalLM.from_pretrained(
        FIX / "tiny-llama-sharded", dtype=torch.float32, attn_implementation="eager"
    ).eval()
    assert torch.equal(last_logits(sharded), logits_fp32)
    # bf16 weights, upcast to float32, float32 arithmetic (what a reader that widens does)
    bf16 = AutoModelForCausalLM.from_pretrained(
        FIX / "tiny-llama-bf16", dtype=torch.bfloat16, attn_implementation="eager"
    ).eval()
    logits_bf16 = last_logits(bf16.to(torch.float32))

    expected = {
        "generator": "tools/make_model_fixtures.py",
        "versions": fc.module_versions("torch", "bitsandbytes", "transformers", "safetensors"),
        "encoding": "float32 arrays are lowercase hex of little-endian bytes",
        "input_ids": INPUT_IDS,
        "logits_note": (
            "logits of the last position, eager attention, float32 arithmetic. "
            "fp32: tiny-llama/. bf16: tiny-llama-bf16/ widened to float32. "
            "bnb_*: the saved bnb folder loaded by transformers, forward on bitsandbytes' "
            "default CPU path (dequantize_4bit to float32 + linear), identical bit for bit "
            "to a float32 forward of tiny-llama with the quantized linears replaced by "
            "bitsandbytes.functional.dequantize_4bit."
        ),
        "logits_fp32_f32": fc.f32_hex(logits_fp32),
        "logits_bf16_f32": fc.f32_hex(logits_bf16),
    }

    # 2. bitsandbytes folders
    dequantized = {"tensor": DEQUANT_TENSOR, "shape": list(model.state_dict()[DEQUANT_TENSOR].shape)}
    for name, spec in BNB.items():
        qcfg = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type=spec["quant_type"],
            bnb_4bit_use_double_quant=spec["double_quant"],
            bnb_4bit_compute_dtype=torch.float32,
        )
        torch.manual_seed(SEED)
        q = AutoModelForCausalLM.from_pretrained(
            FIX / "tiny-llama",
            quantization_config=qcfg,
            device_map="cpu",
            dtype=torch.float32,
            attn_implementation="eager",
        ).eval()
        assert len(fc.bnb_linears(q)) == 14, fc.bnb_linears(q)
        d = reset_dir(name)
        q.save_pretrained(d, safe_serialization=True)  # before any forward (see caveats)
        fc.make_readable(d.iterdir())
        del q

        # reload the saved folder, as a user of a "bnb-4bit" checkpoint would
        q = AutoModelForCausalLM.from_pretrained(
            d, device_map="cpu", dtype=torch.float32, attn_implementation="eager"
        ).eval()
        fc.use_fp32_dequant_path(fc.bnb_linears(q))
        saved = load_file(d / "model.safetensors")

        # reference: fp32 model with every quantized linear dequantized from the saved tensors
        ref = make_model()
        ref.config._attn_implementation = "eager"
        sd = ref.state_dict()
        with torch.no_grad():
            for mod_name, m in fc.bnb_linears(q):
                key = mod_name + ".weight"
                qs = m.weight.quant_state
                assert not getattr(qs, "packing_format_for_cpu", False)
                assert torch.equal(m.weight.data.view(-1), saved[key].view(-1)), key
                w = bnbf.dequantize_4bit(m.weight.data, qs).to(torch.float32)
                assert list(w.shape) == list(sd[key].shape)
                sd[key].copy_(w)
                if key == DEQUANT_TENSOR:
                    assert list(w.shape) == dequantized["shape"]
                    dequantized[name.replace("tiny-llama-", "").replace("-", "_") + "_f32"] = fc.f32_hex(w)
                if spec["double_quant"]:
                    # nested_offset is torch.mean of the float32 per-block absmax of the
                    # original weight; the 8-bit absmax codes store absmax - offset
                    orig = fp32.state_dict()[key].reshape(-1, qs.blocksize).abs().amax(dim=1)
                    assert orig.mean().item() == qs.offset.item(), key
                    absmax = bnbf.dequantize_blockwise(qs.absmax, qs.state2) + qs.offset
                    assert (absmax - orig).abs().max().item() < 2e-3, key

        logits_q = last_logits(q)
        logits_ref = last_logits(ref)
        assert torch.equal(logits_q, logits_ref), (logits_q - logits_ref).abs().max()
        fc.assert_not_repacked(fc.bnb_linears(q))
        key = "logits_" + name.replace("tiny-llama-", "").replace("-", "_") + "_f32"
        expected[key] = fc.f32_hex(logits_q)
        print(f"{name}: max |logits - fp32| = {(logits_q - logits_fp32).abs().max().item():.6f}")

    expected["dequantized"] = dequantized
    (FIX / "tiny-llama-expected.json").write_text(fc.fixture_json(expected))
    fc.make_readable([FIX / "tiny-llama-expected.json"])

    # summary
    names = ["tiny-llama", "tiny-llama-bf16", "tiny-llama-sharded", *BNB, "tiny-llama-expected.json"]
    paths = [f for n in names for f in (sorted((FIX / n).iterdir()) if (FIX / n).is_dir() else [FIX / n])]
    print(f"{fc.list_files(paths):9d}  total")


if __name__ == "__main__":
    main()
