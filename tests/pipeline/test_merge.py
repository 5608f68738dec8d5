"""Merge fidelity: adapter-on-base and the merged model agree (KL per token under the bound)."""

import pytest
import torch

from alignkit import models, runs
from alignkit.export import merge
from alignkit.recipe import ModelConfig


def fake_run(root, base, quantization="none"):
    """A completed run whose adapter has random non-zero LoRA B (so merging changes the weights)."""
    run = runs.start_run(root, "sft", {"model": {"base": base, "quantization": quantization}})
    tok, _ = models.load_tokenizer(base)
    model = models.attach_lora(models.load_model(ModelConfig(base=base, quantization=quantization)), {"r": 4})
    torch.manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.02)
    models.save_adapter(model, tok, run.adapter_dir)
    run.finish("completed")
    return run


def test_merge_tiny_model(tmp_path, tiny_model_dir):
    run = fake_run(tmp_path / "runs", tiny_model_dir)
    result = merge(run.id, tmp_path / "merged", tmp_path / "runs")
    assert result["kl_max"] < 1e-3 and (tmp_path / "merged" / "model.safetensors").is_file()
    from transformers import AutoModelForCausalLM

    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged")
    assert not any("lora" in n for n, _ in merged.named_parameters())


@pytest.mark.slow
def test_merge_fidelity_on_the_embedded_model(tmp_path):
    run = fake_run(tmp_path / "runs", "smollm2-135m-instruct")
    result = merge(run.id, tmp_path / "merged", tmp_path / "runs")
    assert result["kl_max"] < 1e-3 and result["kl_mean"] < 1e-4
    assert (tmp_path / "merged" / "tokenizer.json").is_file()
