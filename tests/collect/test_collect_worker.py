"""The background worker: pairs from a policy, near-identical pairs flagged and regenerated."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
from collect_support import make_store

from alignkit.generate import Sampling
from alignkit.recipe import ModelConfig
from collect.config import GenerationConfig
from collect.worker import Worker, load_generators, similarity


@dataclass
class Scripted:
    """A generator that replays canned answers per call: lets a test decide when a pair is identical."""

    name: str
    answers: list[list[str]]
    sampling: Sampling = field(default_factory=lambda: Sampling(do_sample=True, temperature=0.9))
    seeds: list[int] = field(default_factory=list)

    def __call__(self, conversations, seed):
        self.seeds.append(seed)
        batch = self.answers.pop(0)
        assert len(batch) == len(conversations)
        return batch


def _prompts(store, n):
    store.add_prompts([{"prompt": [{"role": "user", "content": f"q{i}"}]} for i in range(n)])


def test_similarity():
    assert similarity("Hello  World", "hello world") == 1.0
    assert similarity("The answer is 4.", "The answer is 4!") > 0.9
    assert similarity("Paris is the capital.", "I cannot help with that request.") < 0.5


def test_identical_pairs_are_flagged_and_regenerated(tmp_path):
    store = make_store(f"sqlite:///{tmp_path}/c.db", overlap=1)
    _prompts(store, 2)
    a = Scripted("policy", [["same answer", "alpha one"], ["a fresh take"]])
    b = Scripted("policy", [["Same  answer", "completely different beta"], ["something else entirely"]])
    cfg = GenerationConfig(batch_size=8, ahead=8, near_duplicate=0.9, seed=100)
    worker = Worker(store, cfg, lambda: (a, b))
    assert worker.step() == 1  # prompt 1's pair was identical: flagged, prompt 2's kept
    assert [pid for pid, _ in worker.todo()] == [1]
    assert worker.step() == 1 and worker.todo() == []
    dump = store.dump()
    flagged = [i for i in dump["items"].values() if i["status"] == "flagged"]
    assert len(flagged) == 1 and dump["candidates"][flagged[0]["first"]]["text"] == "same answer"
    assert a.seeds == [100, 104] and b.seeds == [101, 105]  # new seeds: 2 items existed before the retry
    ready = [i for i in dump["items"].values() if i["status"] == "ready"]
    sampling = dump["candidates"][ready[0]["first"]]["sampling"]
    assert sampling["seed"] == 100 and sampling["temperature"] == 0.9 and sampling["do_sample"] is True
    assert store.next_item  # flagged items are never handed out:
    store.add_user("ann", "annotator", "password-1")
    got = set()
    shown = store.next_item("ann")
    while shown:
        got.add(shown.item_id)
        shown = store.submit("ann", shown.assignment_id, "a", shown.idempotency_key).next
    assert len(got) == 2 and not got & {i for i, it in dump["items"].items() if it["status"] == "flagged"}


def test_gives_up_after_max_attempts_and_waits_when_far_enough_ahead(tmp_path):
    store = make_store(f"sqlite:///{tmp_path}/c.db", overlap=1)
    _prompts(store, 3)
    one, two = (Scripted("p", [["x", "x"], ["x", "x"], ["y"]]) for _ in range(2))
    cfg = GenerationConfig(batch_size=2, ahead=1, max_attempts=2)
    worker = Worker(store, cfg, lambda: (one, two))
    assert worker.step() == 0 and worker.step() == 0
    assert [pid for pid, _ in worker.todo()] == [3]  # prompts 1, 2: two flagged attempts each, given up
    worker.cfg = GenerationConfig(batch_size=2, ahead=0)
    assert worker.step() == 0 and one.answers == [["y"]]  # ahead=0: 0 open items ≥ 0, nothing generated


def test_worker_with_a_tiny_random_model(tiny_model_dir, tmp_path):
    store = make_store(f"sqlite:///{tmp_path}/c.db", overlap=1)
    _prompts(store, 3)
    cfg = GenerationConfig(max_new_tokens=8, batch_size=4, ahead=10, near_duplicate=0.99)
    model_cfg = ModelConfig(base=tiny_model_dir)
    worker = Worker(store, cfg, lambda: load_generators(model_cfg, None, cfg))
    worker.start().join(timeout=120)
    assert worker.error is None and worker.todo() == []
    dump = store.dump()
    ready = [i for i in dump["items"].values() if i["status"] == "ready"]
    assert len(ready) == 3
    for item in ready:
        first, second = dump["candidates"][item["first"]], dump["candidates"][item["second"]]
        assert first["generator"] == tiny_model_dir and first["sampling"]["max_new_tokens"] == 8
        assert first["sampling"]["seed"] + 1 == second["sampling"]["seed"]


@pytest.mark.slow
def test_worker_with_the_embedded_model(tmp_path):
    store = make_store(f"sqlite:///{tmp_path}/c.db", overlap=1)
    _prompts(store, 2)
    cfg = GenerationConfig(max_new_tokens=24, batch_size=2, ahead=4, rival="base")
    model_cfg = ModelConfig(base="smollm2-135m-instruct")
    worker = Worker(store, cfg, lambda: load_generators(model_cfg, None, cfg))
    while worker.todo():
        worker.step(force=True)
    texts = [c["text"] for c in store.dump()["candidates"].values()]
    assert len(texts) >= 4 and all(t.strip() for t in texts)


def test_prerank_scores_each_pair_with_the_reward_model(tmp_path, tiny_reward_adapter):
    """generation.prerank: both answers scored when generated, stored with each candidate, exported with the pair;
    stats count how often the annotators' majority agrees with the reward model."""
    from alignkit.reward_model import RewardScorer
    from collect.agreement import summarize
    from collect.export import ExportRules, build

    store = make_store(f"sqlite:///{tmp_path}/c.db", overlap=1)
    _prompts(store, 3)
    a = Scripted("policy", [["Sure: preheat to 220 C.", "I can't help with that.", "Paris."]])
    b = Scripted("policy", [["No idea, sorry.", "Here is a detailed plan you asked for.", "It is Lyon, I think."]])
    worker = Worker(store, GenerationConfig(batch_size=8, ahead=8, prerank=tiny_reward_adapter), lambda: (a, b))
    assert worker.step() == 3
    dump = store.dump()
    convs = [p for _, p in store.prompts()]
    scorer = RewardScorer.load(tiny_reward_adapter)
    expected = scorer.score(convs + convs, ["Sure: preheat to 220 C.", "I can't help with that.", "Paris.",
                                            "No idea, sorry.", "Here is a detailed plan you asked for.",
                                            "It is Lyon, I think."])
    by_text = {c["text"]: c["sampling"]["reward_score"] for c in dump["candidates"].values()}
    assert [by_text[t] for t in ("Sure: preheat to 220 C.", "No idea, sorry.")] == \
        pytest.approx([expected[0], expected[3]], abs=1e-5)

    store.add_user("ann", "annotator", "password-1")
    for _ in range(3):  # always pick the left answer: a known mix of agreeing and disagreeing with the model
        shown = store.next_item("ann")
        store.submit("ann", shown.assignment_id, "a", shown.idempotency_key, then_next=False)
    dump = store.dump()
    pairs = build(dump, ExportRules())["pairs"]
    assert len(pairs) == 3
    agree = [p["metadata"]["reward_agrees"] for p in pairs]
    assert all(p["metadata"]["reward_agrees"] == (p["metadata"]["reward_chosen"] > p["metadata"]["reward_rejected"])
               for p in pairs)
    stats = summarize(dump, 1)["reward_model_agreement"]
    assert stats == {"items": 3, "agreement": pytest.approx(sum(agree) / 3)}


def test_contrast_pairs_an_answer_that_cannot_open_like_the_refusal_with_the_refusal_continued(tiny_model_dir, tmp_path):
    """generation.contrast: the first answer may not start with the opener's first token (checked against the
    token the tiny model opens with greedily), the second is the policy's own continuation of the opener."""
    import torch

    from alignkit.generate import chat, load_policy

    model, tok = load_policy(ModelConfig(base=tiny_model_dir))
    conv = [{"role": "user", "content": "q0"}]
    ids = tok.apply_chat_template(conv, add_generation_prompt=True, return_tensors="pt", return_dict=True)["input_ids"]
    with torch.no_grad():
        best, second = model(ids).logits[0, -1].topk(2).indices.tolist()
    banned, runner_up = tok.decode([best]), tok.decode([second]).strip()
    assert tok(banned, add_special_tokens=False)["input_ids"][0] == best and runner_up  # the fixture's openings
    free = chat(model, tok, [conv], Sampling(max_new_tokens=4))[0]
    avoided = chat(model, tok, [conv], Sampling(max_new_tokens=4, avoid_opening=banned + " and more words"))[0]
    assert free.startswith(banned.strip()) and avoided.startswith(runner_up) and avoided != free

    store = make_store(f"sqlite:///{tmp_path}/c.db", overlap=1)
    _prompts(store, 3)
    cfg = GenerationConfig(max_new_tokens=6, contrast_max_new_tokens=3, batch_size=4, contrast="I can't help with that.")
    worker = Worker(store, cfg, lambda: load_generators(ModelConfig(base=tiny_model_dir), None, cfg))
    while worker.todo():
        worker.step(force=True)
    dump = store.dump()
    items = [i for i in dump["items"].values() if i["status"] == "ready"]
    assert len(items) == 3
    for item in items:
        answer, refusal = dump["candidates"][item["first"]], dump["candidates"][item["second"]]
        assert refusal["text"].startswith("I can't help with that.") and len(refusal["text"]) > len("I can't help with that.")
        assert not answer["text"].startswith("I ")
        assert answer["sampling"]["avoid_opening"] == refusal["sampling"]["prefix"] == "I can't help with that."
        assert answer["sampling"]["max_new_tokens"] == 6 and refusal["sampling"]["max_new_tokens"] == 3


@pytest.mark.parametrize("generation, message", [
    ("{contrast: \"I can't help with that.\", rival: base}", "generation.contrast and generation.rival: set one"),
    ("{contrast: '  '}", "generation.contrast must be an opener text or null"),
])
def test_contrast_settings_that_cannot_work_are_refused_with_the_file(tmp_path, generation, message):
    from alignkit.errors import UserError
    from alignkit.recipe import load_recipe
    from collect.config import CollectRecipe

    recipe_file = tmp_path / "collect.yaml"
    recipe_file.write_text(f"generation: {generation}\n")
    with pytest.raises(UserError, match=message) as err:
        load_recipe(str(recipe_file), CollectRecipe, [])
    assert str(recipe_file) in str(err.value)
