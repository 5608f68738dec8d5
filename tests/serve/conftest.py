"""Served run folders on the tiny model: two passing runs (SFT, DPO) and one whose gate failed, each with a
LoRA adapter whose weights are far from init (so each adapter answers differently), and a live server on
127.0.0.1 with a real API key."""

from __future__ import annotations

import socket
import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest


def _adapter(base: str, out: Path, seed: int) -> None:
    import torch

    from alignkit import models
    from alignkit.recipe import ModelConfig

    tokenizer, _ = models.load_tokenizer(base)
    model = models.attach_lora(models.load_model(ModelConfig(base=base)), {"r": 4, "lora_alpha": 8,
                                                                        "target_modules": ["q_proj", "v_proj"]})
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:  # peft starts B at zero (adapter = base); move it so the answers differ
                p.normal_(0, 0.5)
    models.save_adapter(model, tokenizer, out)


@pytest.fixture(scope="session")
def sharp_model_dir(tiny_model) -> str:
    """The tiny model's shape, initialised 15× wider: its attention is peaked, so a wrong position, a row's KV
    in the wrong place or an unmasked pad changes its greedy answer (at the usual init it barely would)."""
    return tiny_model("sharp-model", initializer_range=0.3)


@pytest.fixture(scope="session")
def adapters(tiny_model_dir, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("serve-adapters")
    out = {}
    for name, seed in (("sft", 1), ("dpo", 2), ("bad", 3)):
        _adapter(tiny_model_dir, root / name, seed)
        out[name] = root / name
    return out


def make_runs(root: Path, adapters: dict[str, Path], promote: str | None = "sft") -> dict[str, str]:
    """A run folder with runs sft (pass), dpo (warn, child of sft) and bad (fail); `promote` names one."""
    import shutil

    from alignkit import promotion, runs

    ids = {}
    for name, gate in (("sft", "pass"), ("dpo", "warn"), ("bad", "fail")):
        run = runs.start_run(root, name if name != "bad" else "dpo", {}, parent=ids.get("sft"))
        shutil.copytree(adapters[name], run.adapter_dir)
        run.finish("completed", gate=gate)
        ids[name] = run.id
        time.sleep(0.01)
    if promote:
        promotion.promote(root, ids[promote])
    return ids


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Live:
    """A uvicorn server in a thread, stopped at the end of the test."""

    def __init__(self, recipe, runs_dir: Path):
        import uvicorn

        from serve import keys
        from serve.cli import build

        self.key = keys.add(runs_dir, "tester")
        self.asgi, self.app, self.engine = build(recipe, str(runs_dir))
        self.router = self.app.state.router
        self.port = recipe.server.port
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(self.asgi, host="127.0.0.1", port=self.port, log_level="error"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert time.monotonic() < deadline, "server did not start"
            time.sleep(0.05)

    def client(self, **kw):
        from openai import OpenAI

        return OpenAI(base_url=f"{self.url}/v1", api_key=self.key, max_retries=0, timeout=60, **kw)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)
        self.app.state.stop.set()
        self.engine.close()


def recipe_for(base: str, tmp_path: Path, **sections):
    from alignkit.recipe import ModelConfig
    from serve.config import EngineConfig, FeedbackConfig, ServerConfig, ServeRecipe

    recipe = ServeRecipe(model=ModelConfig(base=base), engine=EngineConfig(max_batch=8, max_wait_ms=20),
                         server=ServerConfig(port=free_port(), watch_interval_s=0.1, default_max_tokens=8,
                                             max_tokens=64, context_length=256),
                         feedback=FeedbackConfig(store=f"sqlite:///{tmp_path / 'collect.db'}"))
    return replace(recipe, **sections)


@pytest.fixture
def live(tiny_model_dir, adapters, tmp_path):
    """A server following a run folder whose SFT run is promoted; `.ids` names the runs."""
    runs_dir = tmp_path / "demo"
    ids = make_runs(runs_dir, adapters)
    server = Live(recipe_for(tiny_model_dir, tmp_path), runs_dir)
    server.ids, server.runs_dir = ids, runs_dir
    yield server
    server.stop()
