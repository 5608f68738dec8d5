"""TRL's DPO loss, run through DPOTrainer._compute_loss itself, against numbers worked out by hand.

Two toy pairs, β = 0.1, two completion tokens per sequence, reference log-probs precomputed:

            log π(chosen)  log π(rejected)  log π_ref(chosen)  log π_ref(rejected)
  pair 1        -10             -12               -11                -11
  pair 2         -9              -8                -9                 -9

  chosen log-ratio  c = log π(y_w) − log π_ref(y_w):   pair 1: +1    pair 2:  0
  rejected log-ratio r = log π(y_l) − log π_ref(y_l):  pair 1: −1    pair 2: +1
  margin Δ = c − r:                                    pair 1: +2    pair 2: −1

sigmoid (DPO):  −log σ(βΔ) = log(1 + e^(−βΔ))
  pair 1: log(1 + e^−0.2) = 0.598139   pair 2: log(1 + e^0.1) = 0.744397   mean = 0.671268
IPO (per-token averages, 2 tokens each):  (c/2 − r/2 − 1/(2β))² = ((Δ/2) − 5)²
  pair 1: (1 − 5)² = 16                 pair 2: (−0.5 − 5)² = 30.25          mean = 23.125
robust (ε = 0.1):  (−(1−ε)·log σ(βΔ) + ε·log σ(−βΔ)) / (1 − 2ε)
  pair 1: (0.9·0.598139 − 0.1·0.798139) / 0.8 = 0.573139
  pair 2: (0.9·0.744397 − 0.1·0.644397) / 0.8 = 0.756897                      mean = 0.665018
Implicit rewards β·c, β·r: chosen (0.1, 0), rejected (−0.1, 0.1); accuracy (β·c > β·r) = 1/2; margin mean 0.05.
"""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from alignkit.lifecycle import precision_defaults

ROOT = Path(__file__).resolve().parents[2]

POLICY = {"chosen": [-10.0, -9.0], "rejected": [-12.0, -8.0]}
REFERENCE = {"chosen": [-11.0, -9.0], "rejected": [-11.0, -9.0]}
T = 6  # sequence length; the last 2 positions are the completion


class FixedLogProbs(torch.nn.Module):
    """Stands in for the policy: returns the per-token log-probs of the table above (half on each completion token)."""

    def forward(self, input_ids, labels=None, **kwargs):
        totals = torch.tensor(POLICY["chosen"] + POLICY["rejected"])  # TRL's batch order: [chosen…, rejected…]
        log_probs = torch.zeros(4, T - 1)
        log_probs[:, -2:] = (totals / 2).unsqueeze(1)
        return SimpleNamespace(log_probs=log_probs, entropy=torch.zeros(4, T - 1),
                               mean_logits=torch.zeros(4, T - 1), is_top1=torch.zeros(4, T - 1, dtype=torch.bool))


@pytest.fixture(scope="module")
def trainer(tiny_model_dir, tmp_path_factory):
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    from alignkit import models
    from alignkit.recipe import ModelConfig

    tokenizer, _ = models.load_tokenizer(tiny_model_dir)
    model = models.attach_lora(models.load_model(ModelConfig(base=tiny_model_dir)), {"r": 4})
    data = Dataset.from_list([{"prompt": [{"role": "user", "content": "Q?"}],
                               "chosen": [{"role": "assistant", "content": "Yes."}],
                               "rejected": [{"role": "assistant", "content": "No."}]}] * 2)
    args = DPOConfig(output_dir=str(tmp_path_factory.mktemp("dpo")), report_to="none", beta=0.1,
                     precompute_ref_log_probs=True, **precision_defaults())
    return DPOTrainer(model=model, args=args, train_dataset=data, processing_class=tokenizer)


def loss(trainer, loss_type: str, label_smoothing: float = 0.0) -> float:
    trainer.loss_types, trainer.loss_weights, trainer.label_smoothing = [loss_type], [1.0], label_smoothing
    return loss_combined(trainer)


def test_sigmoid_loss_matches_hand_computation(trainer):
    expected = (math.log(1 + math.exp(-0.2)) + math.log(1 + math.exp(0.1))) / 2
    assert loss(trainer, "sigmoid") == pytest.approx(expected, abs=1e-6) == pytest.approx(0.671268, abs=1e-6)
    metrics = trainer._metrics["train"]
    assert metrics["rewards/accuracies"] == [0.5] and metrics["rewards/margins"][0] == pytest.approx(0.05)
    assert metrics["rewards/chosen"][0] == pytest.approx(0.05) and metrics["rewards/rejected"][0] == pytest.approx(0.0)


def test_ipo_loss_matches_hand_computation(trainer):
    assert loss(trainer, "ipo") == pytest.approx((16 + 30.25) / 2, abs=1e-5)


def test_robust_loss_matches_hand_computation(trainer):
    assert loss(trainer, "robust", label_smoothing=0.1) == pytest.approx((0.573139 + 0.756897) / 2, abs=1e-5)


LOSS_TYPES = ["sigmoid", "hinge", "ipo", "exo_pair", "nca_pair", "robust", "bco_pair", "sppo_hard", "aot",
              "aot_unpaired", "apo_zero", "apo_down", "discopop", "sft", "sigmoid_norm"]


@pytest.mark.parametrize("loss_type", LOSS_TYPES)
def test_every_trl_loss_type_computes_a_finite_loss(loss_type, trainer):
    smoothing = {"exo_pair": 1e-3, "robust": 0.1}.get(loss_type, 0.0)
    assert math.isfinite(loss(trainer, loss_type, label_smoothing=smoothing))


def test_sft_auxiliary_term_combines_with_weights(trainer):
    sigmoid, sft = loss(trainer, "sigmoid"), loss(trainer, "sft")
    trainer.loss_types, trainer.loss_weights = ["sigmoid", "sft"], [1.0, 0.5]
    assert sft == pytest.approx(4.75)  # mean per-token NLL of the chosen completions: (5 + 4.5) / 2
    assert loss_combined(trainer) == pytest.approx(sigmoid + 0.5 * sft, abs=1e-5)


def loss_combined(trainer) -> float:
    completion_mask = torch.zeros(4, T, dtype=torch.long)
    completion_mask[:, -2:] = 1
    inputs = {"input_ids": torch.ones(4, T, dtype=torch.long), "attention_mask": torch.ones(4, T, dtype=torch.long),
              "completion_mask": completion_mask, "ref_chosen_logps": torch.tensor(REFERENCE["chosen"]),
              "ref_rejected_logps": torch.tensor(REFERENCE["rejected"])}
    trainer._metrics["train"].clear()
    return trainer._compute_loss(FixedLogProbs(), inputs, return_outputs=False).item()


# Last in this module: building a TrainingArguments resets accelerate's global state under the module's trainer.
@pytest.mark.parametrize("loss_type", LOSS_TYPES)
def test_every_trl_loss_type_is_accepted_through_the_recipe(loss_type, tmp_path):
    from alignkit import lifecycle
    from alignkit.recipe import load_recipe
    from preference.config import DPORecipe
    from preference.train import DPO

    smoothing = {"exo_pair": 1e-3, "robust": 0.1}.get(loss_type, 0.0)
    recipe = load_recipe(ROOT / "recipes/smollm2/dpo.yaml", DPORecipe,
                         [f"train.loss_type=[{loss_type}]", "train.loss_weights=[1.0]",
                          f"train.label_smoothing={smoothing}"])
    args = lifecycle.resolve_config(DPO, recipe)
    assert args.loss_type == [loss_type] and args.label_smoothing == smoothing
    assert args.precompute_ref_log_probs is recipe.train.get("precompute_ref_log_probs", True)  # dpo.yaml's, else ours
