"""Hot swap and rollback under load (no request fails, in-flight ones finish on the old adapter, the old one
is unloaded afterwards), a promoted run whose gate failed is refused, and sticky A/B."""

from __future__ import annotations

import threading
import time
from dataclasses import replace

from alignkit import promotion

HELLO = [{"role": "user", "content": "Tell me a story."}]


def _wait(predicate, seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_ten_swaps_under_load_lose_no_request(live):
    client = live.client()
    stop, results, failures = threading.Event(), [], []

    def worker(i: int) -> None:
        n = 0
        while not stop.is_set() and n < 200:  # bounded in count and (below) in time
            n += 1
            try:
                started = live.router.current
                done = client.chat.completions.create(model="demo", messages=HELLO, max_tokens=6, user=f"u{i}")
                results.append((started, done.model_extra["alignkit"]["run"], done.choices[0].finish_reason))
            except Exception as e:  # any failure is what this test counts
                failures.append(repr(e))

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    # a long streamed request that is running when the first swap happens
    stream = client.chat.completions.create(model="demo", messages=HELLO, max_tokens=48, stream=True)
    first = next(iter(stream))
    sft, dpo = live.ids["sft"], live.ids["dpo"]
    for n in range(10):  # promote DPO, roll back to SFT, five times
        if n % 2 == 0:
            promotion.promote(live.runs_dir, dpo)
        else:
            promotion.rollback(live.runs_dir)
        target = dpo if n % 2 == 0 else sft
        _wait(lambda: live.router.current == target)
        time.sleep(0.3)  # let requests run on the new adapter
    rest = list(stream)
    stop.set()
    for t in threads:
        t.join(60)
    assert not failures, failures[:3]
    assert len(results) >= 30 and {run for _, run, _ in results} == {sft, dpo}
    assert rest[-1].choices[0].finish_reason in ("stop", "length")
    assert {c.model_extra["alignkit"]["run"] for c in [first, *rest]} == {sft}  # finished on the adapter it began on
    assert live.router.swaps == 10
    _wait(lambda: live.engine.loaded == {sft})  # the retired DPO adapter was unloaded once idle


def test_a_promoted_run_whose_gate_failed_is_refused_and_logged(live):
    promotion.promote(live.runs_dir, live.ids["bad"], force=True, reason="testing the server's refusal")
    _wait(lambda: live.router.refused)
    assert live.router.current == live.ids["sft"] and "gate 'fail'" in live.router.refused[-1]["reason"]
    done = live.client().chat.completions.create(model="demo", messages=HELLO, max_tokens=4)
    assert done.model_extra["alignkit"]["run"] == live.ids["sft"]


def test_ab_split_is_sticky_per_user_and_reports_each_variant(tiny_model_dir, adapters, tmp_path):
    import httpx

    from serve.config import ABConfig
    from tests.serve.conftest import Live, make_runs, recipe_for

    ids = make_runs(tmp_path / "demo", adapters)
    recipe = replace(recipe_for(tiny_model_dir, tmp_path), ab=ABConfig(runs=[ids["sft"], ids["dpo"]], split=0.5))
    server = Live(recipe, tmp_path / "demo")
    try:
        client = server.client()
        seen: dict[str, set] = {}
        for user in [f"user-{i}" for i in range(12)] * 2:
            done = client.chat.completions.create(model="demo", messages=HELLO, max_tokens=2, user=user)
            meta = done.model_extra["alignkit"]
            seen.setdefault(user, set()).add((meta["variant"], meta["run"]))
        assert all(len(v) == 1 for v in seen.values())  # sticky: each user always on one side
        sides = {next(iter(v)) for v in seen.values()}
        assert sides == {("A", ids["sft"]), ("B", ids["dpo"])}
        metrics = httpx.get(f"{server.url}/metrics").text
        assert 'variant="A"' in metrics and 'variant="B"' in metrics
    finally:
        server.stop()
    from serve.routing import variant_of

    assert {variant_of(f"user-{i}", 1.0) for i in range(50)} == {"A"}  # split 1.0: everyone on A
    assert 15 < sum(variant_of(f"user-{i}", 0.5) == "A" for i in range(50)) < 35
