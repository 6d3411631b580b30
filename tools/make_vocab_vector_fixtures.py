#!/usr/bin/env python3
"""Tokenization vectors for Tests/QLoRATests/Tokenizer/VocabVectorTests.swift.

llama.cpp keeps, beside each vocab-only GGUF models/ggml-vocab-NAME.gguf, NAME.gguf.inp (texts
separated by "\\n__ggml_vocab_test__\\n") and NAME.gguf.out (one line of ids per text), made by
its convert_hf_to_gguf_update.py with the model's own Hugging Face tokenizer,
encode(text, add_special_tokens=False); its tests/test-tokenizer-0 checks llama_tokenize
(add_special false, parse_special false) against them. This script reads them from the
llama-cpp-python sdist (pinned in fetch_llama_cpp_vocabs.py) and writes
Tests/QLoRATests/Fixtures/llama-vocab-vectors.json: {vocab: [{text, ids}]}. The GGUFs stay out
of git: tools/setup.sh fetches them into models/vocab/.

Usage: make_vocab_vector_fixtures.py [--sdist PATH]
Only the standard library. No randomness.
"""
import json
import sys
import tarfile
import tempfile
from pathlib import Path

import fetch_llama_cpp_vocabs as fetch

OUT = fetch.ROOT / "Tests" / "QLoRATests" / "Fixtures" / "llama-vocab-vectors.json"
SEPARATOR = "\n__ggml_vocab_test__\n"


def vectors(tar: tarfile.TarFile, name: str) -> list:
    raw = tar.extractfile(fetch.MODELS + f"ggml-vocab-{name}.gguf.inp").read().decode()
    lines = tar.extractfile(fetch.MODELS + f"ggml-vocab-{name}.gguf.out").read().decode().split("\n")
    texts = raw.split(SEPARATOR)
    if texts[-1] == "":  # the file ends with a separator (test-tokenizer-0 splits the same way)
        texts.pop()
    lines = lines[:len(texts)]
    assert len(texts) == len(lines), (name, len(texts), len(lines))
    return [{"text": t, "ids": [int(x) for x in line.split()]} for t, line in zip(texts, lines)]


def main(argv):
    with tempfile.TemporaryDirectory() as tmp:
        sdist = Path(argv[1]) if argv[:1] == ["--sdist"] else fetch.download_sdist(Path(tmp))
        with tarfile.open(sdist) as tar:
            out = {"generator": {"script": "tools/make_vocab_vector_fixtures.py",
                                 "source": f"{fetch.PACKAGE}=={fetch.VERSION} {fetch.MODELS}ggml-vocab-NAME.gguf.inp/.out"},
                   "vocabs": {name: vectors(tar, name) for name in fetch.VOCABS}}
    # One case a line: the ids stay next to their text in a diff.
    vocabs = ",\n".join(f" {json.dumps(name)}: [\n" + ",\n".join("  " + json.dumps(c, ensure_ascii=False) for c in cases) + "\n ]"
                         for name, cases in out["vocabs"].items())
    OUT.write_text('{\n "generator": ' + json.dumps(out["generator"]) + ',\n "vocabs": {\n' + vocabs + "\n }\n}\n")
    print(f"wrote {OUT}: " + ", ".join(f"{n} {len(v)}" for n, v in out["vocabs"].items()))


if __name__ == "__main__":
    main(sys.argv[1:])
