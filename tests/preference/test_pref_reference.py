"""The step-0 reference check: passes when TRL's reference is the SFT policy, catches a bare-base reference."""

from __future__ import annotations

import pytest
from datasets import Dataset
from pref_helpers import short_pairs

from alignkit import models
from alignkit.errors import TrainingFailed
from alignkit.recipe import ModelConfig
from alignkit.lifecycle import precision_defaults
from preference.reference import check_reference


def sft_policy(model_dir, adapter_dir):
    return models.load_adapter(models.load_model(ModelConfig(base=model_dir)), adapter_dir, trainable=True)


def dpo_trainer(model, tmp_path, *, precompute: bool, ref_model=None):
    from trl import DPOConfig, DPOTrainer

    args = DPOConfig(output_dir=str(tmp_path / "out"), report_to="none", precompute_ref_log_probs=precompute,
                     per_device_train_batch_size=4, beta=0.1, **precision_defaults())
    return DPOTrainer(model=model, ref_model=ref_model, args=args, train_dataset=Dataset.from_list(short_pairs(8)),
                      processing_class=models.load_tokenizer(model.config._name_or_path)[0])


@pytest.mark.parametrize("precompute", [True, False])
def test_right_reference_passes_with_zero_implicit_rewards(precompute, sft_parent, tiny_model_dir, tmp_path):
    model = sft_policy(tiny_model_dir, sft_parent.adapter_dir)
    trainer = dpo_trainer(model, tmp_path, precompute=precompute)
    assert set(model.peft_config) == {"default", "ref"}  # one base model, two adapters: policy and frozen copy
    assert not any(p.requires_grad for n, p in model.named_parameters() if ".ref." in n)
    result = check_reference(trainer, n_rows=4, tolerance=1e-4)
    assert result.passed and result.sequences == 8 and result.max_abs_reward <= 1e-4  # 4 pairs: 8 sequences


def test_bare_base_reference_is_caught(sft_parent, tiny_model_dir, tmp_path):
    """Without the "ref" copy TRL falls back to disabled adapters: the bare base model, the classic mistake."""
    model = sft_policy(tiny_model_dir, sft_parent.adapter_dir)
    trainer = dpo_trainer(model, tmp_path, precompute=False)
    model.delete_adapter("ref")
    with pytest.raises(TrainingFailed, match=r"step-0 reference check failed: .* bare base model"):
        check_reference(trainer, n_rows=4, tolerance=1e-4)


def test_precomputed_reference_from_the_wrong_model_is_caught(sft_parent, tiny_model_dir, tmp_path):
    """An explicit ref_model = the base model: the precomputed reference log-probs are the wrong ones."""
    model = sft_policy(tiny_model_dir, sft_parent.adapter_dir)
    base = models.load_model(ModelConfig(base=tiny_model_dir))
    trainer = dpo_trainer(model, tmp_path, precompute=True, ref_model=base)
    with pytest.raises(TrainingFailed, match="largest implicit reward"):
        check_reference(trainer, n_rows=4, tolerance=1e-4)
