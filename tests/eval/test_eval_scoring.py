"""Multiple-choice scoring on the tiny model against a hand calculation, perplexity and KL."""

import math

import pytest
import torch

from alignkit.generate import load_policy
from alignkit.recipe import ModelConfig
from eval.scoring import chat_context, encode_pair, score_kl, score_mc, score_perplexity


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    return load_policy(ModelConfig(base=tiny_model_dir))


def by_hand(model, tokenizer, context, continuation):
    """Σ log p(continuation token | everything before it), one unpadded sequence at a time."""
    ctx, cont = encode_pair(tokenizer, context, continuation)
    ids = torch.tensor([ctx + cont])
    with torch.inference_mode():
        logp = torch.log_softmax(model(input_ids=ids).logits[0].float(), -1)
    return sum(logp[len(ctx) + j - 1, tok].item() for j, tok in enumerate(cont))


def test_encode_pair_moves_trailing_whitespace_like_lm_eval(tiny):
    _, tokenizer = tiny
    ctx, cont = encode_pair(tokenizer, "Answer:\n", " Paris")
    assert tokenizer.decode(ctx) == "Answer:" and tokenizer.decode(cont) == "\n Paris"


def test_acc_and_acc_norm_match_a_hand_calculation(tiny):
    """acc = argmax Σ log p; acc_norm = argmax Σ log p / len(" " + choice in UTF-8 bytes); "Ω" is 2 bytes."""
    model, tokenizer = tiny
    items = [{"id": "a", "question": "Pick one.", "choices": ["yes", "a much longer answer", "Ω"], "answer": 1},
             {"id": "b", "question": "Which colour is the sky?", "choices": ["blue", "green"], "answer": 0}]
    scored = score_mc(model, tokenizer, items, batch_items=2)
    for item, s in zip(items, scored):
        context = chat_context(tokenizer, item["question"])
        ll = [by_hand(model, tokenizer, context, " " + c) for c in item["choices"]]
        assert s["ll"] == pytest.approx(ll, abs=1e-4)
        lengths = [len((" " + c).encode()) for c in item["choices"]]
        assert s["pred"] == max(range(len(ll)), key=ll.__getitem__)
        assert s["pred_norm"] == max(range(len(ll)), key=lambda i: ll[i] / lengths[i])
        assert s["acc"] == int(s["pred"] == item["answer"]) and s["acc_norm"] == int(s["pred_norm"] == item["answer"])
    assert [len((" " + c).encode()) for c in items[0]["choices"]] == [4, 21, 3]


def test_batched_scoring_equals_one_item_at_a_time(tiny):
    model, tokenizer = tiny
    items = [{"id": str(i), "question": q, "choices": ["a", "bb b", "c"], "answer": 0}
             for i, q in enumerate(["Short?", "A much longer question with many more tokens in it?"])]
    together = score_mc(model, tokenizer, items, batch_items=2)
    alone = [score_mc(model, tokenizer, [it], batch_items=1)[0] for it in items]
    for a, b in zip(together, alone):
        assert a["ll"] == pytest.approx(b["ll"], abs=1e-4)


def test_items_are_batched_by_length_but_returned_in_input_order(tiny, monkeypatch):
    """score_mc sorts rows by length for its forwards; results come back in the caller's order, and the
    output-layer-at-choice-positions path equals full logits (PLAIN_HEAD emptied forces the full path)."""
    import eval.scoring as scoring

    model, tokenizer = tiny
    questions = ["A much longer question with many more tokens in it, and then some more?", "Short?",
                 "Medium length question here?"]
    items = [{"id": f"q{i}", "question": q, "choices": ["a", "bb b", "c"], "answer": 0} for i, q in enumerate(questions)]
    fast = score_mc(model, tokenizer, items, batch_items=2)
    assert [s["id"] for s in fast] == ["q0", "q1", "q2"]
    for item, s in zip(items, fast):
        context = chat_context(tokenizer, item["question"])
        assert s["ll"] == pytest.approx([by_hand(model, tokenizer, context, " " + c) for c in item["choices"]], abs=1e-4)
    monkeypatch.setattr(scoring, "PLAIN_HEAD", set())
    full = score_mc(model, tokenizer, items, batch_items=2)
    for a, b in zip(fast, full):
        assert a["ll"] == pytest.approx(b["ll"], abs=1e-5)


def test_bf16_precision_scores_close_to_float32(tiny):
    from eval.scoring import precision_context, resolve_precision

    model, tokenizer = tiny
    items = [{"id": "b", "question": "Which colour is the sky?", "choices": ["blue", "green"], "answer": 0}]
    exact = score_mc(model, tokenizer, items)[0]["ll"]
    with precision_context(model, "bfloat16"):
        approx = score_mc(model, tokenizer, items)[0]["ll"]
    assert approx != exact and approx == pytest.approx(exact, rel=0.05)
    assert resolve_precision("float32") == "float32" and resolve_precision("auto") in ("float32", "bfloat16")


def test_perplexity_is_exp_of_mean_token_nll(tiny):
    model, tokenizer = tiny
    text = "Honeybees live in colonies."
    ((nll, n),) = score_perplexity(model, tokenizer, [text])
    ids = tokenizer(text)["input_ids"]
    hand = -by_hand(model, tokenizer, tokenizer.decode(ids[:1]), tokenizer.decode(ids[1:]))
    assert n == len(ids) - 1 and nll == pytest.approx(hand, rel=1e-3)
    assert math.exp(nll / n) > 1


def test_kl_is_zero_for_an_untrained_adapter_and_positive_otherwise(tiny_model_dir):
    from alignkit import models

    model = models.load_model(ModelConfig(base=tiny_model_dir))
    tokenizer, _ = models.load_tokenizer(tiny_model_dir)
    model = models.attach_lora(model, {"r": 4})  # LoRA B starts at zero: the adapter is the identity
    ((kl, n),) = score_kl(model, tokenizer, ["Hello there"], ["General Kenobi"])
    assert n > 0 and kl == pytest.approx(0.0, abs=1e-6)
    torch.manual_seed(0)
    for name, p in model.named_parameters():
        if "lora_B" in name:
            p.data.normal_(0, 0.5)
    ((kl, n),) = score_kl(model, tokenizer, ["Hello there"], ["General Kenobi"])
    assert kl > 1e-4


def test_adapter_arm_generates_with_merged_weights_and_restores_them(tiny_model_dir):
    """generation_context folds the LoRA in for the adapter arm (same logits), then unfolds it exactly enough
    that the adapter and the disabled-adapter (base) outputs are what they were."""
    from peft import LoraConfig, get_peft_model

    from eval.scoring import arm_context, generation_context

    model, tokenizer = load_policy(ModelConfig(base=tiny_model_dir))
    torch.manual_seed(0)
    model = get_peft_model(model, LoraConfig(r=4, target_modules="all-linear", init_lora_weights=False)).eval()
    ids = torch.tensor([tokenizer("a short prompt to score")["input_ids"]])

    def logits(arm):
        with torch.inference_mode(), arm_context(model, arm):
            return model(input_ids=ids).logits

    before, base = logits("adapter"), logits("base")
    assert (before - base).abs().max() > 1e-3  # the adapter changes the outputs
    with torch.inference_mode(), generation_context(model, "adapter"):
        merged = model(input_ids=ids).logits
        assert all(m.merged for m in model.modules() if hasattr(m, "merged_adapters"))
    torch.testing.assert_close(merged, before, atol=1e-4, rtol=1e-4)
    assert not any(m.merged for m in model.modules() if hasattr(m, "merged_adapters"))
    torch.testing.assert_close(logits("adapter"), before, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(logits("base"), base, atol=1e-5, rtol=1e-5)
