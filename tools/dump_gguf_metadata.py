#!/usr/bin/env python3
"""Prints a GGUF file's metadata and the tensors of block 0 plus those outside the blocks, with
gguf-py (no torch): every key except GGUF.* (arrays longer than 16 shown as their type and
length only: tokens, scores, merges), then name / GGML type / shape (gguf order: ne0 = the
input dimension first) of blk.0.* and the non-block tensors, the count of tensors by type,
and, for each per-block tensor, the types it has across blocks (Q4_K_M mixes them).

    /work/venv-fixtures/bin/python tools/dump_gguf_metadata.py models/gemma-3-270m.Q4_K_M.gguf
"""
import collections
import sys

from gguf import GGUFReader
from gguf.constants import GGUFValueType


def main(path):
    r = GGUFReader(path)
    for k, f in r.fields.items():
        if k.startswith("GGUF."):
            continue
        if f.types and f.types[0] == GGUFValueType.ARRAY and len(f.data) > 16:
            print(f"{k}: array[{f.types[-1].name}] len {len(f.data)}")
            continue
        v = f.contents()
        if isinstance(v, str) and len(v) > 200:
            v = v[:200] + f"... ({len(v)} chars)"
        print(f"{k}: {v!r}")
    print(f"--- tensors: {len(r.tensors)}; block 0 and those outside blocks:")
    by_type = collections.Counter()
    across = collections.defaultdict(set)
    for t in r.tensors:
        by_type[t.tensor_type.name] += 1
        if t.name.startswith("blk."):
            across[t.name.split(".", 2)[2]].add(t.tensor_type.name)
            if not t.name.startswith("blk.0."):
                continue
        print(f"{t.name:32s} {t.tensor_type.name:6s} {[int(x) for x in t.shape]}")
    print("tensors by type:", dict(by_type))
    print("per-block tensor types across blocks:", {k: sorted(v) for k, v in across.items()})


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    main(sys.argv[1])
