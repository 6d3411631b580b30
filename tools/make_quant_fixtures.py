#!/usr/bin/env python3
"""Generate bit-exact reference fixtures for the qlora quantizers.

Writes JSON files into Tests/QuantTests/Fixtures/ (and nowhere else):

  bnb_<nf4|fp4>_<rows>x<cols>_bs<blocksize>[_dq].json
      produced by bitsandbytes.functional.quantize_4bit / dequantize_4bit,
      run on the CPU backend (bitsandbytes >= 0.46 has a real CPU backend;
      nothing here is a re-implementation -- the numpy code below is only a
      cross-check that asserts our understanding of the algorithm matches
      what bitsandbytes actually returned).
  bnb_blockwise8_dynamic_n4100_bs256.json
      (extra) bitsandbytes.functional.quantize_blockwise with the signed
      dynamic map, blocksize 256: the exact 8-bit quantizer that double
      quantization uses for the absmax vector.
  ggml_<q4_0|q4_1|q8_0>_<rows>x<cols>.json
      produced by gguf.quants.quantize / gguf.quants.dequantize (ggml's own
      python package).

All binary arrays are lowercase hex of little-endian bytes; float arrays are
float32.

Environment used to generate the committed fixtures (CPU only, x86_64 with
AVX-512, Python 3.11):

    python3 -m venv /work/venv-fixtures
    /work/venv-fixtures/bin/pip install torch==2.15.0 bitsandbytes==0.50.2 gguf==0.19.0 numpy==2.4.6
    /work/venv-fixtures/bin/python tools/make_quant_fixtures.py

(`pip install torch` from PyPI pulls the CUDA build plus nvidia-* wheels; it
installs in about a minute and runs fine on a machine without a GPU.)

Determinism: all inputs come from numpy.random.default_rng with seeds derived
from the file name (zlib.crc32), torch runs single-threaded, and the JSON is
written with a fixed key order, so running the script twice gives identical
files.

Caveat (bitsandbytes 0.50.2 CPU backend): for FP4 the dequantized value of
nibble 0b1000 ("negative zero") is +0.0 on the AVX-512 LUT path of
dequantizeBlockwise4bitCpu (used when cols % 16 == 0 and blocksize >= 16 on a
CPU with AVX-512F) but -0.0 on the scalar LUT path (cols % 16 != 0, or no
AVX-512). Each bnb fixture records which path produced it in the extra key
"bnb_cpu_dequant_path". Compare +0.0 and -0.0 as equal when checking FP4
dequantized output, or regenerate on a machine with the same path.
"""

from __future__ import annotations

import sys
import zlib

import numpy as np

import fixture_common as fc

PINNED = {"torch": "2.15.0", "bitsandbytes": "0.50.2", "gguf": "0.19.0", "numpy": "2.4.6"}

OUT_DIR = fc.QUANT_FIXTURES

F32 = np.float32


# ----------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------

def seed_for(name: str) -> int:
    return zlib.crc32(name.encode("utf-8"))


def bits(a) -> np.ndarray:
    return np.asarray(a, dtype=np.float32).reshape(-1).view(np.uint32)


def same_bits(a, b) -> bool:
    a = bits(a)
    b = bits(b)
    return a.shape == b.shape and bool(np.all(a == b))


def same_value(a, b) -> bool:
    """Equal as float32 values (+0.0 == -0.0), same shape, no NaN."""
    a = np.asarray(a, dtype=np.float32).reshape(-1)
    b = np.asarray(b, dtype=np.float32).reshape(-1)
    return a.shape == b.shape and bool(np.all(a == b))


def write_json(name: str, obj: dict, written: list) -> None:
    path = OUT_DIR / name
    text = fc.fixture_json(obj)
    path.write_text(text, encoding="utf-8")
    written.append((name, len(text.encode("utf-8"))))


def step_ulps(x: np.float32, k: int) -> np.float32:
    """Move a non-zero float32 by k ulps away from / towards zero (same sign region)."""
    i = np.array([x], dtype=np.float32).view(np.int32)[0]
    return np.array([i + k], dtype=np.int32).view(np.float32)[0]


# ----------------------------------------------------------------------------
# numpy cross-check ports of the bitsandbytes 0.50.2 CPU algorithms
# (used only to assert that the fixture contents are what we think they are)
# ----------------------------------------------------------------------------

def bnb_4bit_bounds(code: np.ndarray):
    """backends/default/ops.py::_get_4bit_quantize_bounds."""
    order = np.argsort(code, kind="stable")
    s = code[order]
    bounds = ((s[:-1] + s[1:]) / F32(2)).astype(np.float32)
    return bounds, order


def port_quantize_4bit(x: np.ndarray, blocksize: int, code: np.ndarray):
    """backends/default/ops.py quantize_4bit kernel (the one the CPU uses)."""
    bounds, order = bnb_4bit_bounds(code)
    x = x.reshape(-1).astype(np.float32)
    n = x.size
    rem = n % blocksize
    full = n - rem
    tiny = F32(1e-38)  # torch clamp(min=1e-38) on float32 -> 9.99999935e-39
    absmax = []
    scaled = np.empty(n, dtype=np.float32)
    for b in range(full // blocksize):
        blk = x[b * blocksize:(b + 1) * blocksize]
        am = np.max(np.abs(blk))
        absmax.append(am)  # stored unclamped (0 for an all-zero block)
        inv = F32(1) / max(am, tiny)  # multiply by reciprocal
        scaled[b * blocksize:(b + 1) * blocksize] = np.clip(blk * inv, F32(-1), F32(1))
    if rem:
        blk = x[full:]
        am = max(np.max(np.abs(blk)), tiny)  # stored CLAMPED for the partial block
        absmax.append(am)
        scaled[full:] = np.clip(blk / am, F32(-1), F32(1))  # true division here
    if n % 2:
        scaled = np.concatenate([scaled, np.zeros(1, np.float32)])
    idx = np.searchsorted(bounds, scaled, side="left")  # == torch.bucketize(right=False)
    q = order[idx].astype(np.uint8)
    packed = ((q[0::2] << 4) | q[1::2]).astype(np.uint8)
    return packed, np.array(absmax, dtype=np.float32)


def port_dequantize_4bit(packed: np.ndarray, absmax: np.ndarray, blocksize: int, n: int, lut: np.ndarray):
    """csrc/cpu_ops.cpp dequantizeBlockwise4bitCpu: out = lut[nibble] * absmax[i / blocksize]."""
    p = packed.reshape(-1)
    nib = np.empty(p.size * 2, dtype=np.uint8)
    nib[0::2] = p >> 4
    nib[1::2] = p & 0x0F
    nib = nib[:n]
    scale = absmax[np.arange(n) // blocksize]
    return (lut[nib] * scale).astype(np.float32)


def build_lut8(code: np.ndarray) -> np.ndarray:
    """csrc/cpu_ops.cpp build_quantize_lut (65536-entry table)."""
    code = code.astype(np.float32)
    mids = (F32(0.5) * (code[:-1] + code[1:])).astype(np.float32)
    i = np.arange(65536, dtype=np.int64)
    val = ((F32(2) * i.astype(np.float32)) / F32(65535)).astype(np.float32) - F32(1)
    # code_idx = number of midpoints strictly below val (midpoints are sorted)
    return np.searchsorted(mids, val.astype(np.float32), side="left").astype(np.uint8)


def port_quantize_blockwise8(x: np.ndarray, code: np.ndarray, blocksize: int):
    """csrc/cpu_ops.cpp quantize_cpu_impl<float> (as compiled in libbitsandbytes_cpu.so)."""
    lut = build_lut8(code)
    x = x.reshape(-1).astype(np.float32)
    n = x.size
    out = np.zeros(n, dtype=np.uint8)
    nblocks = -(-n // blocksize)
    absmax = np.zeros(nblocks, dtype=np.float32)
    for b in range(nblocks):
        blk = x[b * blocksize:min((b + 1) * blocksize, n)]
        am = np.max(np.abs(blk))
        absmax[b] = am
        if am == 0:
            continue  # out stays 0 for the whole block
        inv = F32(1) / am
        s = np.clip((blk * inv).astype(np.float32), F32(-1), F32(1))
        t = ((s + F32(1)) * F32(0.5)).astype(np.float32)
        # compiled as vfmadd213ss: fmaf(t, 65535.0f, 0.5f). t*65535 + 0.5 is exact
        # in float64 for every t reachable here, so one rounding to float32 == fma.
        f = (t.astype(np.float64) * 65535.0 + 0.5).astype(np.float32)
        idx = np.trunc(f).astype(np.int64) & 0xFFFF
        out[b * blocksize:b * blocksize + blk.size] = lut[idx]
    return out, absmax


def torch_cpu_mean_f32(x: np.ndarray, lanes: int = 8) -> np.float32:
    """torch.Tensor.mean() of a contiguous 1-D float32 CPU tensor, as torch 2.15
    computes it: at::sum_out (aten/src/ATen/native/cpu/SumKernel.cpp cascade_sum:
    vectorized_inner_sum -> row_sum (4-way ILP) -> multi_row_sum (4-level
    cascade, level_step >= 16)) followed by .div_(n) in float32.  `lanes` is
    Vectorized<float>::size() of the kernel torch dispatched to; 8 matched on
    the generating machine (checked against torch for many n)."""
    x = np.asarray(x, dtype=np.float32).reshape(-1)
    n = x.size

    def multi_row_sum(get, size, nrows, zero):
        num_levels = 4
        clog2 = 0 if size <= 1 else int(size - 1).bit_length()
        level_power = max(4, clog2 // num_levels)
        level_step = 1 << level_power
        level_mask = level_step - 1
        acc = [[zero.copy() for _ in range(nrows)] for _ in range(num_levels)]
        i = 0
        while i + level_step <= size:
            for _ in range(level_step):
                for k in range(nrows):
                    acc[0][k] = (acc[0][k] + get(i, k)).astype(np.float32)
                i += 1
            for j in range(1, num_levels):
                for k in range(nrows):
                    acc[j][k] = (acc[j][k] + acc[j - 1][k]).astype(np.float32)
                    acc[j - 1][k] = zero.copy()
                if (i & (level_mask << (j * level_power))) != 0:
                    break
        while i < size:
            for k in range(nrows):
                acc[0][k] = (acc[0][k] + get(i, k)).astype(np.float32)
            i += 1
        for j in range(1, num_levels):
            for k in range(nrows):
                acc[0][k] = (acc[0][k] + acc[j][k]).astype(np.float32)
        return [acc[0][k] for k in range(nrows)]

    def row_sum(load, size, zero):
        ilp = 4
        size_ilp = size // ilp
        ps = multi_row_sum(lambda i, k: load(i * ilp + k), size_ilp, ilp, zero)
        for i in range(size_ilp * ilp, size):
            ps[0] = (ps[0] + load(i)).astype(np.float32)
        for k in range(1, ilp):
            ps[0] = (ps[0] + ps[k]).astype(np.float32)
        return ps[0]

    if n >= lanes:
        nv = n // lanes
        vacc = row_sum(lambda i: x[i * lanes:(i + 1) * lanes], nv, np.zeros(lanes, np.float32))
        total = np.float32(0)
        for k in range(nv * lanes, n):
            total = np.float32(total + x[k])
        for k in range(lanes):
            total = np.float32(total + vacc[k])
    else:
        total = np.float32(row_sum(lambda i: np.array(x[i], np.float32), n, np.array(0, np.float32)))
    return np.float32(total / np.float32(n))


def nearest_code_index(x: np.ndarray, absmax: np.ndarray, code: np.ndarray, blocksize: int) -> np.ndarray:
    """Exact nearest-code quantization (for reporting how often the LUT deviates)."""
    x = x.reshape(-1).astype(np.float32)
    out = np.zeros(x.size, dtype=np.uint8)
    for i in range(x.size):
        am = absmax[i // blocksize]
        if am == 0:
            continue
        s = float(np.clip(x[i] * (F32(1) / am), F32(-1), F32(1)))
        out[i] = int(np.argmin(np.abs(code.astype(np.float64) - s)))
    return out


# ----------------------------------------------------------------------------
# bitsandbytes fixtures
# ----------------------------------------------------------------------------

BNB_CASES = [
    # (quant_type, rows, cols, blocksize, double_quant)
    ("nf4", 8, 64, 64, False),
    ("fp4", 8, 64, 64, False),
    ("nf4", 7, 100, 64, False),
    ("fp4", 7, 100, 64, False),
    ("nf4", 4, 256, 128, False),
    ("fp4", 4, 256, 128, False),
    ("nf4", 3, 96, 32, False),
    ("fp4", 3, 96, 32, False),
    ("nf4", 40, 448, 64, True),
    ("fp4", 40, 448, 64, True),
    ("nf4", 8, 64, 64, True),
]


def craft_recip_vs_div(base_am: np.float32, bounds: np.ndarray, want: int = 2):
    """Find an absmax `am` near base_am and inputs x (|x| < am) for which
    bucket(x * (1/am)) != bucket(x / am).  Returns (am, [x...])."""
    for k in range(0, 4000):
        am = step_ulps(base_am, k * 7)
        inv = F32(1) / am
        found = []
        for b in bounds:
            if b == 0 or abs(b) >= 1:
                continue
            center = F32(b * am)
            for d in range(-48, 49):
                x = step_ulps(center, d)
                if not (abs(x) < am):
                    continue
                m = np.clip(F32(x * inv), F32(-1), F32(1))
                q = np.clip(F32(x / am), F32(-1), F32(1))
                if (m <= b) != (q <= b):
                    found.append(x)
                    break
            if len(found) >= want:
                return am, found
        if found:
            return am, found
    raise RuntimeError("could not craft reciprocal-vs-division inputs")


def make_bnb_input(name: str, qt: str, rows: int, cols: int, bs: int, code: np.ndarray) -> tuple[np.ndarray, dict]:
    rng = np.random.default_rng(seed_for(name))
    n = rows * cols
    nblocks = -(-n // bs)
    rem = n % bs
    scale = F32(0.05)
    x = np.zeros(n, dtype=np.float32)
    # default content: normal data with a per-block scale factor
    for b in range(nblocks):
        s0, s1 = b * bs, min((b + 1) * bs, n)
        f = F32(rng.uniform(0.25, 2.0))
        x[s0:s1] = (rng.standard_normal(s1 - s0).astype(np.float32) * scale * f).astype(np.float32)
    layout = {}
    bounds, _ = bnb_4bit_bounds(code)
    next_block = 1
    # one block entirely zero (here it is never the last block)
    if nblocks >= 3:
        b = next_block
        next_block += 1
        x[b * bs:(b + 1) * bs] = 0.0
        layout["zero_block"] = b
    # one large outlier
    if nblocks >= 3:
        b = next_block
        next_block += 1
        pos = b * bs + int(rng.integers(0, bs))
        x[pos] = F32(-40.0) * scale
        layout["outlier_index"] = pos
    # tie blocks: absmax exactly 1.0, inputs exactly on the quantization
    # midpoints and one ulp either side (ties go to the LOWER code)
    tie_vals = []
    for bd in bounds:
        tie_vals += [bd, np.nextafter(bd, F32(np.inf)), np.nextafter(bd, F32(-np.inf))]
    tie_vals = [v for v in tie_vals if abs(v) < 1]
    per = bs - 1
    ntie = -(-len(tie_vals) // per)
    full_blocks = n // bs
    if next_block + ntie + 1 < full_blocks:
        tb = []
        for j in range(ntie):
            b = next_block
            next_block += 1
            chunk = tie_vals[j * per:(j + 1) * per]
            blk = rng.uniform(-0.9, 0.9, bs).astype(np.float32)
            blk[0] = F32(1.0)
            blk[1:1 + len(chunk)] = np.array(chunk, dtype=np.float32)
            x[b * bs:(b + 1) * bs] = blk
            tb.append(b)
        layout["tie_blocks"] = tb

    # crafted values where x*(1/absmax) and x/absmax fall in different codes
    def craft_block(b0: int, b1: int):
        am, xs = craft_recip_vs_div(F32(3.0) * scale, bounds)
        blk = np.clip(rng.standard_normal(b1 - b0).astype(np.float32) * scale, -F32(0.9) * am, F32(0.9) * am).astype(np.float32)
        blk[0] = am
        for j, v in enumerate(xs):
            blk[1 + 2 * j] = v
        x[b0:b1] = blk

    if next_block < full_blocks - (0 if rem else 1):
        b = next_block
        next_block += 1
        craft_block(b * bs, (b + 1) * bs)
        layout["recip_vs_div_full_block"] = b
    if rem:
        craft_block(n - rem, n)
        layout["recip_vs_div_partial_block"] = nblocks - 1
    return x.reshape(rows, cols), layout


def bnb_fixtures(written: list, report: list) -> None:
    import torch
    import bitsandbytes as bnb
    import bitsandbytes.functional as F
    from bitsandbytes.cextension import lib, ErrorHandlerMockBNBNativeLibrary

    if isinstance(lib, ErrorHandlerMockBNBNativeLibrary):
        raise SystemExit("bitsandbytes native CPU library not loaded; refusing to write fixtures")
    have_avx512 = torch.backends.cpu.get_cpu_capability() == "AVX512"
    gen = f"tools/make_quant_fixtures.py (bitsandbytes {bnb.__version__}, torch {torch.__version__})"

    # C LUTs used by csrc/cpu_ops.cpp dequantizeBlockwise4bitCpu
    nf4_code = F.get_4bit_type("nf4", device="cpu").numpy().astype(np.float32)
    fp4_code = F.get_4bit_type("fp4", device="cpu").numpy().astype(np.float32)
    fp4_scalar_lut = fp4_code.copy()
    fp4_scalar_lut[8] = F32(-0.0)  # `-0.0f` in the scalar fp4_lut; the AVX-512 LUT has +0.0f

    for qt, rows, cols, bs, dq in BNB_CASES:
        name = f"bnb_{qt}_{rows}x{cols}_bs{bs}{'_dq' if dq else ''}.json"
        code = nf4_code if qt == "nf4" else fp4_code
        x, layout = make_bnb_input(name, qt, rows, cols, bs, code)
        A = torch.from_numpy(x.copy())
        packed, qs = F.quantize_4bit(A, blocksize=bs, compress_statistics=dq, quant_type=qt)
        deq = F.dequantize_4bit(packed, qs)
        n = rows * cols

        packed_np = packed.numpy().reshape(-1).astype(np.uint8)
        assert packed_np.size == (n + 1) // 2
        code_np = qs.code.numpy().astype(np.float32)
        assert code_np.size == 16 and same_bits(code_np, code)
        deq_np = deq.numpy().astype(np.float32).reshape(-1)

        # which C dequant path produced `deq`
        if cols % 2 != 0 or (have_avx512 and bs >= 2048):
            path = "python_fallback"
        elif have_avx512 and cols % 16 == 0 and bs >= 16:
            path = "avx512_lut"
        else:
            path = "scalar_lut"
        lut = code if (qt == "nf4" or path != "scalar_lut") else fp4_scalar_lut

        # ---- cross-check quantization -------------------------------------------
        p_packed, p_absmax = port_quantize_4bit(x, bs, code)
        assert np.array_equal(p_packed, packed_np), f"{name}: packed mismatch vs port"

        obj = {
            "generator": gen,
            "quant_type": qt,
            "blocksize": bs,
            "double_quant": dq,
            "shape": [rows, cols],
            "input_f32": fc.f32_hex(x),
            "packed_u8": fc.u8_hex(packed_np),
            "code_f32": fc.f32_hex(code_np),
        }
        if not dq:
            absmax = qs.absmax.numpy().astype(np.float32)
            assert same_bits(absmax, p_absmax), f"{name}: absmax mismatch vs port"
            obj["absmax_f32"] = fc.f32_hex(absmax)
            absmax_used = absmax
        else:
            assert qs.nested
            absmax_u8 = qs.absmax.numpy().astype(np.uint8).reshape(-1)
            offset_t = qs.offset
            offset = np.float32(offset_t.item())
            st2 = qs.state2
            nested_absmax = st2.absmax.numpy().astype(np.float32)
            nested_code = st2.code.numpy().astype(np.float32)
            # exactly what functional.dequantize_4bit does internally:
            absmax_dq_t = F.dequantize_blockwise(qs.absmax, qs.state2)
            absmax_dq_t += qs.offset
            absmax_dq = absmax_dq_t.numpy().astype(np.float32)

            # cross-check the double quantization chain
            dyn = F.create_dynamic_map(signed=True).numpy().astype(np.float32)
            assert same_bits(nested_code, dyn)
            mean64 = F32(np.mean(p_absmax.astype(np.float64)))
            emul = torch_cpu_mean_f32(p_absmax)
            assert emul == offset, f"{name}: offset {offset!r} != torch cascade-sum emulation {emul!r}"
            report.append(f"{name}: offset torch.mean={float(offset)!r} "
                          f"float32(mean in float64)={float(mean64)!r} equal={bool(mean64 == offset)}")
            centered = (p_absmax - offset).astype(np.float32)
            q8, nabs = port_quantize_blockwise8(centered, dyn, st2.blocksize)
            assert np.array_equal(q8, absmax_u8), f"{name}: absmax_u8 mismatch vs LUT port"
            assert same_bits(nabs, nested_absmax), f"{name}: nested absmax mismatch"
            exact = nearest_code_index(centered, nabs, dyn, st2.blocksize)
            report.append(f"{name}: 8-bit LUT vs exact-nearest disagreements: {int(np.sum(exact != q8))}/{q8.size}")
            recon = ((dyn[q8] * nabs[np.arange(q8.size) // st2.blocksize]).astype(np.float32) + offset).astype(np.float32)
            assert same_bits(recon, absmax_dq), f"{name}: absmax reconstruction mismatch"

            obj["absmax_u8"] = fc.u8_hex(absmax_u8)
            obj["offset"] = float(offset)
            obj["offset_f32"] = fc.f32_hex(np.array([offset], dtype=np.float32))
            obj["nested_absmax_f32"] = fc.f32_hex(nested_absmax)
            obj["nested_blocksize"] = int(st2.blocksize)
            obj["nested_code_f32"] = fc.f32_hex(nested_code)
            obj["absmax_dequantized_f32"] = fc.f32_hex(absmax_dq)
            absmax_used = absmax_dq

        # ---- cross-check dequantization -----------------------------------------
        p_deq = port_dequantize_4bit(packed_np, absmax_used, bs, n, lut)
        assert same_bits(p_deq, deq_np), f"{name}: dequantized mismatch vs port ({path})"

        obj["dequantized_f32"] = fc.f32_hex(deq_np)
        obj["bnb_cpu_dequant_path"] = path
        write_json(name, obj, written)

        # informational: what happened to the special blocks
        nib = np.empty(packed_np.size * 2, np.uint8)
        nib[0::2] = packed_np >> 4
        nib[1::2] = packed_np & 15
        info = f"{name}: blocks={-(-n // bs)} partial_last={n % bs} layout={layout} dequant_path={path}"
        if "recip_vs_div_partial_block" in layout or "recip_vs_div_full_block" in layout:
            info += " (crafted recip-vs-div inputs present)"
        if not dq and n % bs:
            info += f" partial-block absmax={float(qs.absmax[-1])!r}"
        report.append(info)

    # ---- extra: the 8-bit blockwise quantizer (dynamic map, blocksize 256) -----------
    name = "bnb_blockwise8_dynamic_n4100_bs256.json"
    rng = np.random.default_rng(seed_for(name))
    dyn = F.create_dynamic_map(signed=True).numpy().astype(np.float32)
    n, bs = 4100, 256
    x = (rng.standard_normal(n) * 0.1).astype(np.float32)
    x[256:512] = 0.0  # all-zero block
    # a block with absmax exactly 1.0 and inputs on / next to every code midpoint
    mids = (F32(0.5) * (dyn[:-1] + dyn[1:])).astype(np.float32)
    blk = rng.uniform(-0.9, 0.9, 256).astype(np.float32)
    blk[0] = 1.0
    pick = mids[:: 2][:255]
    blk[1:1 + pick.size] = pick
    x[512:768] = blk
    blk = rng.uniform(-0.9, 0.9, 256).astype(np.float32)
    blk[0] = -1.0
    pick = mids[1:: 2][:255]
    blk[1:1 + pick.size] = np.nextafter(pick, np.float32(np.inf))
    x[768:1024] = blk
    x[2000] = 25.0  # outlier
    out, st = F.quantize_blockwise(torch.from_numpy(x.copy()), blocksize=bs)
    deq = F.dequantize_blockwise(out, st).numpy().astype(np.float32)
    out_np = out.numpy().astype(np.uint8)
    p_out, p_abs = port_quantize_blockwise8(x, dyn, bs)
    assert np.array_equal(p_out, out_np), "blockwise8: LUT port mismatch"
    assert same_bits(p_abs, st.absmax.numpy())
    assert same_bits((dyn[out_np] * p_abs[np.arange(n) // bs]).astype(np.float32), deq)
    exact = nearest_code_index(x, p_abs, dyn, bs)
    report.append(f"{name}: 8-bit LUT vs exact-nearest disagreements: {int(np.sum(exact != out_np))}/{n}")
    write_json(name, {
        "generator": gen,
        "code": "dynamic (create_dynamic_map(signed=True))",
        "blocksize": bs,
        "shape": [n],
        "code_f32": fc.f32_hex(st.code.numpy()),
        "input_f32": fc.f32_hex(x),
        "quantized_u8": fc.u8_hex(out_np),
        "absmax_f32": fc.f32_hex(st.absmax.numpy()),
        "dequantized_f32": fc.f32_hex(deq),
    }, written)


# ----------------------------------------------------------------------------
# ggml fixtures (gguf.quants)
# ----------------------------------------------------------------------------

GGML_CASES = [("q4_0", 4, 64), ("q4_0", 3, 96), ("q4_1", 4, 64), ("q4_1", 3, 96), ("q8_0", 4, 64), ("q8_0", 3, 96)]


def ggml_tie_block(kind: str, rng) -> np.ndarray:
    if kind == "q4_0":
        # largest-magnitude value -8 -> d = 1, id = 1; x + 8.5 then truncation: halves go up
        v = [-8.0, -7.5, -6.5, -4.5, -0.5, 0.5, 1.5, 3.5, 6.5, 7.0, 7.5, 7.99, 0.0, -3.0, 2.0, -1.5]
    elif kind == "q4_1":
        # min 0, max 15 -> d = 1; (x - min) + 0.5 then truncation: halves go up
        v = [0.0, 15.0, 0.5, 1.5, 2.5, 7.5, 13.5, 14.5, 14.49, 3.0, 8.0, 11.5, 0.49, 5.5, 9.5, 12.0]
    else:
        # amax 127 -> d = 1, id = 1; roundf: halves go away from zero
        v = [127.0, -126.5, 126.5, 0.5, -0.5, 1.5, -1.5, 2.5, -2.5, 63.5, -63.5, 0.49, -0.49, 100.0, -7.0, 3.0]
    blk = rng.uniform(float(min(v)), float(max(v)), 32).astype(np.float32)
    if kind == "q4_0":
        blk = np.clip(blk, -7.9, 7.9).astype(np.float32)
    blk[:len(v)] = np.array(v, dtype=np.float32)
    return blk


def ggml_fixtures(written: list, report: list) -> None:
    import gguf
    from gguf import GGMLQuantizationType
    from gguf.quants import quantize, dequantize

    try:
        from importlib.metadata import version
        gver = version("gguf")
    except Exception:  # pragma: no cover
        gver = "?"
    gen = f"tools/make_quant_fixtures.py (gguf {gver}, numpy {np.__version__})"
    qtypes = {"q4_0": GGMLQuantizationType.Q4_0, "q4_1": GGMLQuantizationType.Q4_1, "q8_0": GGMLQuantizationType.Q8_0}
    for kind, rows, cols in GGML_CASES:
        name = f"ggml_{kind}_{rows}x{cols}.json"
        rng = np.random.default_rng(seed_for(name))
        n = rows * cols
        nb = n // 32
        x = np.zeros(n, dtype=np.float32)
        for b in range(nb):
            f = rng.uniform(0.2, 3.0)
            x[b * 32:(b + 1) * 32] = (rng.standard_normal(32) * 0.1 * f).astype(np.float32)
        # block 1: all zeros
        x[32:64] = 0.0
        # block 2: largest-magnitude value is negative
        blk = (rng.standard_normal(32) * 0.1).astype(np.float32)
        blk[int(rng.integers(0, 32))] = -0.9
        x[64:96] = blk
        # block 3: one large outlier (positive)
        blk = (rng.standard_normal(32) * 0.1).astype(np.float32)
        blk[int(rng.integers(0, 32))] = 12.0
        x[96:128] = blk
        # block 4: exact rounding ties
        x[128:160] = ggml_tie_block(kind, rng)
        x = x.reshape(rows, cols)

        q = quantize(x, qtypes[kind])
        q = np.asarray(q, dtype=np.uint8)
        dq = np.asarray(dequantize(q, qtypes[kind]), dtype=np.float32)
        bytes_per_block = {"q4_0": 18, "q4_1": 20, "q8_0": 34}[kind]
        assert q.size == nb * bytes_per_block, (name, q.shape)
        assert dq.shape == x.shape
        write_json(name, {
            "generator": gen,
            "type": kind,
            "shape": [rows, cols],
            "input_f32": fc.f32_hex(x),
            "blocks_u8": fc.u8_hex(q),
            "dequantized_f32": fc.f32_hex(dq),
        }, written)


# ----------------------------------------------------------------------------

def main() -> int:
    verbose = "-v" in sys.argv or "--verbose" in sys.argv
    try:
        import torch
        import bitsandbytes  # noqa: F401
        import gguf  # noqa: F401
    except ImportError as e:
        print(f"missing dependency ({e}); run inside the fixture venv, e.g.\n"
              "  /work/venv-fixtures/bin/python tools/make_quant_fixtures.py\n"
              "(see the pip install line at the top of this file)", file=sys.stderr)
        return 2
    torch.set_num_threads(1)
    torch.manual_seed(0)
    fc.check_versions(PINNED)
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    written: list = []
    report: list = []
    bnb_fixtures(written, report)
    ggml_fixtures(written, report)
    total = 0
    for name, size in written:
        total += size
        print(f"{size:8d}  {OUT_DIR.relative_to(fc.ROOT) / name}")
    print(f"{total:8d}  total ({len(written)} files)")
    if verbose:
        print("\n".join(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
