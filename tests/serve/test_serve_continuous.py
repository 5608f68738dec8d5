"""Continuous batching in the transformers engine, on the engine directly (no HTTP): requests that join a
running batch at different decode steps get, token for token, what each one gets from `model.generate`
alone; a finished or cancelled row leaves the batch at once; other groups wait for the batch to drain; a
failing prefill or step fails only its own requests; a retired adapter outlives the row still using it."""

from __future__ import annotations

import contextlib
import threading
import time
import types

import pytest

from serve.engine import FINISH, Job

SHORT = [{"role": "user", "content": "Hi"}]
LONG = [{"role": "user", "content": "Tell me a long story about a dragon, a knight and a very old castle by the sea."}]
MATH = [{"role": "user", "content": "What is 2 + 2?"}]
HELLO = [{"role": "user", "content": "Say hello to my friend Ada, who is visiting from Paris."}]
COLORS = [{"role": "system", "content": "You answer briefly."},
          {"role": "user", "content": "Name three colours of the rainbow, please."}]


def _engine(base: str, **kw):
    from alignkit.recipe import ModelConfig
    from serve.engine import TransformersEngine

    kw.setdefault("max_wait_ms", 0)
    return TransformersEngine(ModelConfig(base=base), max_batch=kw.pop("max_batch", 8), **kw)


def _job(conversation, max_tokens: int, adapter: str | None = None, cancel_after: int | None = None, **kw) -> Job:
    done, pieces = threading.Event(), []

    def emit(piece):
        if piece is FINISH:
            done.set()
            return
        pieces.append(piece)
        if cancel_after is not None and len(pieces) >= cancel_after:
            job.cancelled = True  # what the app does when the client goes away

    job = Job(conversation, adapter, max_tokens, emit=emit, **kw)
    job.done, job.pieces = done, pieces
    return job


def _schedule(engine, plan: dict[int, list[Job]], each_step=None) -> None:
    """Hand plan[s]'s jobs to the engine right before decode step s, so they join the batch at step s."""
    original = engine._iterate

    def iterate():
        if each_step is not None:
            each_step(engine.batches)
        for job in plan.pop(engine.batches, []):
            engine._pending.append(job)
        original()

    engine._iterate = iterate


def _wait(engine, jobs, seconds: float = 120.0) -> None:
    """Until the jobs finished and the engine is idle (a row finishes inside the step it leaves; the step is
    counted after that)."""
    for job in jobs:
        assert job.done.wait(seconds), f"a job (max_tokens {job.max_tokens}) did not finish"
    deadline = time.monotonic() + seconds
    while engine._batch is not None or engine._pending:
        assert time.monotonic() < deadline, "the engine did not go idle"
        time.sleep(0.005)


def _alone(engine, job) -> tuple[list[int], str]:
    """The job's greedy answer from `model.generate` on its own (no batch, no padding): (tokens, reason)."""
    import torch

    text = engine.tokenizer.apply_chat_template(job.conversation, tokenize=False, add_generation_prompt=True)
    enc = engine.tokenizer(text, return_tensors="pt", add_special_tokens=False)
    with torch.inference_mode(), engine._scope(job.adapter), plain_linears(engine.model):
        out = engine.model.generate(**enc, max_new_tokens=job.max_tokens, do_sample=False, temperature=None,
                                    top_p=None, top_k=None, pad_token_id=engine.tokenizer.pad_token_id)
    new = out[0, enc["input_ids"].shape[1]:].tolist()
    for i, token in enumerate(new):
        if token in engine.eos_ids:
            return new[:i], "stop"
    return new, "length"


@contextlib.contextmanager
def plain_linears(model):
    """The model as loaded, without the engine's packed weights (serve/packing.py): what `generate` computes
    outside the server."""
    from serve import packing

    packed = [m for m in model.modules() if "forward" in vars(m) and hasattr(m, "_packed")]
    for module in packed:
        del module.forward  # back to nn.Linear.forward
    try:
        yield
    finally:
        for module in packed:
            module.forward = types.MethodType(packing._forward, module)


def _rows_per_step(spans: list[tuple[int, Job]]) -> list[int]:
    """The row count each decode step must have when each job joined at its step and left when it finished: a
    row steps once per token after the prefill's, plus once more for the EOS it stopped at."""
    lives = []
    for joined, job in spans:
        r = job.result
        lives.append((joined, r["completion_tokens"] - (r["finish_reason"] in ("length", "cancelled"))))
    end = max(j + n for j, n in lives)
    return [sum(j <= s < j + n for j, n in lives) for s in range(end)]


def _check_joins_match_generate_alone(engine, adapter: str | None, max_tokens=(20, 12, 16, 9, 10)) -> None:
    jobs = [_job(conv, n, adapter) for conv, n in zip((LONG, SHORT, MATH, HELLO, COLORS), max_tokens)]
    for _ in jobs:
        if adapter:
            engine.acquire(adapter)
    a, b, c, d, e = jobs
    # b joins at step 2, c and d (prefilled together, different lengths) at step 5, e (its own system prompt) at 7
    _schedule(engine, {2: [b], 5: [c, d], 7: [e]})
    engine.submit(a)
    _wait(engine, jobs)
    steps = [rows for rows, _ in engine.recent_steps]
    assert steps[:2] == [1, 1] and steps[2] >= 2 and max(steps) >= 3, steps
    assert steps == _rows_per_step([(0, a), (2, b), (5, c), (5, d), (7, e)])  # each left the step it finished
    assert engine.prefills == 4 and engine.prefilled_requests == 5
    if engine.prefix is not None:  # b, c and d prefilled only what follows the template's system block
        assert engine.prefix.reused_tokens > 0
    assert engine.packed > 0  # the batched steps ran on packed weights; _alone on the model's own
    for job in jobs:
        tokens, reason = _alone(engine, job)
        assert "error" not in job.result, job.result
        assert job.result["token_ids"] == tokens and job.result["finish_reason"] == reason
        assert "".join(job.pieces) == job.result["text"] == engine.tokenizer.decode(tokens, skip_special_tokens=True)
    timings = {}
    for rows, seconds in engine.recent_steps:
        timings.setdefault(rows, []).append(seconds * 1000)
    print("ms per decode step by rows:", {r: round(sum(t) / len(t), 2) for r, t in sorted(timings.items())})


@pytest.mark.parametrize("adapter, prefix_cache", [(None, True), ("sft", True), (None, False)])
def test_requests_joining_at_different_steps_match_generate_alone(tiny_model_dir, adapters, adapter, prefix_cache):
    engine = _engine(tiny_model_dir, prefix_cache=prefix_cache)
    try:
        if adapter:
            engine.load_adapter(adapter, str(adapters[adapter]))
        _check_joins_match_generate_alone(engine, adapter)
    finally:
        engine.close()


def test_a_finished_or_cancelled_row_leaves_the_batch_at_once(tiny_model_dir):
    engine = _engine(tiny_model_dir, max_wait_ms=200)  # they all start together
    try:
        short, long, gone, never = _job(SHORT, 3), _job(LONG, 10), _job(MATH, 10, cancel_after=4), _job(HELLO, 5)
        never.cancelled = True  # its client left while it waited: it never runs
        for job in (short, long, gone, never):
            engine.submit(job)
        _wait(engine, [short, long, gone, never])
        assert never.result == {"finish_reason": "cancelled", "completion_tokens": 0, "text": "", "token_ids": []}
        assert gone.result["finish_reason"] == "cancelled" and 4 <= gone.result["completion_tokens"] < 10
        steps = [rows for rows, _ in engine.recent_steps]
        assert steps == _rows_per_step([(0, short), (0, long), (0, gone)])
        assert steps[0] == 3 and steps[-1] == 1 and steps == sorted(steps, reverse=True), steps
        assert engine.prefills == 1 and engine.batched_requests == sum(steps) and engine.batches == len(steps)
    finally:
        engine.close()


def test_another_group_waits_for_the_running_batch_to_drain(tiny_model_dir):
    engine = _engine(tiny_model_dir)
    try:
        order = []

        def noting(name, emit):
            def wrapped(piece):
                if piece is FINISH:
                    order.append(name)
                emit(piece)
            return wrapped

        greedy, sampled, late_greedy = _job(LONG, 8), _job(SHORT, 4, temperature=0.7), _job(MATH, 4)
        for name, job in (("greedy", greedy), ("sampled", sampled), ("late", late_greedy)):
            job.emit = noting(name, job.emit)
        _schedule(engine, {2: [sampled], 3: [late_greedy]})  # late_greedy arrived after a job of another group
        engine.submit(greedy)
        _wait(engine, [greedy, sampled, late_greedy])
        assert order == ["greedy", "sampled", "late"], order
        assert all(rows == 1 for rows, _ in engine.recent_steps)  # nobody joined the greedy batch
        assert sampled.result["finish_reason"] in ("stop", "length") and late_greedy.result["token_ids"] == \
            _alone(engine, late_greedy)[0]
    finally:
        engine.close()


def test_a_sampled_request_draws_what_generate_draws_with_the_same_seed(tiny_model_dir):
    import torch

    engine = _engine(tiny_model_dir)
    try:
        job = _job(COLORS, 12, temperature=0.8, top_p=0.9)
        torch.manual_seed(1234)
        engine.submit(job)
        _wait(engine, [job])
        text = engine.tokenizer.apply_chat_template(job.conversation, tokenize=False, add_generation_prompt=True)
        enc = engine.tokenizer(text, return_tensors="pt", add_special_tokens=False)
        torch.manual_seed(1234)
        with torch.inference_mode(), plain_linears(engine.model):
            out = engine.model.generate(**enc, max_new_tokens=12, do_sample=True, temperature=0.8, top_p=0.9,
                                        pad_token_id=engine.tokenizer.pad_token_id)
        new = [t for t in out[0, enc["input_ids"].shape[1]:].tolist()]
        if any(t in engine.eos_ids for t in new):
            new = new[:min(i for i, t in enumerate(new) if t in engine.eos_ids)]
        assert job.result["token_ids"] == new
    finally:
        engine.close()


def test_a_failing_prefill_or_step_fails_only_its_own_requests(tiny_model_dir, monkeypatch):
    from serve import batching

    engine = _engine(tiny_model_dir)
    try:
        running, broken = _job(LONG, 10), _job(None, 5)  # no conversation: its chat template raises
        _schedule(engine, {2: [broken]})
        engine.submit(running)
        _wait(engine, [running, broken])
        assert "error" in broken.result and "error" not in running.result
        assert running.result["token_ids"] == _alone(engine, running)[0]  # the running row never noticed

        real, calls = batching.Batch.step, []

        def step_once_broken(self, model):
            calls.append(1)
            if len(calls) == 3:
                raise RuntimeError("boom")
            return real(self, model)

        monkeypatch.setattr(batching.Batch, "step", step_once_broken)
        first, second = _job(SHORT, 10), _job(MATH, 10)
        engine.submit(first)
        _wait(engine, [first])
        engine.submit(second)
        _wait(engine, [second])
        assert first.result["error"] == "RuntimeError: boom"
        assert second.result["token_ids"] == _alone(engine, second)[0]  # the worker survived
    finally:
        engine.close()


def test_a_retired_adapter_is_unloaded_only_after_its_running_row_finishes(tiny_model_dir, adapters):
    engine = _engine(tiny_model_dir)
    try:
        for name in ("sft", "dpo"):
            engine.load_adapter(name, str(adapters[name]))
        engine.acquire("sft")
        job = _job(LONG, 16, "sft")
        expected = _alone(engine, job)[0]
        loaded_during = []
        _schedule(engine, {}, each_step=lambda s: (s == 3 and engine.retire_adapter("sft"),
                                                   loaded_during.append("sft" in engine.loaded)))
        engine.submit(job)
        _wait(engine, [job])
        assert all(loaded_during) and job.result["token_ids"] == expected  # finished on its adapter
        deadline = time.monotonic() + 10
        while "sft" in engine.loaded:
            assert time.monotonic() < deadline, "the retired adapter was never unloaded"
            time.sleep(0.02)
        assert engine.loaded == {"dpo"}
    finally:
        engine.close()


def test_the_static_fallback_streams_and_counts_the_same(tiny_model_dir):
    engine = _engine(tiny_model_dir, max_wait_ms=200)
    try:
        engine.continuous = False  # what a model with sliding-window layers gets
        jobs = [_job(LONG, 6), _job(SHORT, 9)]
        for job in jobs:
            engine.submit(job)
        _wait(engine, jobs)
        for job in jobs:
            assert job.result["token_ids"] == _alone(engine, job)[0]
            assert "".join(job.pieces) == job.result["text"]
        steps = _rows_per_step([(0, job) for job in jobs])  # rows still generating at each step after the prefill
        assert engine.batches == len(steps) and engine.batched_requests == sum(steps) == 5 + 8, steps
    finally:
        engine.close()


@pytest.mark.slow
def test_joins_match_generate_alone_on_the_embedded_model():
    engine = _engine("smollm2-135m-instruct")
    try:
        _check_joins_match_generate_alone(engine, None, max_tokens=(16, 10, 12, 8, 10))
    finally:
        engine.close()


@pytest.mark.parametrize("prefix_cache", [True, False])
def test_joins_match_generate_alone_where_positions_matter(sharp_model_dir, prefix_cache):
    engine = _engine(sharp_model_dir, prefix_cache=prefix_cache)
    try:
        _check_joins_match_generate_alone(engine, None)
    finally:
        engine.close()
