"""What the scripts under tools/ share: fixture paths, pinned-version warnings, float32 hex
encoding, JSON text, torch determinism, the tiny bitsandbytes NF4 model loaded the careful way,
seeded PEFT LoRA, the size/sha256 listing of written files, and the benches' RSS/CPU probes.

Scripts import it (`import fixture_common as fc`, or names from it): Python puts the running script's own folder
(tools/) first on sys.path, so `/work/venv-fixtures/bin/python tools/X.py` finds it from any
working directory, and so does a script re-run by another venv's Python (bench_peers_*.py).
Only the standard library and numpy are imported here; torch, bitsandbytes, transformers and
peft are imported inside the functions that need them (make_ggml_type_fixtures.py and the
llama.cpp side of bench_peers_inference.py run without them).
"""

import hashlib
import importlib.metadata
import json
import os
import platform
import resource
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
QLORA_FIXTURES = ROOT / "Tests" / "QLoRATests" / "Fixtures"
QUANT_FIXTURES = ROOT / "Tests" / "QuantTests" / "Fixtures"
# made by make_model_fixtures.py: 2 layers x q/k/v/o/gate/up/down_proj = 14 Linear4bit
TINY_NF4_DIR = QLORA_FIXTURES / "tiny-llama-bnb-nf4"
TINY_NF4_LINEARS = 14
SMOLLM2_GGUF = ROOT / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"

F32_HEX_ENCODING = "float32 arrays are lowercase hex of little-endian bytes, row-major"


# ---------------------------------------------------------------- versions, encoding, files
def check_versions(pins: dict) -> dict:
    """The installed version of each pinned name ("python": major.minor; a package's local tag
    such as +cpu dropped), with a warning on stderr for each that is not its pin: the fixtures
    may then differ."""
    got = {}
    for name, pinned in pins.items():
        if name == "python":
            got[name] = f"{sys.version_info.major}.{sys.version_info.minor}"
        else:
            try:
                got[name] = importlib.metadata.version(name).split("+")[0]
            except importlib.metadata.PackageNotFoundError:
                got[name] = "not installed"
        if got[name] != pinned:
            print(f"warning: {name} {got[name]} != pinned {pinned}; output may differ", file=sys.stderr)
    return got


def module_versions(*names) -> dict:
    """{name: module.__version__}, as a fixture's "versions" records them (local tag such as
    +cu132 kept)."""
    import importlib

    return {n: importlib.import_module(n).__version__ for n in names}


def f32_hex(a) -> str:
    """A torch tensor or array-like as float32: lowercase hex of little-endian bytes, row-major."""
    if hasattr(a, "detach"):  # torch.Tensor, any dtype or device
        a = a.detach().cpu().float().contiguous().numpy()
    return np.ascontiguousarray(a, dtype="<f4").tobytes().hex()


def u8_hex(a) -> str:
    """Raw bytes of an array-like of uint8 as lowercase hex."""
    return np.ascontiguousarray(np.asarray(a, dtype=np.uint8).reshape(-1)).tobytes().hex()


def fixture_json(doc) -> str:
    """The JSON text every fixture is written with: insertion-ordered keys, indent 1, final newline."""
    return json.dumps(doc, indent=1) + "\n"


def make_readable(paths):
    """chmod 0644: transformers writes model.safetensors with mode 0600 (through a temp file)."""
    for p in paths:
        os.chmod(p, 0o644)


def list_files(paths) -> int:
    """Prints size, sha256 prefix and repo-relative path of each file; returns their total size."""
    total = 0
    for p in paths:
        data = Path(p).read_bytes()
        total += len(data)
        print(f"{len(data):9d}  {hashlib.sha256(data).hexdigest()[:16]}  {Path(p).relative_to(ROOT)}")
    return total


# ---------------------------------------------------------------- torch
def deterministic_torch(threads: int = 1):
    import torch

    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True)


def bnb_linears(model):
    """(module name, bitsandbytes Linear4bit) of every 4-bit linear of model."""
    import bitsandbytes as bnb

    return [(n, m) for n, m in model.named_modules() if isinstance(m, bnb.nn.Linear4bit)]


def use_fp32_dequant_path(linears):
    """Turns off bitsandbytes 0.50's CPU bf16 path (see make_model_fixtures.py's caveats): it
    repacks the weight in place and runs in bf16.  Forward is then dequantize_4bit in float32 +
    F.linear, and backward dX = dY @ dequantize_4bit(W) in float32."""
    for _, m in linears:
        m.support_avx512bf16_for_cpu = False


def assert_not_repacked(linears):
    for name, m in linears:
        assert not getattr(m.weight.quant_state, "packing_format_for_cpu", False), name


def load_tiny_nf4():
    """TINY_NF4_DIR by transformers on the CPU, float32, eager attention, bf16 path off.
    Returns (model, [(name, Linear4bit)])."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(
        TINY_NF4_DIR, device_map="cpu", dtype=torch.float32, attn_implementation="eager"
    )
    linears = bnb_linears(model)
    assert len(linears) == TINY_NF4_LINEARS, linears
    use_fp32_dequant_path(linears)
    return model, linears


def dequantized_fp32_copy(nf4_model, linears):
    """A plain float32 model of the NF4 model's own class (LlamaForCausalLM, MistralForCausalLM,
    ...) holding its weights, its linears dequantized by bitsandbytes.functional.dequantize_4bit.
    A tied lm_head follows embed_tokens (one tensor)."""
    import bitsandbytes as bnb
    import bitsandbytes.functional as bnbf
    import torch

    cfg = type(nf4_model.config).from_dict({k: v for k, v in nf4_model.config.to_dict().items()
                                            if k != "quantization_config"})
    cfg._attn_implementation = "eager"
    ref = type(nf4_model)(cfg).to(torch.float32)
    sd = ref.state_dict()
    assert_not_repacked(linears)
    with torch.no_grad():
        for name, p in nf4_model.named_parameters():
            if not isinstance(p, bnb.nn.Params4bit):
                sd[name].copy_(p)
        for mod_name, m in linears:
            sd[mod_name + ".weight"].copy_(bnbf.dequantize_4bit(m.weight.data, m.weight.quant_state).to(torch.float32))
    return ref


# ---------------------------------------------------------------- PEFT LoRA
def labelled_batch(seed: int, batch: int, seq: int, masked_prefix):
    """input_ids [batch, seq] (ids 3..255) from a torch.Generator seeded with seed; labels the
    same with the first masked_prefix[b] positions of row b set to -100."""
    import torch
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 256, (batch, seq), generator=gen, dtype=torch.long)
    labels = ids.clone()
    for b, n in enumerate(masked_prefix):
        labels[b, :n] = -100
    return ids, labels


def peft_saved_name(param_name: str) -> str:
    """A PeftModel parameter's name -> the key save_pretrained writes: the adapter name dropped
    (".default."), and DoRA's magnitude without ".weight" (`…lora_magnitude_vector`)."""
    name = param_name.replace(".default.", ".")
    return name[: -len(".weight")] if name.endswith("lora_magnitude_vector.weight") else name


def peft_loss_and_grads(pm, ids, labels):
    """The loss of pm on (ids, labels), backward run: (output, {saved name: parameter}) of the
    parameters that train, in sorted name order."""
    pm.zero_grad(set_to_none=True)
    out = pm(input_ids=ids, labels=labels, use_cache=False)
    out.loss.backward()
    return out, {peft_saved_name(n): p for n, p in sorted(pm.named_parameters()) if p.requires_grad}


def assert_grads_match(params: dict, params_ref: dict, tol: float = 1e-6) -> float:
    """The same parameters with the same values on the NF4 model and its dequantized fp32 copy,
    every gradient non-zero and within tol of the reference's largest; returns the worst ratio."""
    import torch
    assert params.keys() == params_ref.keys()
    worst = 0.0
    for k, p in params.items():
        assert torch.equal(p, params_ref[k]), k
        g, gr = p.grad, params_ref[k].grad
        assert g is not None and g.abs().max().item() > 0, f"zero gradient: {k}"
        rel = ((g - gr).abs().max() / gr.abs().max()).item()
        worst = max(worst, rel)
        assert rel < tol, (k, rel)
    return worst


def seeded_lora(model, lora: dict, seed: int, a_std: float, b_std: float, norm_std: float = None, magnitude_std: float = None):
    """get_peft_model(model, LoraConfig(task_type="CAUSAL_LM", **lora)), then, from one
    torch.Generator seeded with seed in sorted parameter-name order: lora_A ~ N(0, a_std),
    lora_B ~ N(0, b_std) (non-zero), with norm_std every modules_to_save weight
    w * (1 + N(0, norm_std)), and with magnitude_std every DoRA magnitude m * (1 + N(0, magnitude_std))."""
    import torch
    from peft import LoraConfig, get_peft_model

    pm = get_peft_model(model, LoraConfig(task_type="CAUSAL_LM", **lora))
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(pm.named_parameters()):
            if ".lora_A." in name:
                p.copy_(a_std * torch.randn(p.shape, generator=gen, dtype=torch.float32))
            elif ".lora_B." in name:
                p.copy_(b_std * torch.randn(p.shape, generator=gen, dtype=torch.float32))
            elif norm_std is not None and ".modules_to_save.default." in name:
                p.mul_(1 + norm_std * torch.randn(p.shape, generator=gen, dtype=torch.float32))
            elif magnitude_std is not None and ".lora_magnitude_vector." in name:
                p.mul_(1 + magnitude_std * torch.randn(p.shape, generator=gen, dtype=torch.float32))
    return pm


def lora_scaling(pm) -> float:
    """The one scaling (lora_alpha / r, or / sqrt(r) with rsLoRA) of every adapted module."""
    s = {float(m.scaling["default"]) for m in pm.modules()
         if isinstance(getattr(m, "scaling", None), dict) and "default" in m.scaling}
    assert len(s) == 1, s
    return s.pop()


# ---------------------------------------------------------------- benches
def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def log(msg: str):
    """Progress on stderr; stdout carries the results."""
    print(msg, file=sys.stderr, flush=True)


def lora_config_record(pm) -> dict:
    """The LoraConfig of a PeftModel's default adapter, as the lora-grads fixtures record it."""
    lcfg = pm.peft_config["default"]
    return {
        "r": lcfg.r,
        "lora_alpha": lcfg.lora_alpha,
        "lora_dropout": lcfg.lora_dropout,
        "bias": lcfg.bias,
        "target_modules": sorted(lcfg.target_modules),
        "use_rslora": lcfg.use_rslora,
        "layers_to_transform": lcfg.layers_to_transform,
    }


def lora_params_record(params: dict) -> dict:
    """{name: shape, value and gradient as f32 hex} of trained tensors, as the fixtures record them."""
    return {k: {"shape": list(p.shape), "value_f32": f32_hex(p), "grad_f32": f32_hex(p.grad)} for k, p in params.items()}


# What every lora-grads fixture records, in its "note".
LORA_GRADS_NOTE = (
    "PEFT LoRA on the bitsandbytes NF4 model, float32, eager attention, bnb's CPU bf16 "
    "path off (base forward = dequantize_4bit fp32 + F.linear). loss = mean cross-entropy "
    "of logits[:, t] against labels[:, t+1] over labels != -100. Keys are adapter_model."
    "safetensors names; value_f32 is the initial value, grad_f32 the gradient. "
    "lora_A [r, in], lora_B [out, r], y = base(x) + scaling * (x A^T) B^T."
)
