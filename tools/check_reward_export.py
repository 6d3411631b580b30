#!/usr/bin/env python3
"""Check that a reward model qlora exports loads in transformers and scores as PEFT does.

  tools/check_reward_export.py [--qlora .build/release/qlora]

Exports the tiny NF4 Llama with the reward adapter PEFT saved from TRL's RewardTrainer
(Tests/QLoRATests/Fixtures/tiny-llama-reward-adapter, written by make_preference_fixtures.py)
with `qlora export`, loads the folder with AutoModelForSequenceClassification (fp32, num_labels
1), scores the fixture's 8 rows one at a time (so no pad-token rule is involved) and compares
with the scores transformers + PeftModel gave on the NF4 base (preference-trl-tiny-llama.json,
roundtrip_scores): they differ only by the merge (dequantized NF4 + B·A in fp32), so a relative
difference below 1e-4 is required. Needs torch and transformers (tools/ venv); not run by CI.
"""
import argparse, json, pathlib, subprocess, sys, tempfile

import torch
from transformers import AutoModelForSequenceClassification

ROOT = pathlib.Path(__file__).resolve().parent.parent
FIX = ROOT / "Tests/QLoRATests/Fixtures"


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--qlora", default=str(ROOT / ".build/release/qlora"))
    args = ap.parse_args()
    fixture = json.loads((FIX / "preference-trl-tiny-llama.json").read_text())
    reward = next(c for c in fixture["cases"] if c["name"] == "reward")
    rows = fixture["batch"]["input_ids"]
    lengths = [sum(m) for m in fixture["batch"]["attention_mask"]]
    with tempfile.TemporaryDirectory() as tmp:
        out = pathlib.Path(tmp) / "rm"
        subprocess.run([args.qlora, "export", "--model", str(FIX / "tiny-llama-bnb-nf4"),
                        "--adapter", str(FIX / "tiny-llama-reward-adapter"), "-o", str(out)], check=True)
        model = AutoModelForSequenceClassification.from_pretrained(out, dtype=torch.float32)
        model.eval()
        worst = 0.0
        with torch.no_grad():
            for i, (ids, n) in enumerate(zip(rows, lengths)):
                score = model(torch.tensor([ids[:n]])).logits[0, 0].item()
                want = reward["roundtrip_scores"][i]
                rel = abs(score - want) / max(1e-6, abs(want))
                worst = max(worst, rel)
                print(f"row {i}: exported {score:+.6f}  PEFT {want:+.6f}  rel {rel:.2e}")
    print(f"{type(model).__name__}: worst relative difference {worst:.2e}")
    return 0 if worst < 1e-4 else 1


if __name__ == "__main__":
    sys.exit(main())
