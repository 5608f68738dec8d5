"""Fixtures of the reward tests: a tiny reward run (gate failed on purpose) and test-only reward functions."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from alignkit.entry import stage_main
from alignkit.runs import Run

REWARDS = textwrap.dedent('''
    import random

    _rng = random.Random(0)


    def noise(prompts, completions, **kwargs):
        """Random rewards: non-zero advantages, so every step moves the policy (and its KL)."""
        return [_rng.random() for _ in completions]


    def plain_start(prompts, completions, **kwargs):
        """1 when the reply's first word is The/To/A/In (SmolLM2 samples that ~40% of the time on the demo prompts),
        else 0: a single early decision with a strong group-relative signal, so a few RLOO steps move it."""
        return [1.0 if (c[-1]["content"].split() or [""])[0] in ("The", "To", "A", "In") else 0.0 for c in completions]
''')


@pytest.fixture
def rewards_module(tmp_path, monkeypatch) -> str:
    """A module `ak_test_rewards` on sys.path with the functions above; returns its name."""
    (tmp_path / "ak_test_rewards.py").write_text(REWARDS)
    monkeypatch.syspath_prepend(str(tmp_path))
    return "ak_test_rewards"


@pytest.fixture
def reward_args():
    """Command-line arguments of a tiny reward run (2 steps): reward_args(base, out_dir, *overrides)."""
    return tiny_reward_args


def tiny_reward_args(base: str, out: Path, *extra: str) -> list[str]:
    return ["--config", "recipes/smollm2/reward.yaml", f"model.base={base}", "lora.r=4", "lora.alpha=8",
            "data.near_dedup=false", "tracking.backend=none", f"output.dir={out}", "train.max_steps=2",
            "train.per_device_train_batch_size=4", "train.logging_steps=1", "train.eval_strategy='no'", "train.save_strategy='no'", *extra]


@pytest.fixture(scope="module")
def tiny_reward_run(tiny_model_dir, tmp_path_factory, request) -> Run:
    """A reward run on the tiny random model; reward.alpha=1e-6 makes its gate fail (it would need 33/35 right)."""
    from reward.config import RewardRecipe
    from reward.train import run

    out = tmp_path_factory.mktemp("reward-runs")
    root = Path(request.config.rootpath)
    monkey = pytest.MonkeyPatch()
    monkey.chdir(root)
    try:
        assert stage_main("python -m reward", RewardRecipe, run,
                          tiny_reward_args(tiny_model_dir, out, "reward.alpha=0.000001")) == 0
    finally:
        monkey.undo()
    (path,) = [p for p in out.iterdir() if p.name.startswith("reward-")]
    return Run(path)
