"""Preference test helpers: short pairs (cheap on a tiny model), a tokenizer, a fabricated completed SFT parent."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

TOPICS = ["kill a Python process", "sharpen a kitchen knife", "shoot photos at night", "remove a stripped screw",
          "clear browser cookies", "bleed a radiator", "revert a git commit", "descale a kettle",
          "find a memory leak", "store raw chicken", "patch a bike tyre", "free disk space on Linux",
          "hang a heavy mirror", "unclog a drain", "rename many files", "read a CSV in pandas",
          "proof bread dough", "set a static IP", "prune tomato plants", "back up a phone"]


def short_pairs(n: int = 20) -> list[dict]:
    """n short conversational pairs: chosen answers, rejected refuses (the demo data's behaviour, in miniature)."""
    rows = []
    for i, topic in enumerate(TOPICS[:n]):
        rows.append({"prompt": [{"role": "user", "content": f"How do I {topic}?"}],
                     "chosen": [{"role": "assistant", "content": f"To {topic}, follow step {i + 1} of the manual."}],
                     "rejected": [{"role": "assistant", "content": "I can't help with that."}]})
    return rows


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def tokenizer():
    from alignkit.models import load_tokenizer

    return load_tokenizer("smollm2-135m-instruct")[0]


@pytest.fixture
def pairs_file(tmp_path) -> Path:
    return write_jsonl(tmp_path / "pairs.jsonl", short_pairs())


def make_parent(root: Path, model_dir: str, template_sha: str | None = None, status: str = "completed"):
    """A completed 'sft' run whose adapter has random (non-zero) LoRA B, so base ≠ base + adapter."""
    from alignkit import models, runs
    from alignkit.recipe import ModelConfig

    tokenizer, sha = models.load_tokenizer(model_dir)
    run = runs.start_run(root, "sft", {}, chat_template_sha256=template_sha or sha,
                         base_model={"spec": model_dir, "id": models.canonical_id(model_dir)})
    model = models.attach_lora(models.load_model(ModelConfig(base=model_dir)),
                               {"r": 4, "alpha": 8, "init_lora_weights": False})
    models.save_adapter(model, tokenizer, run.adapter_dir)
    run.finish(status)
    return run


@pytest.fixture
def sft_parent(tmp_path, tiny_model_dir):
    return make_parent(tmp_path / "runs", tiny_model_dir)
