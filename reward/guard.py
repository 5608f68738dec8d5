"""Reward-hacking symptoms, checked on every RLHF log: KL above a ceiling, completions collapsing to nothing,
or every completion running into max_completion_length. A symptom that persists `patience` logs stops training;
the stage then fails the run.

`check` is pure (logs in, symptom or None out) and unit-tested; `RewardHackingGuard` is the Trainer callback.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from transformers import TrainerCallback

KL = "kl"
MEAN_LENGTH = "completions/mean_length"
CLIPPED = "completions/clipped_ratio"


def check(logs: dict, *, kl_ceiling: float | None, min_mean_length: float | None,
          max_clipped_ratio: float | None, clipped_at_start: bool = False) -> str | None:
    """The first reward-hacking symptom in one log row, as a sentence, or None."""
    kl = logs.get(KL)
    if kl_ceiling is not None and kl is not None and kl > kl_ceiling:
        return (f"KL to the starting policy {kl:.4g} exceeds rlhf.kl_ceiling={kl_ceiling:g}: the policy is drifting "
                "away to please the reward model (raise train.beta or lower train.learning_rate)")
    length = logs.get(MEAN_LENGTH)
    if min_mean_length is not None and length is not None and length < min_mean_length:
        return (f"mean completion length {length:.3g} tokens fell below rlhf.min_mean_length={min_mean_length:g}: "
                "the policy learned that saying nothing scores well")
    clipped = logs.get(CLIPPED)
    if max_clipped_ratio is not None and clipped is not None and clipped >= max_clipped_ratio and not clipped_at_start:
        return (f"{clipped:.0%} of completions hit train.max_completion_length (rlhf.max_clipped_ratio="
                f"{max_clipped_ratio:g}): the policy learned that longer always scores better")
    return None


# At the first step this share of completions already at max_completion_length means the limit is short for the
# model: then "every completion clipped" a few steps later is sampling noise (8 samples a step), not hacking.
CLIPPED_AT_START = 0.5


@dataclass
class RewardHackingGuard(TrainerCallback):
    """Stops training when a symptom persists for `patience` consecutive logs; `reason` says which."""

    kl_ceiling: float | None = None
    min_mean_length: float | None = None
    max_clipped_ratio: float | None = None
    patience: int = 1
    reason: str | None = None
    step: int | None = None
    notes: list[str] = field(default_factory=list)
    _streak: int = 0
    _clipped_at_start: bool | None = None

    def on_log(self, args, state, control, logs=None, **kwargs):
        logs = logs or {}
        if CLIPPED in logs and self._clipped_at_start is None:
            # Most samples at the limit on the first step: the limit is short for this model; a later 100% can't be
            # told from noise, so the check is off for this run (noted in the manifest), not silently passed.
            self._clipped_at_start = (self.max_clipped_ratio is not None
                                      and logs[CLIPPED] >= min(self.max_clipped_ratio, CLIPPED_AT_START))
            if self._clipped_at_start:
                self.notes.append(f"length ceiling check off: {logs[CLIPPED]:.0%} of completions already hit "
                                  f"train.max_completion_length at the first step (>= {CLIPPED_AT_START:.0%}; raise "
                                  "it to watch for length hacking)")
        symptom = check(logs, kl_ceiling=self.kl_ceiling, min_mean_length=self.min_mean_length,
                        max_clipped_ratio=self.max_clipped_ratio, clipped_at_start=bool(self._clipped_at_start))
        if not any(k in logs for k in (KL, MEAN_LENGTH, CLIPPED)):
            return control  # not an RLHF training log (e.g. the final train summary)
        self._streak = self._streak + 1 if symptom else 0
        if symptom and self._streak >= self.patience:
            self.reason, self.step = symptom, state.global_step
            control.should_training_stop = True
        return control

    @property
    def tripped(self) -> bool:
        return self.reason is not None
