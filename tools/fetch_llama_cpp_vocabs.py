#!/usr/bin/env python3
"""Fetches llama.cpp's vocab-only GGUFs into models/vocab/ (for the tokenizer tests), from the
llama-cpp-python sdist on PyPI, which vendors llama.cpp's models/ folder.

Usage: fetch_llama_cpp_vocabs.py [--sdist PATH] [NAME ...]   (default: the names in VOCABS)

Pinned: llama-cpp-python 0.3.36 (its tarball's sha256 below), vendoring llama.cpp's
models/ggml-vocab-NAME.gguf with NAME.gguf.inp / .out, the texts and ids that
Tests/QLoRATests/Fixtures/llama-vocab-vectors.json holds (tools/make_vocab_vector_fixtures.py).
`pip download` cannot fetch this sdist without building its metadata (scikit-build-core), so
the tarball comes straight from PyPI's simple index, its sha256 checked. Idempotent: a vocab
already in models/vocab/ is kept, and nothing is downloaded when none is missing.
Only the standard library.
"""
import hashlib
import re
import sys
import tarfile
import tempfile
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VOCAB_DIR = ROOT / "models" / "vocab"
PACKAGE, VERSION = "llama-cpp-python", "0.3.36"
SDIST = f"llama_cpp_python-{VERSION}.tar.gz"
SHA256 = "832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e"
MODELS = f"llama_cpp_python-{VERSION}/vendor/llama.cpp/models/"
VOCABS = ["llama-spm", "phi-3", "qwen2", "llama-bpe", "gpt-2", "starcoder", "refact"]


def download_sdist(directory: Path) -> Path:
    index = urllib.request.urlopen(f"https://pypi.org/simple/{PACKAGE}/").read().decode()
    m = re.search(r'href="(https://[^"#]*/' + re.escape(SDIST) + r')#sha256=([0-9a-f]+)"', index)
    if not m or m.group(2) != SHA256:
        sys.exit(f"fetch_llama_cpp_vocabs: {SDIST} with sha256 {SHA256} is not on PyPI's index")
    path = directory / SDIST
    digest = hashlib.sha256()
    with urllib.request.urlopen(m.group(1)) as r, open(path, "wb") as out:
        while chunk := r.read(1 << 20):
            digest.update(chunk)
            out.write(chunk)
    if digest.hexdigest() != SHA256:
        sys.exit(f"fetch_llama_cpp_vocabs: {SDIST} has sha256 {digest.hexdigest()}, expected {SHA256}")
    return path


def extract(sdist: Path, names: list, suffixes=(".gguf",), into: Path = VOCAB_DIR) -> None:
    into.mkdir(parents=True, exist_ok=True)
    with tarfile.open(sdist) as tar:
        for name in names:
            for suffix in suffixes:
                member = tar.extractfile(MODELS + f"ggml-vocab-{name}{suffix}")
                target = into / f"ggml-vocab-{name}{suffix}"
                partial = target.with_suffix(target.suffix + ".partial")
                partial.write_bytes(member.read())
                partial.rename(target)


def main(argv):
    sdist = None
    if argv[:1] == ["--sdist"]:
        sdist, argv = Path(argv[1]), argv[2:]
    names = argv or VOCABS
    missing = [n for n in names if not (VOCAB_DIR / f"ggml-vocab-{n}.gguf").is_file()]
    if not missing:
        return
    print(f"fetch_llama_cpp_vocabs: {', '.join(missing)} from PyPI ({PACKAGE}=={VERSION})", file=sys.stderr)
    with tempfile.TemporaryDirectory() as tmp:
        extract(sdist or download_sdist(Path(tmp)), missing)


if __name__ == "__main__":
    main(sys.argv[1:])
