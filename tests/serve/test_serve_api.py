"""The OpenAI-compatible API with the official `openai` client against a live server on 127.0.0.1."""

from __future__ import annotations

import json
import threading

import httpx
import openai
import pytest

HELLO = [{"role": "user", "content": "Say hello."}]


def test_openai_client_chats_with_the_promoted_run(live):
    client = live.client()
    raw = client.chat.completions.with_raw_response.create(model="demo", messages=HELLO, max_tokens=8)
    completion = raw.parse()
    assert raw.headers["x-alignkit-run"] == live.ids["sft"] == completion.model_extra["alignkit"]["run"]
    assert completion.id.startswith("chatcmpl-") and raw.headers["x-alignkit-response-id"] == completion.id
    assert isinstance(completion.choices[0].message.content, str)
    assert completion.choices[0].finish_reason in ("stop", "length")
    assert 0 < completion.usage.completion_tokens <= 8
    # a run by id is a model too, and answers differently (its own adapter)
    other = client.chat.completions.create(model=live.ids["dpo"], messages=HELLO, max_tokens=8)
    assert other.model_extra["alignkit"]["run"] == live.ids["dpo"]
    assert other.choices[0].message.content != completion.choices[0].message.content


def test_streaming_gives_the_same_greedy_answer_token_by_token(live):
    client = live.client()
    whole = client.chat.completions.create(model="demo", messages=HELLO, max_tokens=12)
    chunks = list(client.chat.completions.create(model="demo", messages=HELLO, max_tokens=12, stream=True))
    pieces = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(pieces) > 1  # streamed as it was generated, not in one piece at the end
    assert "".join(pieces) == whole.choices[0].message.content
    assert {c.id for c in chunks} == {chunks[0].id} and chunks[-1].choices[0].finish_reason in ("stop", "length")
    assert all(c.model_extra["alignkit"]["run"] == live.ids["sft"] for c in chunks)


def test_models_list_the_pipeline_and_the_servable_runs(live):
    names = [m.id for m in live.client().models.list()]
    assert names[0] == "demo" and set(names[1:]) == {live.ids["sft"], live.ids["dpo"]}  # not the failed one


def test_requests_arriving_together_share_batches(live):
    steps, rows = live.engine.batches, live.engine.batched_requests  # decode steps and the rows they carried
    client = live.client()
    threads = [threading.Thread(target=client.chat.completions.create,
                                kwargs={"model": "demo", "messages": [{"role": "user", "content": f"Count to {i}"}],
                                        "max_tokens": 6}) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    steps, rows = live.engine.batches - steps, live.engine.batched_requests - rows
    assert rows > steps, f"eight concurrent requests never shared a decode step ({rows} rows in {steps} steps)"


def _post(live, path, body, key=None, **kw):
    headers = {"Authorization": f"Bearer {key or live.key}"} if key != "" else {}
    content = body if isinstance(body, (bytes, str)) else json.dumps(body)
    return httpx.post(f"{live.url}{path}", content=content, headers={**headers, "content-type": "application/json",
                                                                    **kw.pop("headers", {})}, timeout=30, **kw)


@pytest.mark.parametrize("body, status, says", [
    ({"model": "nope", "messages": HELLO}, 404, "model 'nope' does not exist; served: demo"),
    ({"model": "demo", "messages": "hi"}, 400, "'messages' must be a non-empty list"),
    ({"model": "demo", "messages": [{"role": "robot", "content": "x"}]}, 400, "messages[0]: expected"),
    ({"model": "demo", "messages": [{"role": "user", "content": 3}]}, 400, "messages[0]: expected"),
    ({"model": "demo", "messages": [{"role": "assistant", "content": "x"}]}, 400, "last message must be the user's"),
    ({"model": "demo", "messages": HELLO, "max_tokens": 65}, 400, "'max_tokens' must be an integer in 1..64"),
    ({"model": "demo", "messages": HELLO, "max_tokens": True}, 400, "'max_tokens' must be an integer"),
    ({"model": "demo", "messages": HELLO, "temperature": 9}, 400, "'temperature' must be a number"),
    ({"model": "demo", "messages": HELLO, "stream": "yes"}, 400, "'stream' must be true or false"),
    ({"model": "demo", "messages": [{"role": "user", "content": "word " * 300}]}, 400, "exceeds the context length 256"),
    ('{"model": "demo", "messages": [{"role": "user", "content": "\\ud800"}]}', 400, "lone surrogate"),
    ("{not json", 400, "not valid JSON"),
    ([1, 2], 400, "must be a JSON object"),
])
def test_bad_requests_get_one_clear_4xx(live, body, status, says):
    r = _post(live, "/v1/chat/completions", body)
    assert r.status_code == status and says in r.json()["error"]["message"], r.text


def test_auth_size_and_rate_limits(live):
    assert _post(live, "/v1/chat/completions", {"model": "demo", "messages": HELLO}, key="").status_code == 401
    wrong = _post(live, "/v1/chat/completions", {"model": "demo", "messages": HELLO}, key="ak-wrong")
    assert wrong.status_code == 401 and wrong.headers["www-authenticate"] == "Bearer"
    with pytest.raises(openai.AuthenticationError):
        live.client(default_headers={"Authorization": "Bearer nope"}).models.list()
    big = _post(live, "/v1/chat/completions", b"x" * 300_000)
    assert big.status_code == 413 and "over 262144 bytes" in big.json()["error"]["message"]


def test_rate_limit_per_key(tiny_model_dir, adapters, tmp_path):
    from dataclasses import replace

    from tests.serve.conftest import Live, make_runs, recipe_for

    make_runs(tmp_path / "demo", adapters)
    recipe = recipe_for(tiny_model_dir, tmp_path)
    server = Live(replace(recipe, server=replace(recipe.server, rate_limit_per_minute=3)), tmp_path / "demo")
    try:
        codes = [httpx.get(f"{server.url}/v1/models", headers={"Authorization": f"Bearer {server.key}"}).status_code
                 for _ in range(4)]
        assert codes == [200, 200, 200, 429]
    finally:
        server.stop()


def test_nothing_promoted_starts_and_says_so_then_picks_up_a_promotion(tiny_model_dir, adapters, tmp_path):
    import time

    from alignkit import promotion
    from tests.serve.conftest import Live, make_runs, recipe_for

    ids = make_runs(tmp_path / "demo", adapters, promote=None)
    server = Live(recipe_for(tiny_model_dir, tmp_path), tmp_path / "demo")
    try:
        models = {m.id: m for m in server.client().models.list()}
        assert "nothing promoted yet" in models["demo"].model_extra["alignkit"]["message"]
        r = _post(server, "/v1/chat/completions", {"model": "demo", "messages": HELLO})
        assert r.status_code == 503 and "runs --dir" in r.json()["error"]["message"] and "promote" in r.text
        promotion.promote(tmp_path / "demo", ids["dpo"])
        deadline = time.monotonic() + 5
        while server.router.current != ids["dpo"]:
            assert time.monotonic() < deadline, "promotion not picked up"
            time.sleep(0.05)
        done = server.client().chat.completions.create(model="demo", messages=HELLO, max_tokens=4)
        assert done.model_extra["alignkit"]["run"] == ids["dpo"]
    finally:
        server.stop()


def test_metrics_in_prometheus_text(live):
    live.client().chat.completions.create(model="demo", messages=HELLO, max_tokens=4)
    text = httpx.get(f"{live.url}/metrics").text
    assert f'alignkit_requests_total{{model="demo",run="{live.ids["sft"]}",variant=""}} 1.0' in text
    assert "alignkit_refusal_sampled_total" in text and "alignkit_request_seconds_bucket" in text
