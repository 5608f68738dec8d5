"""The reward-hacking guard: which log rows are symptoms, patience, and the clipped-at-start exception."""

from types import SimpleNamespace

from reward.guard import RewardHackingGuard, check

BOUNDS = dict(kl_ceiling=0.5, min_mean_length=1.0, max_clipped_ratio=1.0)


def test_check_each_symptom():
    assert check({"kl": 0.2, "completions/mean_length": 20, "completions/clipped_ratio": 0.5}, **BOUNDS) is None
    assert "KL" in check({"kl": 0.51}, **BOUNDS)
    assert "saying nothing" in check({"completions/mean_length": 0.0}, **BOUNDS)
    assert "longer always" in check({"completions/clipped_ratio": 1.0}, **BOUNDS)
    assert check({"completions/clipped_ratio": 1.0}, **BOUNDS, clipped_at_start=True) is None
    assert check({"kl": 9.0}, kl_ceiling=None, min_mean_length=None, max_clipped_ratio=None) is None


def _log(guard, step, **logs):
    state, control = SimpleNamespace(global_step=step), SimpleNamespace(should_training_stop=False)
    guard.on_log(None, state, control, logs=logs)
    return control.should_training_stop


def test_patience_needs_consecutive_symptoms():
    guard = RewardHackingGuard(patience=2, **BOUNDS)
    assert not _log(guard, 1, **{"kl": 0.9, "completions/clipped_ratio": 0.2})
    assert not _log(guard, 2, **{"kl": 0.1})          # streak broken
    assert not _log(guard, 3, **{"kl": 0.9})
    assert _log(guard, 4, **{"kl": 0.8})
    assert guard.tripped and guard.step == 4 and "0.8" in guard.reason


def test_clipped_from_the_first_step_is_noted_not_failed():
    guard = RewardHackingGuard(patience=1, **BOUNDS)
    assert not _log(guard, 1, **{"completions/clipped_ratio": 1.0, "completions/mean_length": 32})
    assert not _log(guard, 2, **{"completions/clipped_ratio": 1.0, "completions/mean_length": 32})
    assert not guard.tripped and "max_completion_length" in guard.notes[0]
    assert _log(guard, 3, **{"completions/clipped_ratio": 1.0, "completions/mean_length": 0.5})  # collapse still trips


def test_mostly_clipped_at_the_first_step_turns_the_length_check_off():
    """62.5% clipped at step 1 then 100% (measured on the embedded model at 32 tokens) is the limit, not hacking;
    under half clipped at the start keeps the check on."""
    guard = RewardHackingGuard(patience=2, **BOUNDS)
    for step, clipped in ((1, 0.625), (2, 1.0), (3, 1.0), (4, 1.0)):
        assert not _log(guard, step, **{"completions/clipped_ratio": clipped, "completions/mean_length": 32})
    assert "62%" in guard.notes[0] or "63%" in guard.notes[0]
    watched = RewardHackingGuard(patience=2, **BOUNDS)
    assert not _log(watched, 1, **{"completions/clipped_ratio": 0.25, "completions/mean_length": 20})
    assert not _log(watched, 2, **{"completions/clipped_ratio": 1.0, "completions/mean_length": 32})
    assert _log(watched, 3, **{"completions/clipped_ratio": 1.0, "completions/mean_length": 32})
    assert "longer always" in watched.reason


def test_summary_logs_are_ignored():
    guard = RewardHackingGuard(patience=1, **BOUNDS)
    assert not _log(guard, 5, train_runtime=10.0, train_loss=0.1)
