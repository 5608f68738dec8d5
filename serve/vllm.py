"""`engine: vllm` — the same API, registry, swaps and feedback, with vLLM doing the generation (GPU).

Attaches to `engine.vllm_url` or starts `vllm serve BASE --enable-lora` on 127.0.0.1 with runtime LoRA
updates allowed (VLLM_ALLOW_RUNTIME_LORA_UPDATING=1), then loads and unloads adapters through its
`/v1/load_lora_adapter` and `/v1/unload_lora_adapter` endpoints under the run id as the LoRA name. vLLM
batches continuously on its own; each request here is one streamed call to its chat endpoint. Tested only
under the `gpu` marker (vLLM needs a GPU).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import threading
import time

from alignkit.errors import UserError
from serve.engine import FINISH, Job


class VLLMEngine:
    """Drives a vLLM server: the engine interface of serve/engine.py over HTTP."""

    def __init__(self, model_cfg, engine_cfg, startup_timeout_s: float = 900.0):
        import httpx

        from alignkit import models

        self.model_cfg = model_cfg
        self.tokenizer, _ = models.load_tokenizer(model_cfg.base, model_cfg.revision, model_cfg.trust_remote_code)
        self.context_length = int(getattr(self.tokenizer, "model_max_length", 2048) or 2048)
        self.loaded: set[str] = set()
        self._holders: dict[str, int] = {}
        self._retiring: set[str] = set()
        self._lock = threading.Lock()
        self.batches = self.batched_requests = 0
        self._process = None
        self.url = engine_cfg.vllm_url or self._start(model_cfg, engine_cfg.vllm_args)
        self.client = httpx.Client(base_url=self.url, timeout=httpx.Timeout(600.0, connect=10.0))
        self._wait_ready(startup_timeout_s)

    def _start(self, model_cfg, extra: list[str]) -> str:
        if shutil.which("vllm") is None:
            raise UserError("engine.kind vllm: the `vllm` command is not installed (pip install vllm; needs a GPU), "
                            "or set engine.vllm_url to a running `vllm serve --enable-lora`")
        from alignkit import models

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        env = dict(os.environ, VLLM_ALLOW_RUNTIME_LORA_UPDATING="True")
        cmd = ["vllm", "serve", models.resolve(model_cfg.base), "--host", "127.0.0.1", "--port", str(port),
               "--enable-lora", "--max-loras", "4", "--max-lora-rank", "64", *extra]
        self._process = subprocess.Popen(cmd, env=env)
        return f"http://127.0.0.1:{port}"

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process is not None and self._process.poll() is not None:
                raise UserError(f"vllm serve exited with code {self._process.returncode} before it was ready")
            try:
                if self.client.get("/health").status_code == 200:
                    return
            except Exception:
                pass
            time.sleep(2)
        raise UserError(f"vllm at {self.url}: not ready after {timeout:.0f} s")

    # adapters: the same contract as TransformersEngine ------------------------------------------------------
    def load_adapter(self, name: str, path: str, timeout: float = 300.0) -> None:
        from alignkit import models

        models.check_adapter_base(path, self.model_cfg.base)
        with self._lock:
            if name in self.loaded:
                self._retiring.discard(name)
                return
        r = self.client.post("/v1/load_lora_adapter", json={"lora_name": name, "lora_path": str(path)}, timeout=timeout)
        if r.status_code >= 400 and "already" not in r.text:
            raise UserError(f"vllm refused adapter {name}: {r.status_code} {r.text[:200]}")
        with self._lock:
            self.loaded.add(name)

    def retire_adapter(self, name: str) -> None:
        with self._lock:
            self._retiring.add(name)
        self._unload_retired()

    def acquire(self, name: str | None, revive: bool = False) -> None:
        with self._lock:
            if revive:
                self._retiring.discard(name)
            if name is not None and (name not in self.loaded or name in self._retiring):
                raise KeyError(name)
            if name is not None:
                self._holders[name] = self._holders.get(name, 0) + 1

    def release(self, name: str | None) -> None:
        if name is not None:
            with self._lock:
                self._holders[name] -= 1
            self._unload_retired()

    def _unload_retired(self) -> None:
        with self._lock:
            idle = [n for n in self._retiring if self._holders.get(n, 0) == 0 and n in self.loaded]
            for n in idle:
                self.loaded.discard(n)
                self._retiring.discard(n)
        for n in idle:
            self.client.post("/v1/unload_lora_adapter", json={"lora_name": n})

    # requests ---------------------------------------------------------------------------------------------
    def prompt_tokens(self, conversation: list[dict]) -> int:
        text = self.tokenizer.apply_chat_template(conversation, tokenize=False, add_generation_prompt=True)
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def submit(self, job: Job) -> None:
        threading.Thread(target=self._stream, args=(job,), daemon=True).start()

    def _stream(self, job: Job) -> None:
        import json

        body = {"model": job.adapter or self.model_cfg.base, "messages": job.conversation, "stream": True,
                "max_tokens": job.max_tokens, "temperature": job.temperature, "top_p": job.top_p,
                "stream_options": {"include_usage": True}}
        text, tokens, reason = "", 0, "length"
        try:
            with self.client.stream("POST", "/v1/chat/completions", json=body) as r:
                if r.status_code >= 400:
                    raise RuntimeError(f"vllm answered {r.status_code}: {r.read()[:200]!r}")
                for line in r.iter_lines():
                    if not line.startswith("data: ") or line == "data: [DONE]":
                        continue
                    chunk = json.loads(line[6:])
                    if chunk.get("usage"):  # the last chunk (include_usage): the exact token count
                        tokens = chunk["usage"]["completion_tokens"]
                    if not chunk.get("choices"):
                        continue
                    choice = chunk["choices"][0]
                    piece = choice.get("delta", {}).get("content") or ""
                    if piece:
                        text, tokens = text + piece, tokens + 1
                        job.emit(piece)
                    reason = choice.get("finish_reason") or reason
                    if job.cancelled:
                        reason = "cancelled"
                        break
            job.result.update(finish_reason=reason, completion_tokens=tokens, text=text)
        except Exception as e:
            job.result.update(error=f"{type(e).__name__}: {e}")
        finally:
            self.batches += 1
            self.batched_requests += 1
            self.release(job.adapter)
            job.emit(FINISH)

    def close(self) -> None:
        if self._process is not None:
            self._process.terminate()
