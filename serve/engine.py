"""The transformers + peft engine: one copy of the base weights, adapters loaded beside each other by name,
and continuous (iteration-level) batching — requests share every decode step they are running in.

One worker thread owns the model and runs a decode loop over the model's forward with a KV cache
(serve/batching.py). When it is idle, the first waiting request waits up to `max_wait_ms` for others (up to
`max_batch`); they are prefilled together and decoded one token per step, each row streaming its own text.
Between steps, a row that finished (EOS, its own max_tokens, its client gone) leaves the batch at once, and
waiting requests join it (prefilled, then merged into the batch's cache) up to `max_batch` — but only
requests with the batch's adapter and sampling settings: the others wait until it drains, and a request
waiting behind one of them does not jump the queue. A join prefills only what follows the tokens its prompt
shares with the latest prompt prefilled on that adapter (the chat template's system block), reusing their KV
(`prefix_cache=False` turns that off). Adapter loads and unloads run on the same thread between
steps, so a swap never changes weights under a running step; an adapter marked for removal is unloaded only
once no admitted request still holds it, so in-flight requests finish on the adapter they began with.

Models whose cache the batch cannot merge (sliding-window or linear-attention layers) fall back to static
batching: one `generate` per group, run to completion.
"""

from __future__ import annotations

import contextlib
import inspect
import queue
import threading
import time
from collections import deque

from alignkit.errors import UserError
from serve.batching import (
    FINISH,
    Batch,
    Job,
    PrefixCache,
    Row,
    StaticRows,
    sampler,
    supports_merging,
)

__all__ = ["FINISH", "Job", "TransformersEngine"]


class TransformersEngine:
    """Base model + named LoRA adapters in this process, with a continuous-batching worker thread."""

    def __init__(self, model_cfg, max_batch: int = 16, max_wait_ms: float = 15.0, threads: int | None = None,
                 prefix_cache: bool = True, pack_weights: bool = True):
        import torch

        from alignkit import models
        from serve.packing import pack_linears

        if threads:
            torch.set_num_threads(threads)
        self.model_cfg = model_cfg
        self.tokenizer, _ = models.load_tokenizer(model_cfg.base, model_cfg.revision, model_cfg.trust_remote_code)
        self.tokenizer.padding_side = "left"  # generation continues from the right end of every row
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.model = models.load_model(model_cfg).eval()
        self.packed = pack_linears(self.model) if pack_weights else 0  # CPU: batched steps through oneDNN
        self.context_length = int(getattr(self.model.config, "max_position_embeddings", 2048) or 2048)
        self.eos_ids = {t for t in (self.tokenizer.eos_token_id, getattr(self.model.generation_config, "eos_token_id", None))
                        if isinstance(t, int)}
        gen_eos = getattr(self.model.generation_config, "eos_token_id", None)
        if isinstance(gen_eos, list):
            self.eos_ids |= set(gen_eos)
        params = inspect.signature(self.model.forward).parameters
        self._cache_kw = "cache" if "cache" in params else "past_key_values"
        self._logits_to_keep = "logits_to_keep" in params
        top_k = getattr(self.model.generation_config, "top_k", None)
        self.top_k = 50 if top_k is None else top_k  # generate()'s default when sampling
        self.continuous = supports_merging(self.model)  # else static batching (one generate per group)
        self.prefix = PrefixCache() if prefix_cache else None  # joins prefill only what follows a shared prompt head
        self.max_batch, self.max_wait = max_batch, max_wait_ms / 1000
        self._jobs: queue.Queue = queue.Queue()
        self._control: queue.Queue = queue.Queue()
        self._lock = threading.Lock()
        self._holders: dict[str, int] = {}  # adapter name → admitted requests still using it
        self._retiring: set[str] = set()
        self.loaded: set[str] = set()
        # decode steps run and the rows they carried: batched_requests / batches is the mean number of rows per
        # decode step (/metrics and the bench's "mean batch"); prefills count the forwards that admitted requests
        self.batches = 0
        self.batched_requests = 0
        self.prefills = 0
        self.prefilled_requests = 0
        self.recent_steps: deque = deque(maxlen=4096)  # (rows, seconds) of the latest decode steps
        self._pending: deque[Job] = deque()  # taken off the queue, waiting for a batch they may join
        self._batch: Batch | None = None
        self._active = None  # the adapter set on the model (None: not known, set it before the next forward)
        self._stop = False
        self._worker = threading.Thread(target=self._loop, name="serve-engine", daemon=True)
        self._worker.start()

    # adapters ---------------------------------------------------------------------------------------------
    def load_adapter(self, name: str, path: str, timeout: float = 300.0) -> None:
        """Load a PEFT adapter under `name` (between steps); returns once it can serve."""
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
        self._changed()
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
                self._changed()
                self.model.delete_adapter(name)
            with self._lock:
                self.loaded.discard(name)
                self._retiring.discard(name)
                self._holders.pop(name, None)

    def _changed(self) -> None:
        """Adapters are being added or removed: set the active one again, forget prompt KV computed before."""
        self._active = None
        if self.prefix is not None:
            self.prefix.clear()

    def _scope(self, adapter: str | None):
        """Make the model answer with `adapter` (None: the base model) for the next forward."""
        if adapter is None:
            return self.model.disable_adapter() if hasattr(self.model, "disable_adapter") else contextlib.nullcontext()
        if self._active != adapter:
            self.model.set_adapter(adapter)
            self._active = adapter
        return contextlib.nullcontext()

    # requests ---------------------------------------------------------------------------------------------
    def prompt_tokens(self, conversation: list[dict]) -> int:
        text = self.tokenizer.apply_chat_template(conversation, tokenize=False, add_generation_prompt=True)
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def submit(self, job: Job) -> None:
        """Queue an admitted job (its adapter already acquired; the engine releases it when the job ends)."""
        self._jobs.put(job)

    def close(self) -> None:
        self._stop = True
        self._control.put(None)

    def _row(self, job: Job) -> Row:
        return Row(job, self.tokenizer, self.eos_ids, on_done=lambda j: self.release(j.adapter))

    def _loop(self) -> None:
        while not self._stop:
            self._drain_control()  # between steps: adapter loads and unloads
            if not self._collect():
                continue
            try:
                if self.continuous:
                    self._iterate()
                else:
                    self._run_static()
            except Exception as e:  # a bug in the loop itself: fail what it holds, keep serving
                error = f"{type(e).__name__}: {e}"
                if self._batch is not None:
                    self._batch.fail(error)
                    self._batch = None

    def _drain_control(self) -> None:
        while True:
            try:
                op = self._control.get_nowait()
            except queue.Empty:
                break
            if op is not None:
                op()
        self._unload_retired()

    def _collect(self) -> bool:
        """Move newly queued jobs to `_pending` (when idle: wait for the first, then up to max_wait for more);
        True when there is something to run."""
        if self._batch is None and not self._pending:
            try:
                self._pending.append(self._jobs.get(timeout=0.05))
            except queue.Empty:
                return False
            deadline = time.monotonic() + self.max_wait
            while len(self._pending) < self.max_batch:
                wait = deadline - time.monotonic()
                try:
                    self._pending.append(self._jobs.get(timeout=wait) if wait > 0 else self._jobs.get_nowait())
                except queue.Empty:
                    break
        while True:
            try:
                self._pending.append(self._jobs.get_nowait())
            except queue.Empty:
                return True

    def _admit(self) -> list[Job]:
        """The pending jobs that start or join the batch now: its group only, in arrival order, up to max_batch;
        while a batch runs, none that arrived after a job of another group (that one goes next)."""
        batch, taken, waiting = self._batch, [], deque()
        group = batch.group if batch is not None else None
        room = self.max_batch - (len(batch) if batch is not None else 0)
        blocked = False
        for job in self._pending:
            if job.cancelled:  # its client left before it started
                self._row(job).finish("cancelled")
                continue
            if group is None:
                group = job.group
            if job.group == group and room > 0 and not blocked:
                taken.append(job)
                room -= 1
            else:
                blocked = blocked or (batch is not None and job.group != group)
                waiting.append(job)
        self._pending = waiting
        return taken

    def _iterate(self) -> None:
        """One turn of the decode loop: admit (prefill and merge), then one decode step."""
        import torch

        rows = [self._row(job) for job in self._admit()]
        try:
            if self._batch is None and rows:
                job = rows[0].job
                self._batch = Batch(job.group, sampler(job.temperature, job.top_p, self.top_k), self._cache_kw,
                                    self._logits_to_keep)
            if rows:
                with torch.inference_mode(), self._scope(self._batch.adapter):
                    self._batch.add(self.model, self.tokenizer, rows, self.prefix)
                self.prefills += 1
                self.prefilled_requests += len(rows)
        except Exception as e:  # a failed prefill fails the requests it admitted, not the running rows
            for row in rows:
                row.fail(f"{type(e).__name__}: {e}")
        batch = self._batch
        if batch is None:
            return
        if len(batch):
            started = time.perf_counter()
            try:
                with torch.inference_mode(), self._scope(batch.adapter):
                    carried = batch.step(self.model)
            except Exception as e:  # one failing batch must not stop the server: its requests get the error
                batch.fail(f"{type(e).__name__}: {e}")
            else:
                self.recent_steps.append((carried, time.perf_counter() - started))
                self.batches += 1
                self.batched_requests += carried
        if not len(batch):
            self._batch = None

    def _run_static(self) -> None:
        """The fallback: a batch of pending jobs, grouped by adapter and sampling, one `generate` per group."""
        jobs = [self._pending.popleft() for _ in range(min(len(self._pending), self.max_batch))]
        groups: dict[tuple, list[Job]] = {}
        for job in jobs:
            groups.setdefault(job.group, []).append(job)
        for (adapter, _), members in groups.items():
            rows = [self._row(job) for job in members]
            try:
                self._generate(adapter, rows)
            except Exception as e:  # one bad batch must not stop the server: its requests get the error
                for row in rows:
                    row.fail(f"{type(e).__name__}: {e}")

    def _generate(self, adapter: str | None, rows: list[Row]) -> None:
        import torch

        jobs = [row.job for row in rows]
        texts = [self.tokenizer.apply_chat_template(j.conversation, tokenize=False, add_generation_prompt=True)
                 for j in jobs]
        enc = self.tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        enc = {k: v.to(self.model.device) for k, v in enc.items()}
        streamer = StaticRows(rows)
        sample = jobs[0].temperature > 0
        kwargs = {"max_new_tokens": max(j.max_tokens for j in jobs), "do_sample": sample,
                  "pad_token_id": self.tokenizer.pad_token_id, "streamer": streamer, "stopping_criteria": [streamer]}
        if sample:
            kwargs.update(temperature=jobs[0].temperature, top_p=jobs[0].top_p)
        else:
            kwargs.update(temperature=None, top_p=None, top_k=None)
        with torch.inference_mode(), self._scope(adapter):
            self.model.generate(**enc, **kwargs)
        streamer.end()
        self.batches += streamer.steps
        self.batched_requests += streamer.row_steps
