"""The compact CPU LM head against TRL's fused head: same loss, per-token fields and LoRA gradients; TRL's
head wherever the compact one does not apply (unpatched model, oversized batch, ALIGNKIT_LM_HEAD=trl)."""

from __future__ import annotations

from alignkit import lm_head


def _lora_pair(base: str):
    """Two identical LoRA models on `base`, both with TRL's fused head; the second gets the compact one."""
    import torch
    from trl.trainer.utils import add_fused_lm_head

    from alignkit import models
    from alignkit.recipe import ModelConfig

    pair = []
    for _ in range(2):
        model = models.load_model(ModelConfig(base=base))
        add_fused_lm_head(model, outputs=("log_probs", "entropy", "is_top1", "mean_logits", "log_sum_sq_probs"))
        torch.manual_seed(7)
        model = models.attach_lora(model, {"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": "all-linear"})
        with torch.no_grad():  # lora_B starts at zero: move it so the adapter changes the logits
            for name, p in model.named_parameters():
                if "lora_B" in name:
                    p.copy_(torch.randn_like(p) * 0.05)
        pair.append(model)
    return pair


def _packed_batch(vocab: int):
    """Two sequences packed in one row (position_ids restart), prompt tokens labelled -100."""
    import torch

    g = torch.Generator().manual_seed(3)
    ids = torch.randint(0, vocab, (1, 40), generator=g)
    labels = ids.clone()
    labels[0, :12] = -100   # first prompt
    labels[0, 20:26] = -100  # second prompt
    position_ids = torch.cat([torch.arange(20), torch.arange(20)]).unsqueeze(0)
    return {"input_ids": ids, "labels": labels, "position_ids": position_ids}


def test_compact_head_matches_trl_loss_fields_and_gradients(tiny_model_dir):
    import torch

    trl_model, compact_model = _lora_pair(tiny_model_dir)
    assert lm_head.use_compact_lm_head(compact_model.get_base_model())
    assert not lm_head.use_compact_lm_head(compact_model.get_base_model()), "patched twice"
    batch = _packed_batch(trl_model.config.vocab_size)
    outs = []
    for model in (trl_model, compact_model):
        out = model(**batch, fused_lm_head=True)
        out.loss.backward()
        outs.append(out)
    want, got = outs
    assert torch.equal(got.label_mask, want.label_mask) and int(got.label_mask.sum()) == 39 - 11 - 6  # shifted: labels 1..11 and 20..25 are -100
    torch.testing.assert_close(got.loss, want.loss, rtol=1e-5, atol=1e-5)
    for field in ("log_probs", "entropy", "mean_logits", "log_sum_sq_probs"):
        torch.testing.assert_close(getattr(got, field), getattr(want, field), rtol=1e-4, atol=1e-4, msg=field)
        assert (getattr(got, field)[~got.label_mask] == 0).all(), f"{field} not zero on ignored positions"
    assert torch.equal(got.is_top1, want.is_top1)
    grads = {n: p.grad for n, p in trl_model.named_parameters() if p.requires_grad}
    assert grads and all(g is not None for g in grads.values())
    for name, p in compact_model.named_parameters():
        if p.requires_grad:
            torch.testing.assert_close(p.grad, grads[name], rtol=1e-4, atol=1e-6, msg=name)
    # num_items_in_batch (gradient accumulation) divides the summed loss, as TRL's does
    torch.testing.assert_close(compact_model(**batch, fused_lm_head=True, num_items_in_batch=42).loss,
                               trl_model(**batch, fused_lm_head=True, num_items_in_batch=42).loss)


def test_unfused_calls_and_generation_are_the_models_own(tiny_model_dir):
    import torch

    trl_model, compact_model = _lora_pair(tiny_model_dir)
    lm_head.use_compact_lm_head(compact_model.get_base_model())
    batch = _packed_batch(trl_model.config.vocab_size)
    with torch.no_grad():
        torch.testing.assert_close(compact_model(input_ids=batch["input_ids"]).logits,
                                   trl_model(input_ids=batch["input_ids"]).logits)
        prompt = batch["input_ids"][:, :5]
        assert torch.equal(compact_model.generate(prompt, max_new_tokens=4, do_sample=False),
                           trl_model.generate(prompt, max_new_tokens=4, do_sample=False))


def test_oversized_batch_and_opt_out_keep_trls_head(tiny_model_dir, monkeypatch):
    import torch

    trl_model, compact_model = _lora_pair(tiny_model_dir)
    lm_head.use_compact_lm_head(compact_model.get_base_model())
    batch = _packed_batch(trl_model.config.vocab_size)

    def must_not_score(*a, **k):
        raise AssertionError("the compact head scored an oversized batch")

    monkeypatch.setattr(lm_head, "_score", must_not_score)
    monkeypatch.setattr(lm_head, "MAX_LOGITS", 20 * trl_model.config.vocab_size)  # 21 labelled tokens > 20
    with torch.no_grad():
        torch.testing.assert_close(compact_model(**batch, fused_lm_head=True).loss,
                                   trl_model(**batch, fused_lm_head=True).loss)

    monkeypatch.setenv("ALIGNKIT_LM_HEAD", "trl")
    assert not lm_head.use_compact_lm_head(trl_model.get_base_model())


def test_a_model_trl_did_not_patch_is_left_alone(tiny_model_dir):
    from alignkit import models
    from alignkit.recipe import ModelConfig

    model = models.load_model(ModelConfig(base=tiny_model_dir))
    assert not lm_head.use_compact_lm_head(model)
    assert "forward" not in vars(model)


def test_the_sft_stage_trains_with_the_compact_head(tiny_model_dir, tmp_path):
    """lifecycle.build_trainer swaps the head on the trainer's model: the stage's model carries it."""
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    from alignkit import lifecycle, models
    from alignkit.recipe import ModelConfig

    tok, _ = models.load_tokenizer(tiny_model_dir)
    model = models.attach_lora(models.load_model(ModelConfig(base=tiny_model_dir)),
                               {"r": 4, "alpha": 8, "target_modules": "all-linear"})
    data = Dataset.from_list([{"prompt": [{"role": "user", "content": f"q{i}"}],
                               "completion": [{"role": "assistant", "content": f"answer {i}"}]} for i in range(4)])
    args = SFTConfig(output_dir=str(tmp_path), max_steps=2, per_device_train_batch_size=2, padding_free=True,
                     max_length=None, use_cpu=True, report_to="none", save_strategy="no", logging_steps=1)
    trainer = lifecycle.build_trainer(SFTTrainer, model=model, args=args, train_dataset=data, processing_class=tok)
    assert vars(trainer.model.get_base_model())["forward"].__func__.__module__ == "alignkit.lm_head"
    trainer.train()
    logged = [h for h in trainer.state.log_history if "loss" in h]
    assert len(logged) == 2 and all(h["loss"] > 0 and 0 <= h["mean_token_accuracy"] <= 1 for h in logged)
