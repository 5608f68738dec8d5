"""The real embedded model behind the server, with the official openai client (slow), and the vLLM engine on a
GPU (gpu marker: needs CUDA and `vllm` installed)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.serve.conftest import Live, free_port


def _embedded_runs(tmp_path: Path) -> str:
    from alignkit import models, promotion, runs
    from alignkit.recipe import ModelConfig

    tokenizer, _ = models.load_tokenizer("smollm2-135m-instruct")
    model = models.attach_lora(models.load_model(ModelConfig()), {"r": 4, "lora_alpha": 8,
                                                                 "target_modules": ["q_proj", "v_proj"]})
    run = runs.start_run(tmp_path / "demo", "sft", {})
    models.save_adapter(model, tokenizer, run.adapter_dir)  # B = 0: answers as the base model does
    run.finish("completed", gate="pass")
    promotion.promote(tmp_path / "demo", run.id)
    return run.id


@pytest.mark.slow
def test_openai_client_chats_with_the_embedded_model(tmp_path):
    from alignkit.recipe import ModelConfig
    from serve.config import FeedbackConfig, ServerConfig, ServeRecipe

    run_id = _embedded_runs(tmp_path)
    recipe = ServeRecipe(model=ModelConfig(), server=ServerConfig(port=free_port(), watch_interval_s=0.2),
                         feedback=FeedbackConfig(store=f"sqlite:///{tmp_path / 'collect.db'}"))
    server = Live(recipe, tmp_path / "demo")
    try:
        reply = server.client().chat.completions.create(
            model="demo", messages=[{"role": "user", "content": "What is the capital of France?"}], max_tokens=24)
        assert "Paris" in reply.choices[0].message.content  # the real model answers, greedily
        assert reply.model_extra["alignkit"]["run"] == run_id
    finally:
        server.stop()


@pytest.mark.gpu
def test_vllm_engine_serves_and_swaps_adapters(tmp_path):
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available() or shutil.which("vllm") is None:
        pytest.skip("needs a CUDA GPU and vllm installed")
    from alignkit.recipe import ModelConfig
    from serve.config import EngineConfig, FeedbackConfig, ServerConfig, ServeRecipe

    first = _embedded_runs(tmp_path)
    recipe = ServeRecipe(model=ModelConfig(), engine=EngineConfig(kind="vllm", vllm_args=["--gpu-memory-utilization",
                                                                                          "0.3"]),
                         server=ServerConfig(port=free_port(), watch_interval_s=0.2),
                         feedback=FeedbackConfig(store=f"sqlite:///{tmp_path / 'collect.db'}"))
    server = Live(recipe, tmp_path / "demo")
    try:
        client = server.client()
        reply = client.chat.completions.create(model="demo", messages=[{"role": "user", "content": "Hi"}],
                                               max_tokens=8)
        assert reply.model_extra["alignkit"]["run"] == first and reply.usage.completion_tokens > 0
        chunks = list(client.chat.completions.create(model="demo", messages=[{"role": "user", "content": "Hi"}],
                                                     max_tokens=8, stream=True))
        assert chunks[-1].choices[0].finish_reason in ("stop", "length")
        second = _embedded_runs(tmp_path)
        import time

        deadline = time.monotonic() + 120
        while server.router.current != second:
            assert time.monotonic() < deadline
            time.sleep(0.2)
        reply = client.chat.completions.create(model="demo", messages=[{"role": "user", "content": "Hi"}],
                                               max_tokens=8)
        assert reply.model_extra["alignkit"]["run"] == second
    finally:
        server.stop()
