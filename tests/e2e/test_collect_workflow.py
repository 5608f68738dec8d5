"""The real `alignkit collect` CLI in subprocesses: init → users → serve (with the worker) → stats → export."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "collect"))
from collect_support import ROOT, free_port  # noqa: E402

ALIGNKIT = [sys.executable, "-m", "alignkit.cli"]


def cli(*args, stdin=None, env=None, cmd=ALIGNKIT):
    return subprocess.run([*cmd, *args], cwd=ROOT, input=stdin, capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, PYTHONPATH=str(ROOT), **(env or {})))


def test_workflow_from_init_to_export(tmp_path, tiny_model_dir):
    url = f"sqlite:///{tmp_path}/runs/collect.db"
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": [{"role": "user", "content": f"Name a colour, {i}."}]}) + "\n"
                               for i in range(3)))
    r = cli("collect", "init", "--store", url, "--prompts", str(prompts), "--config", "recipes/smollm2/collect.yaml",
            "queue.overlap=1")
    assert r.returncode == 0 and "prompts added: 3" in r.stdout, r.stderr
    r = cli("collect", "users", "add", "alice", "--role", "annotator", "--store", url, "--password-stdin",
            stdin="alice-password\n")
    assert r.returncode == 0, r.stderr
    r = cli("users", "list", "--store", url, cmd=[sys.executable, "-m", "collect"])
    assert r.returncode == 0 and "alice" in r.stdout

    port = free_port()
    log = open(tmp_path / "serve.log", "w")
    serve = subprocess.Popen([*ALIGNKIT, "collect", "serve", "--config", "recipes/smollm2/collect.yaml",
                              "--store", url, "--port", str(port), f"model.base={tiny_model_dir}",
                              "generation.max_new_tokens=8", "generation.near_duplicate=1.0"],
                             cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)), stdout=log, stderr=log)
    try:
        base = f"http://127.0.0.1:{port}"
        deadline, headers, item = time.time() + 120, None, None
        while item is None and time.time() < deadline:
            time.sleep(0.5)
            try:
                if headers is None:
                    tok = httpx.post(f"{base}/api/v1/login", json={"username": "alice", "password": "alice-password"})
                    headers = {"Authorization": f"Bearer {tok.json()['token']}"}
                item = httpx.get(f"{base}/api/v1/next", headers=headers).json()["item"]
            except httpx.TransportError:
                continue
        assert item is not None, (tmp_path / "serve.log").read_text()[-2000:]
        for _ in range(3):  # the worker fills all three prompts; label them
            vote = {"assignment_id": item["assignment_id"], "idempotency_key": item["idempotency_key"],
                    "choice": "a", "strength": "clear"}
            body = httpx.post(f"{base}/api/v1/votes", headers=headers, json=vote).json()
            item = body["next"]
            while item is None and time.time() < deadline:
                time.sleep(0.5)
                item = httpx.get(f"{base}/api/v1/next", headers=headers).json()["item"]
                if httpx.get(f"{base}/api/v1/progress", headers=headers).json()["votes"] == 3:
                    break
    finally:
        serve.terminate()
        serve.wait(20)
    assert "worker: generating candidates with" in (tmp_path / "serve.log").read_text()

    r = cli("collect", "stats", "--store", url, "--json")
    stats = json.loads(r.stdout)
    assert r.returncode == 0 and stats["votes"] == 3 and stats["items"] == 3
    r = cli("collect", "export", "--store", url, "--out", str(tmp_path / "pairs.jsonl"))
    assert r.returncode == 0 and "pairs: 3" in r.stdout, r.stderr
    pair = json.loads((tmp_path / "pairs.jsonl").read_text().splitlines()[0])
    assert pair["metadata"]["chosen_generator"] == tiny_model_dir
    assert (tmp_path / "pairs.dataset").is_dir()

    r = cli("collect", "stats", "--store", f"sqlite:///{tmp_path}/nope.db")
    # the last line: `alignkit`'s parser imports alignkit.pipeline, where bitsandbytes may speak first
    last = r.stderr.strip().splitlines()[-1]
    assert r.returncode == 2 and last.startswith("error: ") and "Traceback" not in r.stderr
    assert not (tmp_path / "nope.db").exists()
