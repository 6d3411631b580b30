#!/usr/bin/env python3
"""Writes the seed corpus of the reader fuzzers (Fuzz/corpus/{gguf,safetensors}/seed-*):
small valid files that reach every value type, tensor type and header field, for libFuzzer
to mutate. Standard library only; deterministic. Run from the repo root:
    python3 tools/make_fuzz_seeds.py
"""
import json
import random
import struct
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
rng = random.Random(20261124)


def gguf_string(s: str) -> bytes:
    b = s.encode()
    return struct.pack("<Q", len(b)) + b


def gguf_value(t: int, v) -> bytes:
    fmt = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
    if t == 8:
        return gguf_string(v)
    if t == 9:
        et, items = v
        return struct.pack("<IQ", et, len(items)) + b"".join(gguf_value(et, x) for x in items)
    return struct.pack(fmt[t], v)


def gguf(metadata, tensors, alignment=32) -> bytes:
    """tensors: (name, ne, ggml type id, bytes per tensor)."""
    out = b"GGUF" + struct.pack("<IQQ", 3, len(tensors), len(metadata))
    for key, t, v in metadata:
        out += gguf_string(key) + struct.pack("<I", t) + gguf_value(t, v)
    offset, blobs = 0, []
    for name, ne, ty, nbytes in tensors:
        out += gguf_string(name) + struct.pack("<I", len(ne)) + b"".join(struct.pack("<Q", n) for n in ne)
        out += struct.pack("<IQ", ty, offset)
        blob = bytes(rng.randrange(256) for _ in range(nbytes))
        blobs.append(blob + b"\0" * (-len(blob) % alignment))
        offset += len(blobs[-1])
    out += b"\0" * (-len(out) % alignment)
    return out + b"".join(blobs)


def safetensors(tensors, metadata=None) -> bytes:
    header, data = {}, b""
    if metadata:
        header["__metadata__"] = metadata
    for name, dtype, shape, size in tensors:
        n = size
        for d in shape:
            n *= d
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [len(data), len(data) + n]}
        data += bytes(rng.randrange(256) for _ in range(n))
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-(len(h) + 8) % 8)
    return struct.pack("<Q", len(h)) + h + data


def main():
    g = ROOT / "Fuzz" / "corpus" / "gguf"
    s = ROOT / "Fuzz" / "corpus" / "safetensors"
    g.mkdir(parents=True, exist_ok=True)
    s.mkdir(parents=True, exist_ok=True)
    llama = [
        ("general.architecture", 8, "llama"), ("llama.block_count", 4, 1), ("llama.embedding_length", 4, 32),
        ("llama.feed_forward_length", 4, 64), ("llama.attention.head_count", 4, 4), ("llama.attention.head_count_kv", 4, 2),
        ("llama.attention.layer_norm_rms_epsilon", 6, 1e-5), ("llama.rope.freq_base", 6, 10000.0), ("llama.context_length", 4, 128),
        ("tokenizer.ggml.model", 8, "gpt2"), ("tokenizer.ggml.pre", 8, "smollm"),
        ("tokenizer.ggml.tokens", 9, (8, ["<s>", "</s>", "a", "b", "ab", "\u0120c"])),
        ("tokenizer.ggml.token_type", 9, (5, [3, 3, 1, 1, 1, 1])), ("tokenizer.ggml.merges", 9, (8, ["a b"])),
        ("tokenizer.ggml.bos_token_id", 4, 0), ("tokenizer.ggml.eos_token_id", 4, 1), ("tokenizer.chat_template", 8, "{{ x }}"),
    ]
    (g / "seed-llama").write_bytes(gguf(llama, [
        ("token_embd.weight", [32, 6], 8, 6 * 34), ("blk.0.attn_norm.weight", [32], 0, 128),
        ("blk.0.attn_q.weight", [32, 32], 3, 32 * 20), ("blk.0.ffn_up.weight", [256, 1], 12, 144),
        ("blk.0.ffn_down.weight", [256, 1], 14, 210), ("output_norm.weight", [32], 1, 64),
    ]))
    every_type = [("u8", 0, 7), ("i8", 1, -7), ("u16", 2, 700), ("i16", 3, -700), ("u32", 4, 70000), ("i32", 5, -70000),
                  ("f32", 6, 0.5), ("b", 7, True), ("s", 8, "é"), ("u64", 10, 1 << 40), ("i64", 11, -(1 << 40)), ("f64", 12, 0.25),
                  ("nested", 9, (9, [(4, [1, 2]), (4, [3])])), ("general.alignment", 4, 64)]
    (g / "seed-types").write_bytes(gguf(every_type, [
        ("a", [32, 2], 2, 2 * 18), ("b", [32], 6, 22), ("c", [32], 7, 24), ("d", [256], 10, 84), ("e", [256], 11, 110),
        ("f", [256], 13, 176), ("g", [4], 30, 8),
    ], alignment=64))
    (s / "seed-floats").write_bytes(safetensors([
        ("a", "F32", [2, 3], 4), ("b", "F16", [4], 2), ("c", "BF16", [2, 2], 2), ("d", "F64", [1], 8),
    ], {"format": "pt"}))
    (s / "seed-bnb").write_bytes(safetensors([
        ("w", "U8", [32, 1], 1), ("w.absmax", "F32", [1], 4), ("w.quant_map", "F32", [16], 4), ("i", "I64", [2], 8),
        ("k", "BOOL", [3], 1), ("e", "I8", [0], 1),
    ]))


if __name__ == "__main__":
    main()
