#!/usr/bin/env python3
"""The demo SFT set data/demo-sft/{train,val}.jsonl, from chatterbot-corpus's English conversations.

Pinned: chatterbot-corpus 1.3.3 (PyPI wheel), python 3.11, PyYAML 6.x (/work/venv-fixtures).

    pip download --no-deps chatterbot-corpus==1.3.3 -d /tmp/cc
    unzip -oq /tmp/cc/chatterbot_corpus-1.3.3-py2.py3-none-any.whl -d /tmp/cc
    /work/venv-fixtures/bin/python tools/make_demo_sft.py /tmp/cc/chatterbot_corpus/data/english

Each conversation [a, b, c, ...] of chatterbot_corpus/data/english/*.yml becomes one row
{"messages": [{"role": "user", "content": a}, {"role": "assistant", "content": b}, ...]}:
- a conversation with a non-string or blank entry is skipped;
- a trailing user turn with no answer is dropped (it would train nothing), and a conversation
  left without an assistant turn is skipped;
- an exact duplicate of an earlier row is skipped.
Files are read in sorted name order, conversations in file order. 100 rows drawn with
random.Random(SEED) go to val.jsonl, the rest (in order) to train.jsonl.
"""
import json
import pathlib
import random
import sys

import yaml

SEED = 20240611
VAL_ROWS = 100
OUT = pathlib.Path(__file__).resolve().parent.parent / "data" / "demo-sft"


def rows(english: pathlib.Path):
    seen = set()
    skipped = duplicates = 0
    for path in sorted(english.glob("*.yml")):
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
        for conversation in doc.get("conversations") or []:
            if not isinstance(conversation, list) or not all(isinstance(e, str) and e.strip() for e in conversation):
                skipped += 1
                continue
            turns = conversation[: len(conversation) // 2 * 2]
            if not turns:
                skipped += 1
                continue
            messages = [{"role": "user" if i % 2 == 0 else "assistant", "content": t} for i, t in enumerate(turns)]
            line = json.dumps({"messages": messages}, ensure_ascii=False)
            if line in seen:
                duplicates += 1
                continue
            seen.add(line)
            yield line
    print(f"skipped {skipped} conversations (non-string, blank or unanswered) and {duplicates} duplicates", file=sys.stderr)


def main():
    english = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else "/tmp/cc/chatterbot_corpus/data/english")
    lines = list(rows(english))
    val = set(random.Random(SEED).sample(range(len(lines)), VAL_ROWS))
    OUT.mkdir(parents=True, exist_ok=True)
    with open(OUT / "train.jsonl", "w", encoding="utf-8") as f:
        f.writelines(l + "\n" for i, l in enumerate(lines) if i not in val)
    with open(OUT / "val.jsonl", "w", encoding="utf-8") as f:
        f.writelines(l + "\n" for i, l in enumerate(lines) if i in val)
    print(f"{len(lines) - VAL_ROWS} train rows, {VAL_ROWS} val rows in {OUT}", file=sys.stderr)


if __name__ == "__main__":
    main()
