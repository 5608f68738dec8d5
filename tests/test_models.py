"""Model loading: embedded alias cache, Hub ids offline, quantization, LoRA mapping, adapter identity."""

import json

import pytest

from alignkit import models
from alignkit.errors import UserError
from alignkit.recipe import ModelConfig


def test_embedded_alias_resolves_to_a_safetensors_cache():
    path = models.resolve("smollm2-135m-instruct")
    assert path.endswith("models/smollm2-135m-instruct")
    from pathlib import Path

    assert (Path(path) / "model.safetensors").is_file() and (Path(path) / "tokenizer.json").is_file()


def test_tokenizer_checks_and_template_sha():
    tok, sha = models.load_tokenizer("smollm2-135m-instruct")
    assert len(sha) == 64 and tok.eos_token == "<|im_end|>" and tok.pad_token is not None


def test_hub_id_offline_names_hf_hub_offline_and_local_path(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UserError) as e:
        models.load_tokenizer("someorg/not-a-local-model")
    assert "HF_HUB_OFFLINE" in str(e.value) and "local path" in str(e.value)


def test_missing_local_directory():
    with pytest.raises(UserError, match="no such directory"):
        models.resolve("./models/missing")


def test_lora_aliases_and_defaults():
    config = models.lora_config({"alpha": 8, "dropout": 0.0})
    assert config.r == 16 and config.lora_alpha == 8 and config.lora_dropout == 0.0
    assert config.target_modules == "all-linear"


def test_quantization_configs():
    nf4 = models.quantization_config("nf4")
    assert nf4.load_in_4bit and nf4.bnb_4bit_quant_type == "nf4" and nf4.bnb_4bit_use_double_quant
    assert models.quantization_config("int8").load_in_8bit
    assert models.quantization_config("none") is None


def test_nf4_qlora_on_cpu_trains_a_step(tiny_model_dir):
    """bitsandbytes 4-bit works on CPU: load nf4, attach LoRA, one backward gives LoRA gradients."""
    import torch

    model = models.load_model(ModelConfig(base=tiny_model_dir, quantization="nf4"))
    assert model.is_loaded_in_4bit
    model = models.attach_lora(model, {"r": 4})
    ids = torch.tensor([[1, 2, 3, 4, 5]])
    model(input_ids=ids, labels=ids).loss.backward()
    grads = [p.grad for n, p in model.named_parameters() if "lora_A" in n]
    assert grads and all(g is not None for g in grads)


def test_adapter_round_trip_and_base_identity(tiny_model_dir, tmp_path):
    tok, _ = models.load_tokenizer(tiny_model_dir)
    model = models.attach_lora(models.load_model(ModelConfig(base=tiny_model_dir)), {"r": 4})
    models.save_adapter(model, tok, tmp_path / "adapter")
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == models.canonical_id(tiny_model_dir)
    models.check_adapter_base(tmp_path / "adapter", tiny_model_dir)
    with pytest.raises(UserError, match="adapter was trained on"):
        models.check_adapter_base(tmp_path / "adapter", "smollm2-135m-instruct")
    frozen = models.load_adapter(models.load_model(ModelConfig(base=tiny_model_dir)), tmp_path / "adapter",
                                 trainable=False)
    assert not any(p.requires_grad for p in frozen.parameters())
    with pytest.raises(UserError, match="not a PEFT adapter"):
        models.check_adapter_base(tmp_path, tiny_model_dir)
