#!/usr/bin/env python3
"""Generate preference-training reference fixtures for qlora from TRL's own loss code (DPO and
variants, SimPO, ORPO, reward model) on the tiny bitsandbytes NF4 models with a PEFT LoRA.

Writes into Tests/QLoRATests/Fixtures/ (each deleted and rewritten on every run):

  preference-trl-tiny-llama.json   tiny-llama-bnb-nf4 (LlamaForCausalLM / LlamaForSequenceClassification)
  preference-trl-tiny-qwen2.json   tiny-qwen2-bnb-nf4 (Qwen2, tied lm_head, q/k/v biases)
  tiny-llama-reward-adapter/       the reward case's adapter (LoRA + score head) as
                                   PeftModel.save_pretrained writes it (adapter_config.json,
                                   adapter_model.safetensors; PEFT's README.md deleted)

Models: the committed NF4 folders (vocab 256, hidden 64, 2 layers, 4 heads / 2 KV heads,
head_dim 16, intermediate 320), loaded as make_family_fixtures.py does: transformers on the CPU,
dtype float32, eager attention, bitsandbytes' CPU bf16 path off (module.support_avx512bf16_for_cpu
= False), so every base linear is dequantize_4bit in float32 + F.linear.  Each case loads the
folder afresh and builds its own trainer.  The reward case loads the same folder with
AutoModelForSequenceClassification(num_labels=1): transformers reports lm_head.weight unexpected
and score.weight missing (score is a plain float32 nn.Linear(64, 1, bias=False)); score.weight is
then set to N(0, SCORE_STD) from torch.Generator(SEED + 2) before the trainer wraps the model.

Tokenizer: the folders have none, and every TRL trainer wants one, so the script builds a
PreTrainedTokenizerFast over a tokenizers WordLevel model: "<pad>" = 0, "<s>" = 1, "</s>" = 2,
"t3".."t255" = 3..255, WhitespaceSplit pre-tokenizer, no post-processor (it adds no BOS/EOS
itself); pad_token "<pad>", bos_token "<s>", eos_token "</s>".  It is used only to construct
the trainers (and to show, under "trl_own_tokenization", what each trainer's own dataset
preprocessing makes of pair 0 written as text "t5 t17 ..."): the numbers below never go through
it, the batches are built from the token ids (see "Batches").

Data ("pairs"): 4 preference pairs from torch.Generator(SEED), in this draw order per pair:
prompt length in 3..6, prompt ids, chosen length in 2..7, chosen ids, rejected length in 2..7,
rejected ids; ids in 3..255 (never 0 = pad, 1 = bos, 2 = eos of the models' configs), asserted:
chosen != rejected, lengths differ so right padding is exercised.  margins (reward case only)
are fixed: MARGINS.

Conventions (the qlora side's; TRL matches them on these batches, see "Where TRL differs"):
  * each side's sequence = prompt ids + completion ids, nothing added;
  * policy log-prob of a side = sum over completion tokens t of log_softmax(logits[t-1])[id_t]
    (prompt tokens not scored); "average" log-prob = that sum / number of completion tokens;
  * one micro-batch: rows 0..3 = prompt+chosen of pairs 0..3, rows 4..7 = prompt+rejected,
    right-padded with id 0, attention_mask 0 on padding, labels ignored there ("batch");
  * per micro-batch losses are means over the 4 pairs.

LoRA: LoraConfig(r=4, lora_alpha=8, lora_dropout=0, bias="none", target_modules=q/k/v/o_proj,
gate/up/down_proj; task_type CAUSAL_LM, or SEQ_CLS for the reward case, where PEFT adds
modules_to_save = ["classifier", "score"]), passed to each trainer as peft_config (so the
trainer runs get_peft_model itself, and DPOTrainer's reference is the base model with the
adapter disabled: ref_model=None + PEFT).  After the trainer is built, every lora_A ~ N(0, 0.1)
and lora_B ~ N(0, 0.02) (non-zero, so the policy differs from the reference) are drawn from
torch.Generator(SEED + 1) in sorted parameter-name order (fixture_common.seeded_lora's order) and
written as float32; the same values in every case and both models ("lora_init").  This also undoes
a cast: DPOTrainer and RewardTrainer (1.16) convert every trainable parameter of a 4-bit model to
bfloat16 ("QLoRA paper" recommendation); the fixture keeps LoRA A/B and score in float32, as
qlora does (CPOTrainer / ORPOTrainer keep float32 with bf16=False).  The reward case's trainable
score copy (score.modules_to_save.default) is reset to the float32 score init too.

Trainer arguments common to all: output_dir a temporary folder, report_to none, use_cpu,
bf16 = fp16 = False, gradient_checkpointing False, disable_dropout True (TRL's default), seed SEED.
The models' attention_dropout is 0 and lora_dropout 0, so there is no dropout anywhere: every
case is computed with model.train() (as in training) and recomputed with model.eval() under
no_grad, and the losses (and DPO metrics) are asserted identical bit for bit.  The top-level
"reference" block records the eval-mode per-pair log-probs.

Batches (token ids, no tokenizer):
  DPO    DPOTrainer.data_collator (trl.trainer.dpo_trainer.DataCollatorForPreference) on
         [{"prompt_ids", "chosen_ids", "rejected_ids"}] -> input_ids, attention_mask,
         completion_mask, exactly "batch" (asserted).
  CPO, ORPO  their data_collator (trl.experimental.utils.DPODataCollatorWithPadding) on rows in
         tokenize_row's output layout (prompt_*, chosen_input_ids = prompt + chosen,
         chosen_labels = -100 on the prompt, rejected_*); concatenated_inputs gives the same
         input_ids / attention_mask as "batch" and labels != -100 exactly on completion_mask
         (asserted).
  Reward RewardTrainer.data_collator (trl.trainer.reward_trainer.DataCollatorForPreference) on
         [{"chosen_ids": prompt + chosen, "rejected_ids": prompt + rejected, "margin"}]: the same
         input_ids / attention_mask (asserted).

Cases ("cases", each: name, trainer, config, trl_calls, loss, loss_f32, metrics, the per-pair
numbers listed, params, grad_l2, grad_sum):
  dpo_sigmoid        trl.DPOTrainer, DPOConfig(loss_type=["sigmoid"], beta=0.1)
  dpo_sigmoid_ls0.1  the same with label_smoothing=0.1
  dpo_ipo            loss_type ["ipo"], beta 0.1
  dpo_hinge          loss_type ["hinge"], beta 0.1
  dpo_robust         loss_type ["robust"], beta 0.1, label_smoothing 0.1
    numbers: loss = DPOTrainer.compute_loss(model, batch) (-> _compute_loss); metrics = the
    trainer's self._metrics["train"] after that one call (TRL's names: rewards/chosen,
    rewards/rejected, rewards/accuracies, rewards/margins, logps/chosen, logps/rejected: batch
    means; also entropy, logits/chosen, logits/rejected, mean_token_accuracy, num_tokens);
    policy_logps_chosen/rejected [4] = row sums of the FusedCausalLMOutput.log_probs of
    _compute_loss's own policy forward (captured by a forward hook: exactly what _compute_loss
    sums), ref_logps_chosen/rejected [4] = DPOTrainer.compute_ref_log_probs(model, batch)
    (adapter disabled; asserted equal to the hook's capture of _compute_loss's reference forward).
    The log-probs come from TRL's fused LM head (trl.trainer.utils.add_fused_lm_head, chunked
    log-softmax of lm_head(hidden) at positions whose shifted label is not -100).
  simpo              trl.experimental.cpo.CPOTrainer (CPOTrainer left trl.trainer in 1.x; it is
                     trl.experimental.cpo), CPOConfig(loss_type="simpo", beta=2.0, simpo_gamma=0.5,
                     cpo_alpha=0.0, label_smoothing=0, alpha=0)
    loss, metrics = CPOTrainer.compute_loss(model, batch, return_outputs=True)
    (-> get_batch_loss_metrics -> concatenated_forward + cpo_loss); metrics are TRL's dict
    (rewards/* = beta * average log-prob, logps/* = average log-probs, logits/*, nll_loss = 0);
    policy_avg_logps_chosen/rejected [4] from CPOTrainer.concatenated_forward (no_grad, asserted
    to reproduce the metrics' means).  loss = mean(-logsigmoid(beta*(avg_c - avg_r) - gamma)).
  orpo               trl.experimental.orpo.ORPOTrainer, ORPOConfig(beta=0.1)
    loss, metrics = ORPOTrainer.compute_loss(model, batch, return_outputs=True)
    (-> get_batch_loss_metrics -> concatenated_forward + odds_ratio_loss); nll_loss,
    log_odds_ratio, log_odds_chosen are TRL's metrics (log_odds_ratio = mean over pairs of
    logsigmoid(log_odds), log_odds_chosen = mean of log_odds, both without beta);
    policy_avg_logps_chosen/rejected [4] from ORPOTrainer.concatenated_forward;
    nll_tokens = the number of tokens the NLL averages over.
    loss = nll_loss - beta * log_odds_ratio.
  reward             trl.RewardTrainer, RewardConfig(center_rewards_coefficient=0.01), LoRA
                     task_type SEQ_CLS, the pairs' margins in the batch
    loss, outputs = RewardTrainer.compute_loss(model, batch, return_outputs=True);
    rewards_chosen/rejected [4] = outputs.logits; metrics = self._metrics["train"] (accuracy,
    margin, min/mean/max_reward, num_tokens); accuracy also on its own.
    loss = mean(-logsigmoid(r_c - r_r - margin)) + 0.01 * mean((r_c + r_r)^2).
    The sequence-classification head reads the last real token: transformers
    (modeling_layers.GenericForSequenceClassification) takes, per row, the RIGHTMOST position whose
    id != config.pad_token_id; RewardTrainer sets config.pad_token_id = tokenizer.pad_token_id = 0,
    and no sequence contains id 0, so that is position len - 1 of each right-padded row.
    score_init: the seeded score.weight [1, 64]; params also holds score.weight's gradient
    (key base_model.model.score.weight, the name PEFT saves the modules_to_save copy under).
    llama only: "adapter" (the saved tiny-llama-reward-adapter/: tensor names, shapes and dtypes
    read back from adapter_model.safetensors, and adapter_config.json as written, with two
    rewrites made by this script for reproducibility: base_model_name_or_path = "tiny-llama-bnb-nf4"
    instead of the absolute path, and the set-ordered lists target_modules / modules_to_save
    sorted); "roundtrip_scores" [8] (rows of "batch") = a fresh
    AutoModelForSequenceClassification.from_pretrained(nf4 folder, num_labels=1, pad_token_id=0)
    + PeftModel.from_pretrained(that folder), eval mode (asserted equal to the trainer's rewards
    within 1e-6).

Gradients: after the train-mode loss, loss.backward(); "params" {adapter_model.safetensors key:
{"shape", "grad_f32"}} (keys: PEFT names with ".default" / ".modules_to_save.default" dropped);
the initial values of the LoRA tensors are the top-level "lora_init" {key: {"shape",
"value_f32"}} (the same in every case).  To keep all outputs under 1 MB, the full LoRA gradients
(28 tensors, 12,800 floats, ~100 KB of hex per case) are written only for the cases in the
top-level "full_grads" (llama: dpo_sigmoid, simpo, orpo, reward; qwen2: dpo_sigmoid); in the other
cases "params" is empty, or for the reward case holds score.weight only (its full gradient is
always written).  Every case has grad_l2 and grad_sum {key: L2 norm / sum of the float32
gradient, computed in float64} for every trainable tensor (28 LoRA, + score.weight for reward).
dpo_sigmoid_ls0.1's gradients are asserted identical to dpo_sigmoid's.

Where TRL 1.16 differs from qlora's conventions, or where it is worth saying:
  * BOS/EOS: the numbers here bypass TRL's dataset preprocessing.  On text data TRL would
    append EOS to both completions (DPOTrainer._prepare_dataset and RewardTrainer._prepare_dataset:
    add_eos for non-conversational data), and CPOTrainer / ORPOTrainer.tokenize_row also prepend
    tokenizer.bos_token_id to the prompt (add_bos_token_if_needed) and append eos_token_id
    (add_eos_token_if_needed).  DPOTrainer / RewardTrainer add a BOS only if the tokenizer's own
    post-processor does (a Llama tokenizer does; the WordLevel one here does not).
    "trl_own_tokenization" shows each trainer's output for pair 0.
  * dpo "sigmoid" ignores label_smoothing in 1.16 (it is used only by "robust" and "exo_pair"):
    dpo_sigmoid_ls0.1 = dpo_sigmoid exactly (asserted); the conservative-DPO formula
    -(1-e) logsigmoid(b d) - e logsigmoid(-b d) is NOT what TRL computes (asserted different).
  * dpo "ipo" IS length-normalised in 1.16: ((logratio_c / n_c) - (logratio_r / n_r) -
    1/(2 beta))^2, n = completion tokens of that side; rewards/* and logps/* metrics stay sums.
  * dpo "robust": ((1-e)(-logsigmoid(b d)) - e(-logsigmoid(-b d))) / (1 - 2e).
  * SimPO's and ORPO's log-probs are per-token averages over completion tokens (get_batch_logps
    with average_log_prob=True), and their rewards/* metrics are beta * those averages.
  * ORPO's NLL term (nll_loss) is nn.CrossEntropyLoss (mean) over the CHOSEN rows at every
    position whose next token is real (attention_mask == 1): prompt tokens INCLUDED (all but the
    first token of each sequence), one mean over all those tokens of the 4 chosen rows together
    (not per sequence); asserted against both a float64 recomputation and the completion-only
    alternative (which differs).
  * Reward: the score of a sequence is the head at its last real token (see above); TRL's
    reward sequences are prompt + completion (+ EOS when TRL tokenizes).
  * Reference model: "adapter disabled" is DPOTrainer's reference only when the trainer itself
    creates the adapter (peft_config given, as here).  Given a model that is ALREADY a PeftModel
    and ref_model=None, DPOTrainer 1.16 adds a frozen copy of its adapter named "ref" and uses that
    as the reference (so policy == reference at step 0).
  * QLoRA dtype: DPOTrainer / RewardTrainer cast trainable parameters of a 4-bit model to
    bfloat16 (undone here, see LoRA).

Self-check on every run: a plain forward (model(input_ids, attention_mask).logits, float32, and
the same with model.disable_adapter() for the reference) cast to float64 gives per-pair log-prob
sums and averages, and from them every DPO variant's loss, SimPO's loss, ORPO's NLL, log-odds and
loss; the reward case's scores are recomputed in float64 from the backbone's last hidden state at
position len - 1 and the score weight, and its loss from those.  Each TRL number is asserted to
agree within 1e-5 * max(1, |x|).  The DPO per-pair sums divided by the completion lengths are
also asserted equal to CPOTrainer's per-pair averages within the same tolerance.

JSON layout (both files): generator, versions, model (NF4 folder), architecture,
reward_architecture, encoding, note, vocab_size, special_ids {pad, bos, eos}, pairs [{prompt,
chosen, rejected, margin}], batch {rows, input_ids [8][T], attention_mask, completion_mask},
completion_lengths {chosen [4], rejected [4]}, lora_config, scaling, lora_init_note, lora_init
{key: {shape, value_f32}}, reference {mode, trl_calls, policy_logps_chosen, policy_logps_rejected,
ref_logps_chosen, ref_logps_rejected, dpo_sigmoid_loss}, full_grads [case names], cases [...],
trl_own_tokenization.  Every case: name, trainer, config, trl_calls, loss, loss_f32, metrics,
then its own numbers, then params, grad_l2, grad_sum:
  dpo_*   policy_logps_chosen, policy_logps_rejected, ref_logps_chosen, ref_logps_rejected [4]
  simpo   policy_avg_logps_chosen, policy_avg_logps_rejected [4]
  orpo    nll_loss, nll_tokens, nll_note, log_odds_ratio, log_odds_chosen,
          policy_avg_logps_chosen, policy_avg_logps_rejected
  reward  margins (after config), rewards_chosen, rewards_rejected, accuracy, last_token_rule,
          score_init {key, shape, value_f32}; llama also adapter {folder, written_by,
          config_rewrites, files, tensors {name: {shape, dtype}}, adapter_config}, roundtrip_scores
          [8], roundtrip_note (after grad_sum)
JSON numbers: "loss" and every listed float are float32 values widened to float64 (exact);
grad_l2 / grad_sum are float64; "*_f32" are float32 as lowercase hex of little-endian bytes,
row-major.

Environment used for the committed fixtures (CPU only, x86_64, Python 3.11):

    python3 -m venv /work/venv-fixtures
    /work/venv-fixtures/bin/pip install torch==2.15.0 bitsandbytes==0.50.2 gguf==0.19.0 \\
        numpy==2.4.6 transformers==5.23.0 safetensors==0.8.0 accelerate==1.15.0 peft==0.21.2 \\
        trl==1.16.0      # brings datasets 5.2.0; tokenizers 0.23.3 comes with transformers
    /work/venv-fixtures/bin/python tools/make_preference_fixtures.py      # from the repo root

Determinism: one torch thread, deterministic algorithms, explicit generators, eager attention;
the script builds everything twice (fresh loads and trainers) and asserts the JSON texts and the
adapter files are identical before writing.
"""

import contextlib
import json
import logging
import math
import shutil
import sys
import tempfile
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F

import fixture_common as fc

PINS = {
    "torch": "2.15.0",
    "bitsandbytes": "0.50.2",
    "transformers": "5.23.0",
    "peft": "0.21.2",
    "trl": "1.16.0",
    "accelerate": "1.15.0",
    "datasets": "5.2.0",
    "tokenizers": "0.23.3",
    "safetensors": "0.8.0",
    "numpy": "2.4.6",
}

FIX = fc.QLORA_FIXTURES
SEED = 20251206  # pairs; SEED + 1 LoRA values; SEED + 2 score head
N_PAIRS = 4
PAD, BOS, EOS = 0, 1, 2
FIRST_ID = 3  # ids drawn in FIRST_ID..VOCAB-1
MARGINS = [0.5, -0.25, 1.0, -0.75]
A_STD, B_STD, SCORE_STD = 0.1, 0.02, 0.1
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
TOL = 1e-5

MODELS = {
    "llama": dict(folder="tiny-llama-bnb-nf4", out="preference-trl-tiny-llama.json",
                  full_grads={"dpo_sigmoid", "simpo", "orpo", "reward"},
                  adapter_dir="tiny-llama-reward-adapter"),
    "qwen2": dict(folder="tiny-qwen2-bnb-nf4", out="preference-trl-tiny-qwen2.json",
                  full_grads={"dpo_sigmoid"}, adapter_dir=None),
}

DPO_CASES = [
    ("dpo_sigmoid", dict(loss_type=["sigmoid"], beta=0.1, label_smoothing=0.0)),
    ("dpo_sigmoid_ls0.1", dict(loss_type=["sigmoid"], beta=0.1, label_smoothing=0.1)),
    ("dpo_ipo", dict(loss_type=["ipo"], beta=0.1, label_smoothing=0.0)),
    ("dpo_hinge", dict(loss_type=["hinge"], beta=0.1, label_smoothing=0.0)),
    ("dpo_robust", dict(loss_type=["robust"], beta=0.1, label_smoothing=0.1)),
]
SIMPO = dict(loss_type="simpo", beta=2.0, simpo_gamma=0.5, cpo_alpha=0.0, label_smoothing=0.0, alpha=0.0)
ORPO = dict(beta=0.1)
REWARD = dict(center_rewards_coefficient=0.01)

NOTE = (
    "Preference losses from TRL 1.16's own code on a PEFT LoRA (r 4, alpha 8, dropout 0, all 7 "
    "linears) over the bitsandbytes NF4 model (float32, eager attention, bnb's CPU bf16 path off), "
    "LoRA A/B (and the reward score head) float32 with seeded non-zero values (lora_init). "
    "Batch: rows 0..3 prompt+chosen, rows 4..7 prompt+rejected, right-padded with 0; no BOS/EOS "
    "added. DPO: DPOTrainer.compute_loss + _metrics, per-pair logps = row sums of the fused LM "
    "head's log_probs of that call (hook), reference = compute_ref_log_probs (adapter disabled); "
    "sigmoid ignores label_smoothing; ipo is length-normalised. SimPO: experimental CPOTrainer "
    "(loss_type simpo, cpo_alpha 0), average logps. ORPO: experimental ORPOTrainer; nll_loss is "
    "the mean cross-entropy over all real next tokens of the chosen rows, prompt included; logps "
    "are averages. Reward: RewardTrainer.compute_loss with margins and center_rewards_coefficient "
    "0.01, SEQ_CLS LoRA + score in modules_to_save, score read at the last real token "
    "(config.pad_token_id 0, absent from the data). Gradients: loss.backward() in train mode "
    "(= eval mode: no dropout anywhere); params keys are adapter_model.safetensors names. "
    "See tools/make_preference_fixtures.py for every detail."
)


# ---------------------------------------------------------------- data
def make_pairs():
    gen = torch.Generator().manual_seed(SEED)

    def length(lo, hi):
        return int(torch.randint(lo, hi + 1, (1,), generator=gen))

    def ids(n):
        return torch.randint(FIRST_ID, 256, (n,), generator=gen).tolist()

    pairs = []
    for i in range(N_PAIRS):
        prompt = ids(length(3, 6))
        chosen = ids(length(2, 7))
        rejected = ids(length(2, 7))
        pairs.append({"prompt": prompt, "chosen": chosen, "rejected": rejected, "margin": MARGINS[i]})
    for p in pairs:
        assert p["chosen"] != p["rejected"], p
    lens = [len(p["prompt"]) + len(p[s]) for s in ("chosen", "rejected") for p in pairs]
    assert len(set(lens)) >= 3, lens  # several rows are right-padded
    assert any(len(p["chosen"]) != len(p["rejected"]) for p in pairs), pairs
    return pairs


def as_text(ids):
    return " ".join(f"t{i}" for i in ids)


def text_dataset(pairs, margin=False):
    from datasets import Dataset

    rows = []
    for p in pairs:
        row = {"prompt": as_text(p["prompt"]), "chosen": " " + as_text(p["chosen"]),
               "rejected": " " + as_text(p["rejected"])}
        if margin:
            row["margin"] = p["margin"]
        rows.append(row)
    return Dataset.from_list(rows)


def make_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": PAD, "<s>": BOS, "</s>": EOS, **{f"t{i}": i for i in range(FIRST_ID, 256)}}
    tk = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<pad>"))
    tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<pad>", bos_token="<s>", eos_token="</s>")
    assert tok(as_text([3, 100, 255]))["input_ids"] == [3, 100, 255]
    assert (tok.pad_token_id, tok.bos_token_id, tok.eos_token_id) == (PAD, BOS, EOS)
    return tok


def dpo_examples(pairs):
    return [{"prompt_ids": p["prompt"], "chosen_ids": p["chosen"], "rejected_ids": p["rejected"]} for p in pairs]


def cpo_features(pairs):
    rows = []
    for p in pairs:
        row = {"prompt_input_ids": p["prompt"], "prompt_attention_mask": [1] * len(p["prompt"])}
        for side in ("chosen", "rejected"):
            row[f"{side}_input_ids"] = p["prompt"] + p[side]
            row[f"{side}_attention_mask"] = [1] * (len(p["prompt"]) + len(p[side]))
            row[f"{side}_labels"] = [-100] * len(p["prompt"]) + p[side]
        rows.append(row)
    return rows


def reward_features(pairs):
    return [{"chosen_ids": p["prompt"] + p["chosen"], "rejected_ids": p["prompt"] + p["rejected"],
             "margin": p["margin"]} for p in pairs]


# ---------------------------------------------------------------- models, trainers
def load_nf4(folder, seq_cls=False):
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    cls = AutoModelForSequenceClassification if seq_cls else AutoModelForCausalLM
    kwargs = dict(num_labels=1) if seq_cls else {}
    model = cls.from_pretrained(FIX / folder, device_map="cpu", dtype=torch.float32,
                                attn_implementation="eager", **kwargs)
    linears = fc.bnb_linears(model)
    assert len(linears) == fc.TINY_NF4_LINEARS, linears
    fc.use_fp32_dequant_path(linears)
    return model, linears


def lora_config(task_type):
    from peft import LoraConfig

    return LoraConfig(task_type=task_type, r=4, lora_alpha=8, lora_dropout=0.0, bias="none",
                      target_modules=TARGETS, use_rslora=False, layers_to_transform=None)


def common_args(out_dir):
    return dict(output_dir=out_dir, report_to="none", use_cpu=True, bf16=False, fp16=False,
                gradient_checkpointing=False, disable_dropout=True, seed=SEED)


def saved_key(name: str) -> str:
    """PEFT's in-memory parameter name -> its adapter_model.safetensors key."""
    return name.replace(".modules_to_save.default.", ".").replace(".default.", ".")


def seed_trainables(pm, score_init=None):
    """lora_A ~ N(0, A_STD), lora_B ~ N(0, B_STD) from Generator(SEED + 1) in sorted name order,
    as float32 (replacing TRL's bf16 cast); the trainable score copy := score_init (float32).
    Returns {saved key: initial value} of the LoRA tensors."""
    gen = torch.Generator().manual_seed(SEED + 1)
    init = {}
    with torch.no_grad():
        for name, p in sorted(pm.named_parameters()):
            if ".lora_A." in name:
                p.data = A_STD * torch.randn(p.shape, generator=gen, dtype=torch.float32)
            elif ".lora_B." in name:
                p.data = B_STD * torch.randn(p.shape, generator=gen, dtype=torch.float32)
            elif ".modules_to_save.default." in name:
                assert score_init is not None and name.endswith("score.modules_to_save.default.weight"), name
                p.data = score_init.clone()
            else:
                assert not p.requires_grad, name
                continue
            assert p.requires_grad, name
            if ".lora_" in name:
                init[saved_key(name)] = p.data.clone()
    for name, p in pm.named_parameters():
        assert p.dtype == torch.float32 or not p.is_floating_point(), (name, p.dtype)
    return init


def trainables(pm):
    return {saved_key(n): p for n, p in sorted(pm.named_parameters()) if p.requires_grad}


@contextlib.contextmanager
def captured_log_probs(module):
    """Collects outputs.log_probs of every forward of module (TRL's FusedCausalLMOutput)."""
    got = []
    handle = module.register_forward_hook(lambda m, args, out: got.append(out.log_probs.detach().clone()))
    try:
        yield got
    finally:
        handle.remove()


def f32(x) -> float:
    """A float32 scalar tensor (or python float already from one) widened to float64."""
    return float(x.detach().to(torch.float32).item()) if torch.is_tensor(x) else float(x)


def f32_list(t):
    return [float(v) for v in t.detach().to(torch.float32).reshape(-1).tolist()]


def close(a, b, what):
    a, b = float(a), float(b)
    assert abs(a - b) <= TOL * max(1.0, abs(b)), (what, a, b, a - b)
    return abs(a - b)


def close_all(xs, ys, what):
    xs, ys = list(map(float, xs)), list(map(float, ys))
    assert len(xs) == len(ys), what
    return max(close(x, y, f"{what}[{i}]") for i, (x, y) in enumerate(zip(xs, ys)))


# ---------------------------------------------------------------- float64 self-check helpers
def plain_logps64(pm, batch, completion_mask, adapter=True):
    """(sum, count) per row in float64 from the logits of a plain forward."""
    ctx = contextlib.nullcontext() if adapter else pm.disable_adapter()
    with torch.no_grad(), ctx:
        logits = pm(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False).logits
    lp = torch.log_softmax(logits.double()[:, :-1], dim=-1)
    tok = lp.gather(-1, batch["input_ids"][:, 1:, None])[..., 0]
    m = completion_mask[:, 1:].double()
    return (tok * m).sum(1), m.sum(1), logits.double()


def halves(t):
    return t[:N_PAIRS], t[N_PAIRS:]


# ---------------------------------------------------------------- grads
def grad_record(case, params, full: bool, always=()):
    case["params"] = {k: {"shape": list(p.shape), "grad_f32": fc.f32_hex(p.grad)}
                      for k, p in params.items() if full or k in always}
    case["grad_l2"] = {k: float(p.grad.double().norm()) for k, p in params.items()}
    case["grad_sum"] = {k: float(p.grad.double().sum()) for k, p in params.items()}
    for k, p in params.items():
        assert p.grad is not None and p.grad.abs().max().item() > 0, f"zero gradient: {case['name']} {k}"


# ---------------------------------------------------------------- cases
def run_dpo(fam, spec, name, cfg, pairs, batch_ref, state):
    from trl import DPOConfig, DPOTrainer

    model, linears = load_nf4(spec["folder"])
    with tempfile.TemporaryDirectory() as d:
        tr = DPOTrainer(model=model, args=DPOConfig(**common_args(d), max_length=None, **cfg),
                        train_dataset=text_dataset(pairs), processing_class=make_tokenizer(),
                        peft_config=lora_config("CAUSAL_LM"))
        pm = tr.model
        init = seed_trainables(pm)
        state.setdefault("lora_config", fc.lora_config_record(pm))
        state.setdefault("scaling", fc.lora_scaling(pm))
        batch = tr.data_collator(dpo_examples(pairs))
        for k in ("input_ids", "attention_mask", "completion_mask"):
            assert torch.equal(batch[k], batch_ref[k]), k

        pm.train()
        with captured_log_probs(pm) as got:
            loss = tr.compute_loss(pm, batch)
        assert len(got) == 2, len(got)  # policy forward, then the reference forward
        pol_c, pol_r = halves(got[0].sum(dim=1))
        ref_c, ref_r = tr.compute_ref_log_probs(pm, batch)
        assert torch.equal(torch.cat([ref_c, ref_r]), got[1].sum(dim=1)), "reference capture"
        metrics = {k: v[0] for k, v in tr._metrics["train"].items()}
        for k, v in tr._metrics["train"].items():
            assert len(v) == 1, (k, v)
        assert metrics["logps/chosen"] == pol_c.mean().item() and metrics["logps/rejected"] == pol_r.mean().item()
        loss.backward()
        params = trainables(pm)
        fc.assert_not_repacked(linears)

        # eval mode: no dropout anywhere, so the same numbers
        pm.eval()
        with torch.no_grad(), captured_log_probs(pm) as got_eval:
            loss_eval = tr.compute_loss(pm, batch)
        assert loss_eval.item() == loss.item(), (name, loss_eval.item(), loss.item())
        eval_metrics = {k: v[0] for k, v in tr._metrics["eval"].items() if k != "num_tokens"}
        assert eval_metrics == {k: v for k, v in metrics.items() if k != "num_tokens"}, (eval_metrics, metrics)
        assert torch.equal(got_eval[0], got[0]) and torch.equal(got_eval[1], got[1])
        if name == "dpo_sigmoid":
            e_ref_c, e_ref_r = tr.compute_ref_log_probs(pm, batch)
            ec, er = halves(got_eval[0].sum(dim=1))
            state["reference"] = {
                "mode": "model.eval(), dropout 0 everywhere (equal to the train-mode numbers, asserted)",
                "trl_calls": "DPOTrainer.compute_loss (policy: hook on its forward) and "
                             "DPOTrainer.compute_ref_log_probs (reference: adapter disabled), loss_type sigmoid",
                "policy_logps_chosen": f32_list(ec), "policy_logps_rejected": f32_list(er),
                "ref_logps_chosen": f32_list(e_ref_c), "ref_logps_rejected": f32_list(e_ref_r),
                "dpo_sigmoid_loss": f32(loss_eval),
            }
        pm.train()

        # float64 self-check
        cm = batch["completion_mask"]
        s64, n64, _ = plain_logps64(pm, batch, cm)
        r64, _, _ = plain_logps64(pm, batch, cm, adapter=False)
        diffs = [close_all(f32_list(torch.cat([pol_c, pol_r])), s64.tolist(), f"{fam} {name} policy logps"),
                 close_all(f32_list(torch.cat([ref_c, ref_r])), r64.tolist(), f"{fam} {name} ref logps")]
        pc, pr = halves(s64)
        rc, rr = halves(r64)
        nc, nr = halves(n64)
        beta, eps = cfg["beta"], cfg["label_smoothing"]
        d = (pc - rc) - (pr - rr)
        lt = cfg["loss_type"][0]
        if lt == "sigmoid":
            want = (-F.logsigmoid(beta * d)).mean()
            cdpo = (-(1 - eps) * F.logsigmoid(beta * d) - eps * F.logsigmoid(-beta * d)).mean()
            if eps > 0:
                assert abs(cdpo.item() - loss.item()) > 1e-4, "TRL applied label smoothing to sigmoid"
        elif lt == "ipo":
            want = (((pc - rc) / nc - (pr - rr) / nr - 1 / (2 * beta)) ** 2).mean()
            unnormalised = ((d - 1 / (2 * beta)) ** 2).mean()
            assert abs(unnormalised.item() - loss.item()) > 1e-3, "ipo not length-normalised"
        elif lt == "hinge":
            want = torch.relu(1 - beta * d).mean()
        elif lt == "robust":
            want = ((-(1 - eps) * F.logsigmoid(beta * d) + eps * F.logsigmoid(-beta * d)) / (1 - 2 * eps)).mean()
        loss_diff = close(loss.item(), want.item(), f"{fam} {name} loss")
        diffs.append(loss_diff)
        close(metrics["rewards/chosen"], (beta * (pc - rc)).mean().item(), f"{fam} {name} rewards/chosen")
        close(metrics["rewards/rejected"], (beta * (pr - rr)).mean().item(), f"{fam} {name} rewards/rejected")
        close(metrics["rewards/margins"], (beta * d).mean().item(), f"{fam} {name} rewards/margins")

    case = {
        "name": name,
        "trainer": "trl.DPOTrainer",
        "config": {"loss_type": cfg["loss_type"], "beta": beta, "label_smoothing": eps,
                   "f_divergence_type": tr.f_divergence_type, "ld_alpha": tr.ld_alpha,
                   "use_weighting": tr.use_weighting},
        "trl_calls": "DPOTrainer.compute_loss(model, batch) -> _compute_loss; metrics: _metrics['train']; "
                     "policy logps: row sums of that call's fused-head log_probs; ref logps: "
                     "DPOTrainer.compute_ref_log_probs(model, batch)",
        "loss": f32(loss),
        "loss_f32": fc.f32_hex(loss.reshape(1)),
        "metrics": metrics,
        "policy_logps_chosen": f32_list(pol_c),
        "policy_logps_rejected": f32_list(pol_r),
        "ref_logps_chosen": f32_list(ref_c),
        "ref_logps_rejected": f32_list(ref_r),
    }
    grad_record(case, params, name in spec["full_grads"])
    state["logps"] = torch.cat([pol_c, pol_r]).detach()
    state.setdefault("init", init)
    assert all(torch.equal(init[k], state["init"][k]) for k in init) and init.keys() == state["init"].keys()
    state.setdefault("grads", {})[name] = {k: p.grad.clone() for k, p in params.items()}
    return case, (loss_diff, max(diffs))


def cpo_like_batch(tr, pairs, batch_ref):
    batch = tr.data_collator(cpo_features(pairs))
    cat = tr.concatenated_inputs(batch, is_encoder_decoder=False, padding_value=PAD)
    assert torch.equal(cat["concatenated_input_ids"], batch_ref["input_ids"])
    assert torch.equal(cat["concatenated_attention_mask"], batch_ref["attention_mask"])
    assert torch.equal((cat["concatenated_labels"] != -100).long(), batch_ref["completion_mask"])
    return batch


def cpo_like_step(trainer_cls, args, name, spec, pairs, batch_ref):
    """CPOTrainer's or ORPOTrainer's step on the NF4 model (the trainer applies the LoRA config
    itself): seeded LoRA values, compute_loss on the trainer's own collated batch, backward, the
    trainables' values and gradients; the loss must not change in eval mode (no dropout
    anywhere). The model is left in train mode, its gradients in place, no optimizer step."""
    model, linears = load_nf4(spec["folder"])
    tr = trainer_cls(model=model, args=args, train_dataset=text_dataset(pairs), processing_class=make_tokenizer(),
                     peft_config=lora_config("CAUSAL_LM"))
    pm = tr.model
    init = seed_trainables(pm)
    batch = cpo_like_batch(tr, pairs, batch_ref)
    pm.train()
    loss, metrics = tr.compute_loss(pm, batch, return_outputs=True)
    loss.backward()
    params = trainables(pm)
    fc.assert_not_repacked(linears)
    pm.eval()
    with torch.no_grad():
        loss_eval, _ = tr.compute_loss(pm, batch, return_outputs=True)
    assert loss_eval.item() == loss.item(), (name, loss_eval.item(), loss.item())
    pm.train()
    return tr, pm, init, batch, loss, metrics, params


def run_simpo(fam, spec, pairs, batch_ref, state):
    from trl.experimental.cpo import CPOConfig, CPOTrainer

    name = "simpo"
    with tempfile.TemporaryDirectory() as d:
        tr, pm, init, batch, loss, metrics, params = cpo_like_step(CPOTrainer, CPOConfig(**common_args(d), **SIMPO),
                                                                   name, spec, pairs, batch_ref)
        with torch.no_grad():
            ac, ar = tr.concatenated_forward(pm, batch)[:2]
        assert metrics["logps/chosen"] == ac.mean().item() and metrics["logps/rejected"] == ar.mean().item()

        cm = batch_ref["completion_mask"]
        s64, n64, _ = plain_logps64(pm, batch_ref, cm)
        avg64 = s64 / n64
        diffs = [close_all(f32_list(torch.cat([ac, ar])), avg64.tolist(), f"{fam} simpo avg logps")]
        pc, pr = halves(avg64)
        b, g = SIMPO["beta"], SIMPO["simpo_gamma"]
        loss_diff = close(loss.item(), (-F.logsigmoid(b * (pc - pr) - g)).mean().item(), f"{fam} simpo loss")
        diffs.append(loss_diff)
        # the DPO case's sums / completion lengths = these averages
        n = torch.tensor([len(p[s]) for s in ("chosen", "rejected") for p in pairs], dtype=torch.float64)
        close_all((state["logps"].double() / n).tolist(), torch.cat([ac, ar]).tolist(), f"{fam} dpo sums / n vs cpo avg")

    case = {
        "name": name,
        "trainer": "trl.experimental.cpo.CPOTrainer",
        "config": dict(SIMPO),
        "trl_calls": "CPOTrainer.compute_loss(model, batch, return_outputs=True) -> get_batch_loss_metrics "
                     "(concatenated_forward + cpo_loss); per-pair average logps: CPOTrainer.concatenated_forward",
        "loss": f32(loss),
        "loss_f32": fc.f32_hex(loss.reshape(1)),
        "metrics": metrics,
        "policy_avg_logps_chosen": f32_list(ac),
        "policy_avg_logps_rejected": f32_list(ar),
    }
    grad_record(case, params, name in spec["full_grads"])
    assert all(torch.equal(init[k], state["init"][k]) for k in init)
    return case, (loss_diff, max(diffs))


def log1mexp64(x):
    return torch.where(x < -math.log(2), torch.log1p(-torch.exp(x)), torch.log(-torch.expm1(x)))


def run_orpo(fam, spec, pairs, batch_ref, state):
    from trl.experimental.orpo import ORPOConfig, ORPOTrainer

    name = "orpo"
    with tempfile.TemporaryDirectory() as d:
        tr, pm, init, batch, loss, metrics, params = cpo_like_step(ORPOTrainer, ORPOConfig(**common_args(d), **ORPO),
                                                                   name, spec, pairs, batch_ref)
        with torch.no_grad():
            ac, ar, _, _, nll = tr.concatenated_forward(pm, batch)[:5]
        assert metrics["logps/chosen"] == ac.mean().item() and metrics["nll_loss"] == nll.item()

        cm, am, ids = batch_ref["completion_mask"], batch_ref["attention_mask"], batch_ref["input_ids"]
        s64, n64, logits64 = plain_logps64(pm, batch_ref, cm)
        avg64 = s64 / n64
        diffs = [close_all(f32_list(torch.cat([ac, ar])), avg64.tolist(), f"{fam} orpo avg logps")]
        # NLL: chosen rows, every position whose next token is real (prompt included)
        lp = torch.log_softmax(logits64[:N_PAIRS, :-1], dim=-1).gather(-1, ids[:N_PAIRS, 1:, None])[..., 0]
        real = am[:N_PAIRS, 1:].double()
        nll_all = -(lp * real).sum() / real.sum()
        comp = cm[:N_PAIRS, 1:].double()
        nll_completion = -(lp * comp).sum() / comp.sum()
        diffs.append(close(nll.item(), nll_all.item(), f"{fam} orpo nll (prompt included)"))
        assert abs(nll.item() - nll_completion.item()) > 1e-3, "ORPO nll is completion-only?"
        pc, pr = halves(avg64)
        log_odds = (pc - pr) - (log1mexp64(pc) - log1mexp64(pr))
        ratio = F.logsigmoid(log_odds)
        diffs.append(close(metrics["log_odds_ratio"], ratio.mean().item(), f"{fam} orpo log_odds_ratio"))
        diffs.append(close(metrics["log_odds_chosen"], log_odds.mean().item(), f"{fam} orpo log_odds_chosen"))
        loss_diff = close(loss.item(), (nll_all - ORPO["beta"] * ratio.mean()).item(), f"{fam} orpo loss")
        diffs.append(loss_diff)

    case = {
        "name": name,
        "trainer": "trl.experimental.orpo.ORPOTrainer",
        "config": dict(ORPO),
        "trl_calls": "ORPOTrainer.compute_loss(model, batch, return_outputs=True) -> get_batch_loss_metrics "
                     "(concatenated_forward + odds_ratio_loss); per-pair average logps: "
                     "ORPOTrainer.concatenated_forward",
        "loss": f32(loss),
        "loss_f32": fc.f32_hex(loss.reshape(1)),
        "metrics": metrics,
        "nll_loss": metrics["nll_loss"],
        "nll_tokens": int(real.sum().item()),
        "nll_note": "mean cross-entropy over the 4 chosen rows at every position t >= 1 with "
                    "attention_mask 1 (prompt tokens included, the first token never), one mean over "
                    "all of them",
        "log_odds_ratio": metrics["log_odds_ratio"],
        "log_odds_chosen": metrics["log_odds_chosen"],
        "policy_avg_logps_chosen": f32_list(ac),
        "policy_avg_logps_rejected": f32_list(ar),
    }
    grad_record(case, params, name in spec["full_grads"])
    assert all(torch.equal(init[k], state["init"][k]) for k in init)
    return case, (loss_diff, max(diffs))


def score_init(hidden):
    gen = torch.Generator().manual_seed(SEED + 2)
    return SCORE_STD * torch.randn((1, hidden), generator=gen, dtype=torch.float32)


def save_adapter(pm, out: Path, base_folder: str):
    pm.save_pretrained(out, safe_serialization=True)
    (out / "README.md").unlink(missing_ok=True)
    cfg_path = out / "adapter_config.json"
    cfg = json.loads(cfg_path.read_text())
    # absolute path -> folder name (portable); set-ordered lists -> sorted (reproducible)
    cfg["base_model_name_or_path"] = base_folder
    cfg["target_modules"] = sorted(cfg["target_modules"])
    cfg["modules_to_save"] = sorted(cfg["modules_to_save"])
    cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    fc.make_readable(out.iterdir())
    return cfg


def run_reward(fam, spec, pairs, batch_ref, state, adapter_tmp):
    from peft import PeftModel
    from safetensors import safe_open
    from trl import RewardConfig, RewardTrainer

    name = "reward"
    model, linears = load_nf4(spec["folder"], seq_cls=True)
    assert type(model.score) is torch.nn.Linear and model.score.bias is None, model.score
    s_init = score_init(model.config.hidden_size)
    with torch.no_grad():
        model.score.weight.copy_(s_init)
    with tempfile.TemporaryDirectory() as d:
        tr = RewardTrainer(model=model, args=RewardConfig(**common_args(d), **REWARD),
                           train_dataset=text_dataset(pairs, margin=True), processing_class=make_tokenizer(),
                           peft_config=lora_config("SEQ_CLS"))
        pm = tr.model
        assert pm.config.pad_token_id == PAD, pm.config.pad_token_id
        init = seed_trainables(pm, s_init)
        batch = tr.data_collator(reward_features(pairs))
        assert torch.equal(batch["input_ids"], batch_ref["input_ids"])
        assert torch.equal(batch["attention_mask"], batch_ref["attention_mask"])
        assert not (batch_ref["input_ids"][batch_ref["attention_mask"].bool()] == PAD).any()
        pm.train()
        loss, outputs = tr.compute_loss(pm, dict(batch), return_outputs=True)
        rewards = outputs.logits.squeeze(-1).detach()
        rc, rr = halves(rewards)
        metrics = {k: v[0] for k, v in tr._metrics["train"].items()}
        loss.backward()
        params = trainables(pm)
        score_key = "base_model.model.score.weight"
        assert score_key in params, sorted(params)
        fc.assert_not_repacked(linears)
        pm.eval()
        with torch.no_grad():
            loss_eval, out_eval = tr.compute_loss(pm, dict(batch), return_outputs=True)
        assert loss_eval.item() == loss.item(), (name, loss_eval.item(), loss.item())
        assert torch.equal(out_eval.logits.squeeze(-1), rewards)

        # float64 self-check: the head at position len - 1 of each row
        with torch.no_grad():
            h = pm.base_model.model.model(input_ids=batch_ref["input_ids"],
                                          attention_mask=batch_ref["attention_mask"]).last_hidden_state
        last = batch_ref["attention_mask"].sum(1) - 1
        w = pm.base_model.model.score.modules_to_save["default"].weight.double()
        r64 = (h[torch.arange(2 * N_PAIRS), last].double() @ w.T)[:, 0]
        diffs = [close_all(rewards.tolist(), r64.tolist(), f"{fam} reward scores")]
        c64, j64 = halves(r64)
        m = torch.tensor(MARGINS, dtype=torch.float64)
        want = (-F.logsigmoid(c64 - j64 - m)).mean() + REWARD["center_rewards_coefficient"] * ((c64 + j64) ** 2).mean()
        loss_diff = close(loss.item(), want.item(), f"{fam} reward loss")
        diffs.append(loss_diff)

        case = {
            "name": name,
            "trainer": "trl.RewardTrainer",
            "config": {**REWARD, "task_type": "SEQ_CLS",
                       "modules_to_save": sorted(pm.peft_config["default"].modules_to_save),
                       "pad_token_id": pm.config.pad_token_id, "num_labels": 1},
            "trl_calls": "RewardTrainer.compute_loss(model, batch, return_outputs=True); rewards: outputs.logits; "
                         "metrics: _metrics['train']",
            "margins": [p["margin"] for p in pairs],
            "loss": f32(loss),
            "loss_f32": fc.f32_hex(loss.reshape(1)),
            "metrics": metrics,
            "rewards_chosen": f32_list(rc),
            "rewards_rejected": f32_list(rr),
            "accuracy": metrics["accuracy"],
            "last_token_rule": "score of a row = score(hidden state at the rightmost position whose id != "
                               "config.pad_token_id (0)) = position len - 1 here (no 0 in the data)",
            "score_init": {"key": score_key, "shape": list(s_init.shape), "value_f32": fc.f32_hex(s_init)},
        }
        grad_record(case, params, name in spec["full_grads"], always=(score_key,))
        assert all(torch.equal(init[k], state["init"][k]) for k in init)

        if adapter_tmp is not None:
            cfg = save_adapter(pm, adapter_tmp, spec["folder"])
            with safe_open(adapter_tmp / "adapter_model.safetensors", "pt") as f:
                tensors = {k: {"shape": list(f.get_slice(k).get_shape()), "dtype": f.get_slice(k).get_dtype()}
                           for k in sorted(f.keys())}
            assert set(tensors) == set(params), set(tensors) ^ set(params)
            case["adapter"] = {
                "folder": spec["adapter_dir"],
                "written_by": "PeftModel.save_pretrained(folder, safe_serialization=True) of the trainer's "
                              "model, with the initial (seeded) values; README.md deleted",
                "config_rewrites": "base_model_name_or_path set to the NF4 folder's name (PEFT writes the "
                                   "absolute path); target_modules and modules_to_save sorted (PEFT writes "
                                   "them in set order); written with indent 2, sorted keys",
                "files": sorted(p.name for p in adapter_tmp.iterdir()),
                "tensors": tensors,
                "adapter_config": cfg,
            }
            # round trip: a fresh seq-cls model + PeftModel.from_pretrained
            from transformers import AutoModelForSequenceClassification

            fresh = AutoModelForSequenceClassification.from_pretrained(
                FIX / spec["folder"], device_map="cpu", dtype=torch.float32, attn_implementation="eager",
                num_labels=1, pad_token_id=PAD)
            fc.use_fp32_dequant_path(fc.bnb_linears(fresh))
            loaded = PeftModel.from_pretrained(fresh, adapter_tmp).eval()
            with torch.no_grad():
                scores = loaded(input_ids=batch_ref["input_ids"], attention_mask=batch_ref["attention_mask"],
                                use_cache=False).logits.squeeze(-1)
            assert (scores - rewards).abs().max().item() <= 1e-6 * max(1.0, rewards.abs().max().item()), (scores, rewards)
            case["roundtrip_scores"] = f32_list(scores)
            case["roundtrip_note"] = (
                "AutoModelForSequenceClassification.from_pretrained(nf4 folder, num_labels=1, pad_token_id=0) + "
                "PeftModel.from_pretrained(adapter folder), eval mode; rows of 'batch' (chosen 0..3, rejected 0..3)")
    return case, (loss_diff, max(diffs))


def trl_own_tokenization(pairs):
    """What each trainer's own preprocessing makes of pair 0 given as text (BOS/EOS evidence)."""
    from trl import DPOConfig, DPOTrainer, RewardConfig, RewardTrainer
    from trl.experimental.cpo import CPOConfig, CPOTrainer

    out = {}
    first = pairs[:1]
    with tempfile.TemporaryDirectory() as d:
        model, _ = load_nf4(MODELS["llama"]["folder"])
        tr = DPOTrainer(model=model, args=DPOConfig(**common_args(d), max_length=None),
                        train_dataset=text_dataset(first), processing_class=make_tokenizer(),
                        peft_config=lora_config("CAUSAL_LM"))
        row = tr.train_dataset[0]
        out["DPOTrainer"] = {k: row[k] for k in ("prompt_ids", "chosen_ids", "rejected_ids")}
        model, _ = load_nf4(MODELS["llama"]["folder"])
        tr = CPOTrainer(model=model, args=CPOConfig(**common_args(d), **SIMPO),
                        train_dataset=text_dataset(first), processing_class=make_tokenizer(),
                        peft_config=lora_config("CAUSAL_LM"))
        row = tr.train_dataset[0]
        out["CPOTrainer/ORPOTrainer (tokenize_row)"] = {
            k: row[k] for k in ("prompt_input_ids", "chosen_input_ids", "chosen_labels",
                                "rejected_input_ids", "rejected_labels")}
        model, _ = load_nf4(MODELS["llama"]["folder"], seq_cls=True)
        tr = RewardTrainer(model=model, args=RewardConfig(**common_args(d), **REWARD),
                           train_dataset=text_dataset(first, margin=True), processing_class=make_tokenizer(),
                           peft_config=lora_config("SEQ_CLS"))
        row = tr.train_dataset[0]
        out["RewardTrainer"] = {k: row[k] for k in ("chosen_ids", "rejected_ids")}
    p = pairs[0]
    assert out["DPOTrainer"] == {"prompt_ids": p["prompt"], "chosen_ids": p["chosen"] + [EOS],
                                 "rejected_ids": p["rejected"] + [EOS]}, out["DPOTrainer"]
    cpo = out["CPOTrainer/ORPOTrainer (tokenize_row)"]
    assert cpo["prompt_input_ids"] == [BOS] + p["prompt"], cpo
    assert cpo["chosen_input_ids"] == [BOS] + p["prompt"] + p["chosen"] + [EOS], cpo
    assert out["RewardTrainer"]["chosen_ids"] == p["prompt"] + p["chosen"] + [EOS], out["RewardTrainer"]
    out["text_given"] = {"prompt": as_text(p["prompt"]), "chosen": " " + as_text(p["chosen"]),
                         "rejected": " " + as_text(p["rejected"])}
    out["note"] = ("pair 0 as text through each trainer's own dataset preprocessing (WordLevel tokenizer "
                   "without a post-processor): DPOTrainer and RewardTrainer append EOS (2) to both "
                   "completions; CPOTrainer/ORPOTrainer.tokenize_row prepend BOS (1) to the prompt and append "
                   "EOS (2) to both completions. The fixture's numbers use the ids as given, without these.")
    return out


# ---------------------------------------------------------------- build
def build_model_doc(fam, pairs, adapter_tmp):
    spec = MODELS[fam]
    fc.log(f"{fam} ...")
    from trl.trainer.dpo_trainer import DataCollatorForPreference

    batch_ref = DataCollatorForPreference(pad_token_id=PAD)(dpo_examples(pairs))
    state = {}
    cases, summaries = [], []
    for name, cfg in DPO_CASES:
        case, diff = run_dpo(fam, spec, name, cfg, pairs, batch_ref, state)
        cases.append(case)
        summaries.append((name, case["loss"], *diff))
    g = state["grads"]
    assert cases[1]["loss"] == cases[0]["loss"], "sigmoid label_smoothing changed the loss"
    assert all(torch.equal(g["dpo_sigmoid"][k], g["dpo_sigmoid_ls0.1"][k]) for k in g["dpo_sigmoid"])
    for run in (run_simpo, run_orpo):
        case, diff = run(fam, spec, pairs, batch_ref, state)
        cases.append(case)
        summaries.append((case["name"], case["loss"], *diff))
    case, diff = run_reward(fam, spec, pairs, batch_ref, state, adapter_tmp)
    cases.append(case)
    summaries.append(("reward", case["loss"], *diff))

    nf4_cfg = json.loads((FIX / spec["folder"] / "config.json").read_text())
    doc = {
        "generator": "tools/make_preference_fixtures.py",
        "versions": fc.module_versions("torch", "bitsandbytes", "transformers", "peft", "trl", "accelerate",
                                       "datasets", "tokenizers"),
        "model": spec["folder"],
        "architecture": nf4_cfg["architectures"][0],
        "reward_architecture": nf4_cfg["architectures"][0].replace("ForCausalLM", "ForSequenceClassification"),
        "encoding": fc.F32_HEX_ENCODING,
        "note": NOTE,
        "vocab_size": nf4_cfg["vocab_size"],
        "special_ids": {"pad": PAD, "bos": BOS, "eos": EOS},
        "pairs": pairs,
        "batch": {
            "rows": "0..3 prompt+chosen of pairs 0..3, 4..7 prompt+rejected; right-padded with pad id 0",
            "input_ids": batch_ref["input_ids"].tolist(),
            "attention_mask": batch_ref["attention_mask"].tolist(),
            "completion_mask": batch_ref["completion_mask"].tolist(),
        },
        "completion_lengths": {"chosen": [len(p["chosen"]) for p in pairs],
                               "rejected": [len(p["rejected"]) for p in pairs]},
        "lora_config": state["lora_config"],
        "scaling": state["scaling"],
        "lora_init_note": f"lora_A ~ N(0, {A_STD}), lora_B ~ N(0, {B_STD}), torch.Generator({SEED + 1}), "
                          "sorted parameter-name order; identical in every case",
        "lora_init": {k: {"shape": list(v.shape), "value_f32": fc.f32_hex(v)} for k, v in state["init"].items()},
        "reference": state["reference"],
        "full_grads": sorted(spec["full_grads"]),
        "cases": cases,
    }
    return doc, summaries


def build(adapter_tmp: Path):
    pairs = make_pairs()
    docs, summaries = {}, {}
    own = trl_own_tokenization(pairs)
    for fam in MODELS:
        adir = adapter_tmp if MODELS[fam]["adapter_dir"] else None
        doc, summaries[fam] = build_model_doc(fam, pairs, adir)
        doc["trl_own_tokenization"] = own
        docs[fam] = fc.fixture_json(doc)
    return docs, summaries


def quiet():
    import datasets
    import transformers

    datasets.disable_progress_bars()
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    for name in ("trl", "peft", "accelerate", "bitsandbytes"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")


def main():
    fc.check_versions(PINS)
    fc.deterministic_torch()
    quiet()
    with tempfile.TemporaryDirectory() as t1, tempfile.TemporaryDirectory() as t2:
        a1, a2 = Path(t1) / "adapter", Path(t2) / "adapter"
        docs, summaries = build(a1)
        again, _ = build(a2)
        assert docs == again, "two builds gave different JSON"
        files = sorted(p.name for p in a1.iterdir())
        assert files == sorted(p.name for p in a2.iterdir()), files
        for n in files:
            assert (a1 / n).read_bytes() == (a2 / n).read_bytes(), f"adapter file {n} differs between builds"

        paths = []
        for fam, spec in MODELS.items():
            out = FIX / spec["out"]
            out.write_text(docs[fam])
            fc.make_readable([out])
            paths.append(out)
            if spec["adapter_dir"]:
                dest = FIX / spec["adapter_dir"]
                if dest.exists():
                    shutil.rmtree(dest)
                dest.mkdir()
                for n in files:
                    (dest / n).write_bytes((a1 / n).read_bytes())
                fc.make_readable(dest.iterdir())
                paths += sorted(dest.iterdir())
    for fam, rows in summaries.items():
        for name, loss, loss_diff, diff in rows:
            print(f"{fam:6s} {name:18s} loss {loss:12.9f}   |TRL - float64| loss {loss_diff:.1e}, "
                  f"worst of all checked numbers {diff:.1e}")
    total = fc.list_files(paths)
    print(f"{total:9d}  total")
    assert total < 1_000_000, total


if __name__ == "__main__":
    main()
