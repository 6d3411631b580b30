#!/usr/bin/env python3
"""Generate bit-exact dequantization fixtures for every ggml tensor type qlora reads.

Writes Tests/QuantTests/Fixtures/ggmltype_<type>.json (and nowhere else), one per type:
F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K.

Each file holds random raw blocks, exactly as a GGUF file stores a tensor of `shape`
[rows, cols], and their dequantization by gguf-py's `gguf.quants.dequantize` (ggml's own
python package):

  "generator"        this script and the pinned versions
  "type", "type_id"  ggml's name and GGUF id (gguf.constants.GGMLQuantizationType)
  "shape"            [rows, cols]: 2 x 64 for one-element and 32-element blocks, 2 x 512 for
                     the 256-element K-quant super-blocks (4 blocks)
  "raw_u8"           lowercase hex of the raw bytes
  "dequantized_f32"  lowercase hex of the little-endian float32 results

Raw bytes are uniform random, except that every fp16 scale field (d, and dmin or m where the
block has one) is overwritten with the fp16 of a value of random sign and magnitude in
[1e-3, 1e-1], log-uniform, so that results are finite and of the size real weights have.
F16 data has its NaN encodings replaced (see below); F32 and BF16 data are raw bits, with a
few special values (zeros, infinities, a subnormal, a NaN) written at the start.

Order of operations. gguf-py's numpy dequantizers do the same float32 operations in the same
order as ggml-quants.c's dequantize_row_* (e.g. Q4_K: d1 = d*sc, m1 = dmin*m, y = d1*q - m1;
Q6_K: y = (d*sc)*q; Q3_K: y = (d*(sc-32))*q), and numpy never fuses a multiply and an add,
so for every type here gguf-py and ggml's C (built without FP contraction, as qlora's C
target is) agree bit for bit; no type needs a tolerance.

F16 NaNs: ggml converts fp16 to fp32 with F16C (or an arithmetic path) that quiets a
signalling NaN (0x7c01 -> 0x7fc02000); numpy and qlora's qk_fp16_to_fp32 keep the payload
as it is (0x7f802000). Model weights hold no NaNs, so the F16 fixture avoids them rather than
pin either behaviour.

Environment used to generate the committed fixtures (CPU only, Python 3.11):

    python3 -m venv /work/venv-fixtures
    /work/venv-fixtures/bin/pip install gguf==0.19.0 numpy==2.4.6
    /work/venv-fixtures/bin/python tools/make_ggml_type_fixtures.py

Determinism: each file's inputs come from numpy.random.default_rng seeded with the crc32 of
its type name, and the JSON is written with a fixed key order, so running the script twice
gives identical files.
"""

from __future__ import annotations

import sys
import zlib

import numpy as np
from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType as T
from gguf.quants import dequantize

import fixture_common as fc

PINNED = {"gguf": "0.19.0", "numpy": "2.4.6"}

OUT_DIR = fc.QUANT_FIXTURES
GENERATOR = "tools/make_ggml_type_fixtures.py (" + ", ".join(f"{k} {v}" for k, v in PINNED.items()) + ")"

# Byte offsets of the fp16 scale fields in each block (ggml-common.h; gguf-py's
# dequantize_blocks split the blocks the same way).
SCALE_OFFSETS: dict[T, tuple[int, ...]] = {
    T.Q4_0: (0,),      # d, qs[16]
    T.Q4_1: (0, 2),    # d, m, qs[16]
    T.Q5_0: (0,),      # d, qh[4], qs[16]
    T.Q5_1: (0, 2),    # d, m, qh[4], qs[16]
    T.Q8_0: (0,),      # d, qs[32]
    T.Q2_K: (80, 82),  # scales[16], qs[64], d, dmin
    T.Q3_K: (108,),    # hmask[32], qs[64], scales[12], d
    T.Q4_K: (0, 2),    # d, dmin, scales[12], qs[128]
    T.Q5_K: (0, 2),    # d, dmin, scales[12], qh[32], qs[128]
    T.Q6_K: (208,),    # ql[128], qh[64], scales[16], d
}
PLAIN = (T.F32, T.F16, T.BF16)
TYPES = PLAIN + tuple(SCALE_OFFSETS)


def sane_fp16(rng: np.random.Generator, n: int) -> np.ndarray:
    """n fp16 values of random sign, magnitude log-uniform in [1e-3, 1e-1]."""
    magnitude = np.exp(rng.uniform(np.log(1e-3), np.log(1e-1), n))
    sign = np.where(rng.integers(0, 2, n) == 1, -1.0, 1.0)
    return (sign * magnitude).astype(np.float16)


def raw_plain(qtype: T, rng: np.random.Generator, n: int) -> np.ndarray:
    """n elements of F32, F16 or BF16 as raw bytes."""
    if qtype == T.F32:
        bits = rng.integers(0, 2**32, n, dtype=np.uint32)
        bits[:6] = [0x00000000, 0x80000000, 0x7F800000, 0xFF800000, 0x00000001, 0x7FC00000]
    elif qtype == T.BF16:
        bits = rng.integers(0, 2**16, n, dtype=np.uint16)
        bits[:6] = [0x0000, 0x8000, 0x7F80, 0xFF80, 0x0001, 0x7FC0]
    else:
        bits = rng.integers(0, 2**16, n, dtype=np.uint16)
        nan = ((bits & 0x7C00) == 0x7C00) & ((bits & 0x03FF) != 0)
        bits[nan] &= 0xFC00  # NaN -> infinity of the same sign
        bits[:6] = [0x0000, 0x8000, 0x7C00, 0xFC00, 0x0001, 0x7BFF]
    return bits.view(np.uint8)


def raw_blocks(qtype: T, rng: np.random.Generator, n_blocks: int, block_bytes: int) -> np.ndarray:
    """n_blocks random blocks with sane fp16 scales."""
    blocks = rng.integers(0, 256, (n_blocks, block_bytes), dtype=np.uint8)
    for offset in SCALE_OFFSETS[qtype]:
        blocks[:, offset:offset + 2] = sane_fp16(rng, n_blocks).view(np.uint8).reshape(n_blocks, 2)
    return blocks.reshape(-1)


def make(qtype: T) -> tuple[str, dict]:
    block_size, block_bytes = GGML_QUANT_SIZES[qtype]
    rows, cols = (2, 512) if block_size == 256 else (2, 64)
    rng = np.random.default_rng(zlib.crc32(qtype.name.encode()))
    n_blocks = rows * cols // block_size
    if qtype in PLAIN:
        raw = raw_plain(qtype, rng, rows * cols)
    else:
        raw = raw_blocks(qtype, rng, n_blocks, block_bytes)
    assert raw.size == n_blocks * block_bytes
    y = dequantize(raw.reshape(rows, -1), qtype)
    assert y.dtype == np.float32 and y.shape == (rows, cols), (qtype.name, y.dtype, y.shape)
    if qtype == T.F16:
        assert not np.isnan(y).any()
    elif qtype not in PLAIN:
        assert np.isfinite(y).all(), qtype.name
    return f"ggmltype_{qtype.name.lower()}.json", {
        "generator": GENERATOR,
        "type": qtype.name,
        "type_id": int(qtype),
        "shape": [rows, cols],
        "raw_u8": fc.u8_hex(raw),
        "dequantized_f32": fc.f32_hex(y),
    }


def main() -> int:
    fc.check_versions(PINNED)
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    for qtype in TYPES:
        name, obj = make(qtype)
        text = fc.fixture_json(obj)
        (OUT_DIR / name).write_text(text, encoding="utf-8")
        print(f"{name}: {len(text.encode())} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
