"""The background worker: pairs from a policy, near-identical pairs flagged and regenerated."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
from collect_support import make_store

from alignkit.generate import Sampling
from alignkit.sections import ModelConfig
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
