"""Fixtures of the reward tests: a tiny reward run (gate failed on purpose) and test-only reward functions."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from alignkit.cli import stage_main
from alignkit.runs import Run

REWARDS = textwrap.dedent('''
    import random

    _rng = random.Random(0)


    def noise(prompts, completions, **kwargs):
        """Random rewards: non-zero advantages, so every step moves the policy (and its KL)."""
        return [_rng.random() for _ in completions]


    def bread(prompts, completions, **kwargs):
        """Share of the reply's words that are "bread": ~1/30 per word for the small-vocabulary model at start."""
        words = [c[-1]["content"].split() for c in completions]
        return [sum(w == "bread" for w in ws) / max(len(ws), 1) for ws in words]
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
            "lora.layers_to_transform=null", "data.near_dedup=false", "tracking.backend=none", f"output.dir={out}", "train.max_steps=2",
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


WORDS = ("how do i bake bread make tea fix a bike what is the best way to learn python sure here you go "
         "sorry cannot help with that mix flour water salt yeast").split()


def small_vocab_model(out: Path, words=WORDS, seed: int = 0) -> str:
    """A 1-layer chat model over a word-level vocabulary of ~40 words (its own tokenizer and chat template).

    Small enough that RLOO moves it visibly in a few steps, and a tokenizer unlike SmolLM2's."""
    import torch
    from tokenizers import Tokenizer, models as tk_models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    tk = Tokenizer(tk_models.WordLevel(unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    tk.train_from_iterator([" ".join(words)],
                           trainers.WordLevelTrainer(special_tokens=["<unk>", "<pad>", "</s>", "<|u|>", "<|a|>"]))
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="<unk>", pad_token="<pad>", eos_token="</s>")
    tok.chat_template = ("{% for m in messages %}{{ '<|u|>' if m.role == 'user' else '<|a|>' }}{{ m.content }}</s>"
                         "{% endfor %}{% if add_generation_prompt %}<|a|>{% endif %}")
    torch.manual_seed(seed)
    LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                 num_attention_heads=2, num_key_value_heads=1, eos_token_id=tok.eos_token_id,
                                 bos_token_id=None, pad_token_id=tok.pad_token_id,
                                 # std 0.15 (not 0.02): with tied embeddings the logit of a word is bounded by
                                 # |h|·|e|, and 0.02 caps any word at ~5% however the policy learns
                                 initializer_range=0.15, tie_word_embeddings=True)).save_pretrained(out)
    tok.save_pretrained(out)
    return str(out)


@pytest.fixture(scope="module")
def small_vocab_model_dir(tmp_path_factory) -> str:
    return small_vocab_model(tmp_path_factory.mktemp("small-vocab-model"))
