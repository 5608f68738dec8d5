"""The transformers + peft engine: one copy of the base weights, adapters loaded beside each other by name,
and dynamic batching — requests that arrive together share forward passes.

One worker thread owns the model. It takes the first waiting request, waits up to `max_wait_ms` for
others (up to `max_batch`), groups them by adapter and sampling settings, and runs one batched `generate`
per group, streaming each row's new text to its request as tokens come out. Adapter loads and unloads run
on the same thread between batches, so a swap never changes weights under a running batch; an adapter
marked for removal is unloaded only once no admitted request still holds it.
"""

from __future__ import annotations

import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from alignkit.errors import UserError

FINISH = object()  # marks the end of a job's stream; the job's `result` then holds finish_reason and counts


@dataclass
class Job:
    """One chat request: its conversation, adapter, sampling, and a callback that receives text pieces."""

    conversation: list[dict]
    adapter: str | None
    max_tokens: int
    temperature: float = 0.0
    top_p: float = 1.0
    emit: Callable[[Any], None] = lambda piece: None  # called from the worker thread: str pieces, then FINISH
    cancelled: bool = False
    result: dict = field(default_factory=dict)

    @property
    def sampling(self) -> tuple:
        return (self.temperature > 0, round(self.temperature, 4), round(self.top_p, 4))


class _Rows:
    """generate()'s streamer and per-row stopping criterion for one batch: decodes each row's new tokens,
    emits only the new text, and stops a row at EOS, at its own max_tokens, or when its client went away."""

    def __init__(self, jobs: list[Job], tokenizer, eos_ids: set[int]):
        import torch

        self.jobs, self.tokenizer, self.eos = jobs, tokenizer, eos_ids
        self.tokens: list[list[int]] = [[] for _ in jobs]
        self.text = [""] * len(jobs)
        self.done = torch.zeros(len(jobs), dtype=torch.bool)
        self.prompt_seen = False

    def put(self, value) -> None:
        if not self.prompt_seen:  # the first call carries the prompt ids
            self.prompt_seen = True
            return
        for i, token in enumerate(value.view(-1).tolist()):
            job = self.jobs[i]
            if self.done[i]:
                continue
            if token in self.eos:
                self._finish(i, "stop")
                continue
            self.tokens[i].append(token)
            text = self.tokenizer.decode(self.tokens[i], skip_special_tokens=True)
            if not text.endswith("\ufffd") and len(text) > len(self.text[i]):  # "\ufffd": a character still
                job.emit(text[len(self.text[i]):])                                 # waiting for its next byte
                self.text[i] = text
            if len(self.tokens[i]) >= job.max_tokens or job.cancelled:
                self._finish(i, "length" if not job.cancelled else "cancelled")

    def end(self) -> None:
        for i in range(len(self.jobs)):
            if not self.done[i]:
                self._finish(i, "length")

    def _finish(self, i: int, reason: str) -> None:
        self.done[i] = True
        job = self.jobs[i]
        text = self.tokenizer.decode(self.tokens[i], skip_special_tokens=True)
        if len(text) > len(self.text[i]):
            job.emit(text[len(self.text[i]):])
        job.result.update(finish_reason=reason, completion_tokens=len(self.tokens[i]), text=text)
        job.emit(FINISH)

    def __call__(self, input_ids, scores, **kwargs):  # StoppingCriteria: True where a row is finished
        return self.done.clone().to(input_ids.device)


class TransformersEngine:
    """Base model + named LoRA adapters in this process, with a dynamic-batching worker thread."""

    def __init__(self, model_cfg, max_batch: int = 16, max_wait_ms: float = 15.0, threads: int | None = None):
        import torch

        from alignkit import models

        if threads:
            torch.set_num_threads(threads)
        self.model_cfg = model_cfg
        self.tokenizer, _ = models.load_tokenizer(model_cfg.base, model_cfg.revision, model_cfg.trust_remote_code)
        self.tokenizer.padding_side = "left"  # generation continues from the right end of every row
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.model = models.load_model(model_cfg).eval()
        self.context_length = int(getattr(self.model.config, "max_position_embeddings", 2048) or 2048)
        self.eos_ids = {t for t in (self.tokenizer.eos_token_id, getattr(self.model.generation_config, "eos_token_id", None))
                        if isinstance(t, int)}
        gen_eos = getattr(self.model.generation_config, "eos_token_id", None)
        if isinstance(gen_eos, list):
            self.eos_ids |= set(gen_eos)
        self.max_batch, self.max_wait = max_batch, max_wait_ms / 1000
        self._jobs: queue.Queue = queue.Queue()
        self._control: queue.Queue = queue.Queue()
        self._lock = threading.Lock()
        self._holders: dict[str, int] = {}  # adapter name → admitted requests still using it
        self._retiring: set[str] = set()
        self.loaded: set[str] = set()
        self.batches = 0  # batches run, and the requests they carried (for /metrics and the bench)
        self.batched_requests = 0
        self._stop = False
        self._worker = threading.Thread(target=self._loop, name="serve-engine", daemon=True)
        self._worker.start()

    # adapters ---------------------------------------------------------------------------------------------
    def load_adapter(self, name: str, path: str, timeout: float = 300.0) -> None:
        """Load a PEFT adapter under `name` (between batches); returns once it can serve."""
        from alignkit import models

        models.check_adapter_base(path, self.model_cfg.base)
        self._run_control(lambda: self._load(name, path), timeout)

    def retire_adapter(self, name: str) -> None:
        """Unload `name` once the requests admitted on it have finished (new ones must not choose it)."""
        with self._lock:
            self._retiring.add(name)
        self._control.put(None)  # wake the worker so an idle engine unloads at once

    def acquire(self, name: str | None, revive: bool = False) -> None:
        """Count a request on adapter `name` (None: the base model) so a swap cannot unload it mid-request;
        `revive` takes back a pending retirement (a request that names the run by id)."""
        if name is None:
            return
        with self._lock:
            if revive:
                self._retiring.discard(name)
            if name not in self.loaded or name in self._retiring:
                raise KeyError(name)
            self._holders[name] = self._holders.get(name, 0) + 1

    def release(self, name: str | None) -> None:
        if name is None:
            return
        with self._lock:
            self._holders[name] -= 1

    def _run_control(self, fn, timeout: float) -> None:
        done, box = threading.Event(), {}

        def op():
            try:
                fn()
            except Exception as e:  # handed back to the caller's thread
                box["error"] = e
            done.set()

        self._control.put(op)
        if not done.wait(timeout):
            raise UserError(f"engine: adapter load did not finish within {timeout:.0f} s")
        if "error" in box:
            raise box["error"]

    def _load(self, name: str, path: str) -> None:
        from peft import PeftModel

        from alignkit import models

        if name in self.loaded:
            with self._lock:
                self._retiring.discard(name)  # promoted again (a rollback) before it was unloaded
            return
        if isinstance(self.model, PeftModel) and name in self.model.peft_config:
            pass  # kept when it was the last adapter (peft keeps one); reloading it is a no-op
        elif isinstance(self.model, PeftModel):
            self.model.load_adapter(path, adapter_name=name, is_trainable=False)
        else:
            self.model = models.load_adapter(self.model, path, trainable=False, adapter_name=name)
        self.model.eval()
        with self._lock:
            self.loaded.add(name)
            self._retiring.discard(name)

    def _unload_retired(self) -> None:
        with self._lock:
            idle = [n for n in self._retiring if self._holders.get(n, 0) == 0 and n in self.loaded]
        for name in idle:
            if len(self.model.peft_config) > 1:
                self.model.delete_adapter(name)
            with self._lock:
                self.loaded.discard(name)
                self._retiring.discard(name)
                self._holders.pop(name, None)

    # requests ---------------------------------------------------------------------------------------------
    def prompt_tokens(self, conversation: list[dict]) -> int:
        text = self.tokenizer.apply_chat_template(conversation, tokenize=False, add_generation_prompt=True)
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def submit(self, job: Job) -> None:
        """Queue an admitted job (its adapter already acquired)."""
        self._jobs.put(job)

    def close(self) -> None:
        self._stop = True
        self._control.put(None)

    def _loop(self) -> None:
        while not self._stop:
            self._drain_control()
            try:
                first = self._jobs.get(timeout=0.05)
            except queue.Empty:
                continue
            batch, deadline = [first], time.monotonic() + self.max_wait
            while len(batch) < self.max_batch:
                wait = deadline - time.monotonic()
                try:
                    batch.append(self._jobs.get(timeout=max(wait, 0)) if wait > 0 else self._jobs.get_nowait())
                except queue.Empty:
                    break
            groups: dict[tuple, list[Job]] = {}
            for job in batch:
                groups.setdefault((job.adapter, job.sampling), []).append(job)
            for (adapter, _), jobs in groups.items():
                try:
                    self._generate(adapter, jobs)
                except Exception as e:  # one bad batch must not stop the server: its requests get the error
                    for job in jobs:
                        if "finish_reason" not in job.result:
                            job.result.update(error=f"{type(e).__name__}: {e}")
                            job.emit(FINISH)
                finally:
                    for job in jobs:
                        self.release(job.adapter)
            self._unload_retired()

    def _drain_control(self) -> None:
        while True:
            try:
                op = self._control.get_nowait()
            except queue.Empty:
                break
            if op is not None:
                op()
        self._unload_retired()

    def _generate(self, adapter: str | None, jobs: list[Job]) -> None:
        import contextlib

        import torch

        texts = [self.tokenizer.apply_chat_template(j.conversation, tokenize=False, add_generation_prompt=True)
                 for j in jobs]
        enc = self.tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        enc = {k: v.to(self.model.device) for k, v in enc.items()}
        rows = _Rows(jobs, self.tokenizer, self.eos_ids)
        sample = jobs[0].temperature > 0
        kwargs: dict[str, Any] = {"max_new_tokens": max(j.max_tokens for j in jobs), "do_sample": sample,
                                  "pad_token_id": self.tokenizer.pad_token_id, "streamer": rows,
                                  "stopping_criteria": [rows]}
        if sample:
            kwargs.update(temperature=jobs[0].temperature, top_p=jobs[0].top_p)
        else:
            kwargs.update(temperature=None, top_p=None, top_k=None)
        if adapter is None:
            scope = self.model.disable_adapter() if hasattr(self.model, "disable_adapter") else contextlib.nullcontext()
        else:
            self.model.set_adapter(adapter)
            scope = contextlib.nullcontext()
        with torch.inference_mode(), scope:
            self.model.generate(**enc, **kwargs)
        rows.end()
        self.batches += 1
        self.batched_requests += len(jobs)
