"""Shared fixtures: a tiny random chat model (milliseconds) and an isolated run folder."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def save_tiny_model(out: Path, **config) -> str:
    """A 2-layer Llama with SmolLM2's tokenizer and chat template in `out` (seed 0); `config` overrides the
    LlamaConfig (e.g. a wider initializer_range for a model whose outputs depend sharply on its input)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from alignkit.models import load_tokenizer

    tokenizer, _ = load_tokenizer("smollm2-135m-instruct")
    torch.manual_seed(0)
    config = LlamaConfig(**{**dict(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=True), **config})
    LlamaForCausalLM(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return str(out)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    """save_tiny_model as a fixture: tiny_model("name", initializer_range=0.5) → the model folder."""
    return lambda name, **config: save_tiny_model(tmp_path_factory.mktemp(name), **config)


@pytest.fixture(scope="session")
def tiny_model_dir(tiny_model) -> str:
    """A 2-layer Llama with SmolLM2's tokenizer and chat template, saved as a local model folder."""
    return tiny_model("tiny-model")


def _seq_cls_lora(base: str, seed: int = 1):
    """`base` as a classifier with a SEQ_CLS LoRA whose weights (and score head) are far from init, so scores
    differ between answers: (model in eval mode, tokenizer)."""
    import torch

    from alignkit import models
    from alignkit.recipe import ModelConfig

    tok, _ = models.load_tokenizer(base)
    model = models.load_model(ModelConfig(base=base), sequence_classification=True, num_labels=1)
    model.config.pad_token_id = tok.pad_token_id
    model = models.attach_lora(model, {"r": 4, "alpha": 8, "dropout": 0.0}, task_type="SEQ_CLS")
    torch.manual_seed(seed)
    with torch.no_grad():
        for _name, p in model.named_parameters():
            if p.requires_grad:  # lora_A/B and the trainable copy of `score`
                p.copy_(torch.randn_like(p) * 0.5)
    return model.eval(), tok


@pytest.fixture(scope="session")
def seq_cls_lora():
    """seq_cls_lora(base, seed=1) -> (model, tokenizer): an untrained-looking reward model on a local model."""
    return _seq_cls_lora


@pytest.fixture(scope="session")
def tiny_reward_adapter(tiny_model_dir, tmp_path_factory) -> str:
    """A reward model on the tiny model, saved as an adapter folder without a run (no gate to check)."""
    from alignkit import models

    model, tok = _seq_cls_lora(tiny_model_dir, seed=3)
    out = tmp_path_factory.mktemp("tiny-reward") / "adapter"
    models.save_adapter(model, tok, out)
    return str(out)


@pytest.fixture
def in_tmp(tmp_path, monkeypatch) -> Path:
    """Run the test inside a temp folder that has the repo's recipes/ and eval/data linked in."""
    (tmp_path / "recipes").symlink_to(ROOT / "recipes")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def copy_recipe(name: str, dest: Path) -> Path:
    """Copy a bundled recipe to `dest` so a test can edit it."""
    target = dest / Path(name).name
    shutil.copy(ROOT / name, target)
    return target
