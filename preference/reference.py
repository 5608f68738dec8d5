"""The step-0 reference check: before any update, the policy and the reference must score pairs identically.

DPO/KTO continue the SFT adapter, so at step 0 the policy *is* the reference and every implicit reward
β·(log π(y|x) − log π_ref(y|x)) is 0. If it is not, the trainer is comparing against something else —
most often the bare base model (adapters disabled) — and would silently optimise the wrong objective.

The check asks the trainer itself for the reference, by the path it will use in training: the precomputed
`ref_*logps` columns when `precompute_ref_log_probs` is on, else `trainer.compute_ref_log_probs` (TRL's
"ref" adapter, or disabled adapters, or an explicit ref_model). The policy side is the same TRL function
run on the model as it stands, so both numbers come from one code path on identical batches.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

from alignkit.errors import TrainingFailed


@dataclass(frozen=True)
class ReferenceCheck:
    """Implicit rewards of the policy against the trainer's reference on the first training sequences."""

    sequences: int
    max_abs_reward: float
    mean_abs_reward: float
    tolerance: float

    @property
    def passed(self) -> bool:
        return self.max_abs_reward <= self.tolerance

    def as_dict(self) -> dict:
        return {"sequences": self.sequences, "max_abs_implicit_reward": self.max_abs_reward,
                "mean_abs_implicit_reward": self.mean_abs_reward, "tolerance": self.tolerance, "passed": self.passed}


@contextlib.contextmanager
def _policy_as_reference(trainer):
    """Make `compute_ref_log_probs` score the model as it is: with a ref_model set, TRL switches no adapters."""
    saved = trainer.ref_model
    trainer.ref_model = trainer.model
    try:
        yield
    finally:
        trainer.ref_model = saved


def _flat(trainer, out):
    """DPO returns (chosen, rejected) log-probs; KTO returns (completion, KL), whose KL side is no reference."""
    import torch

    a, b = out
    return torch.cat([a, b]) if _is_dpo(trainer) else a


def _is_dpo(trainer) -> bool:
    from trl import DPOTrainer

    return isinstance(trainer, DPOTrainer)


def _precomputed(trainer, batch):
    import torch

    if _is_dpo(trainer):
        return torch.cat([batch["ref_chosen_logps"], batch["ref_rejected_logps"]])
    return batch["ref_logps"]


def check_reference(trainer, n_rows: int = 8, tolerance: float = 1e-4) -> ReferenceCheck:
    """Score the first training rows with policy and reference; raise TrainingFailed if they differ.

    With precomputed reference log-probs the rows are TRL's first precompute batch, collated by the
    trainer's own collator (same padding, same kernels): an exact comparison. Otherwise the first
    `n_rows` rows, with the reference computed live as in training.
    """
    dataset = trainer.train_dataset
    if trainer.precompute_ref_logps:  # exactly TRL's first precompute batch: same rows, same padding
        n = min(len(dataset), trainer.args.precompute_ref_batch_size or trainer.args.per_device_train_batch_size)
    else:
        n = min(n_rows, len(dataset))
    rows = [dataset[i] for i in range(n)]
    batch = trainer._prepare_inputs(trainer.data_collator(rows))
    model = trainer.model
    was_training = model.training
    model.eval()
    try:
        if trainer.precompute_ref_logps:
            ref = _precomputed(trainer, batch)
        else:
            ref = _flat(trainer, trainer.compute_ref_log_probs(model, batch))
        with _policy_as_reference(trainer):
            policy = _flat(trainer, trainer.compute_ref_log_probs(model, batch))
    finally:
        model.train(was_training)
    rewards = (trainer.beta * (policy.float().cpu() - ref.float().cpu())).abs()
    result = ReferenceCheck(int(rewards.numel()), float(rewards.max()), float(rewards.mean()), tolerance)
    if not result.passed:
        raise TrainingFailed(
            f"step-0 reference check failed: before training the policy and the reference must score pairs "
            f"identically, but the largest implicit reward |β·(log π − log π_ref)| on {result.sequences} sequences is "
            f"{result.max_abs_reward:.4g} (tolerance {tolerance:g}). The reference is not the starting policy "
            "(e.g. the bare base model instead of base + SFT adapter); training would optimise against the wrong "
            "reference, so the run is stopped")
    return result
