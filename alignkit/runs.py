"""Run directories, manifests and the registry file, and the atomic writes they (and every other file that
another process reads) go through.

runs/<name>/
  registry.json            every stage run: parent, status, gate verdict, fingerprint; which one is promoted
  <stage>-YYYYmmdd-HHMMSS/
    manifest.json          stage, parent, base model, resolved recipe, data sha256s, template sha256,
                           library versions, wall time, status, W&B run id
    adapter/  metrics.jsonl  eval/  gate.json

All writes are atomic (`write_text`, `write_json`). A run is `running` until it ends `completed`, `failed` or
`interrupted`; a run whose process died without saying so (kill -9) reads as `interrupted`, and neither ever
becomes a parent. Promotion and rollback (which run the registry's `promoted` names) are `alignkit.promotion`.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import platform
import socket
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

from alignkit.errors import UserError

LIBRARIES = ("torch", "transformers", "trl", "peft", "datasets", "accelerate", "bitsandbytes", "wandb", "gradio")


def write_text(path: str | os.PathLike, text: str) -> None:
    """Write `text` to `path` so a reader sees the old file or the new one, never half of one: a temp file in
    the same folder, fsynced, then renamed over the target."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_json(path: str | os.PathLike, data: Any) -> None:
    """Atomically write `data` as indented JSON."""
    write_text(path, json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")


def read_json(path: str | os.PathLike, default: Any = None) -> Any:
    """Read JSON from `path`, or return `default` when the file does not exist."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        return default


def sha256_file(path: str | Path) -> str:
    """sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def fingerprint(*parts: Any) -> str:
    """A stable hash of JSON-able parts (resolved recipe, input sha256s, parent id)."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def library_versions() -> dict[str, str]:
    """Installed versions of the libraries a run depends on."""
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": sys.version.split()[0], "platform": platform.platform()}
    for name in ("alignkit",) + LIBRARIES:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "not installed"
    return out


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _alive(pid: int | None, host: str | None) -> bool:
    if not pid or host != socket.gethostname():
        return False
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


@dataclass
class Run:
    """One stage run's directory and manifest. `writes=False` is the view ranks other than 0 of a multi-process
    run hold: it reads the directory rank 0 chose, and its updates change nothing on disk."""

    path: Path
    writes: bool = True

    @property
    def id(self) -> str:
        return self.path.name

    @property
    def root(self) -> Path:
        return self.path.parent

    @property
    def manifest_path(self) -> Path:
        return self.path / "manifest.json"

    @property
    def adapter_dir(self) -> Path:
        return self.path / "adapter"

    @property
    def metrics_path(self) -> Path:
        return self.path / "metrics.jsonl"

    @property
    def manifest(self) -> dict:
        return read_json(self.manifest_path, {}) or {}

    def update(self, **fields: Any) -> dict:
        """Merge fields into the manifest (atomically) and mirror status/gate into the registry."""
        manifest = self.manifest
        manifest.update(fields)
        if not self.writes:
            return manifest
        write_json(self.manifest_path, manifest)
        mirror = {k: manifest.get(k) for k in ("stage", "parent", "status", "fingerprint", "gate") if k in manifest}
        with registry(self.root) as reg:
            reg["runs"].setdefault(self.id, {"path": self.id, "created": manifest.get("started")}).update(mirror)
        return manifest

    def finish(self, status: str, **fields: Any) -> dict:
        """Mark the run completed/failed/interrupted, with its wall time."""
        started = self.manifest.get("started_unix", time.time())
        return self.update(status=status, finished=_now(), wall_time_s=round(time.time() - started, 1), **fields)

    @property
    def status(self) -> str:
        """The manifest status, with a dead `running` process read as `interrupted`."""
        m = self.manifest
        status = m.get("status", "missing")
        if status == "running" and not _alive(m.get("pid"), m.get("host")):
            return "interrupted"
        return status


def start_run(output_dir: str | Path, stage: str, recipe: dict, *, parent: str | None = None,
              fingerprint_: str | None = None, **fields: Any) -> Run:
    """Create a new run directory with a `running` manifest and register it."""
    root = Path(output_dir)
    root.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    path = root / f"{stage}-{stamp}"
    n = 1
    while True:
        try:
            path.mkdir()
            break
        except FileExistsError:
            n += 1
            path = root / f"{stage}-{stamp}-{n}"
    run = Run(path)
    run.update(stage=stage, run_id=run.id, parent=parent, status="running", started=_now(),
               started_unix=time.time(), pid=os.getpid(), host=socket.gethostname(),
               fingerprint=fingerprint_, recipe=recipe, versions=library_versions(), **fields)
    return run


@contextlib.contextmanager
def registry(root: str | Path) -> Iterator[dict]:
    """Read-modify-write registry.json under an exclusive lock; the write is atomic."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".registry.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        reg = read_registry(root)
        yield reg
        write_json(root / "registry.json", reg)


def read_registry(root: str | Path) -> dict:
    """The registry of a run folder (an empty one if none exists yet)."""
    reg = read_json(Path(root) / "registry.json", None)
    if reg is None:
        reg = {"runs": {}, "promoted": None, "history": []}
    return reg


def find_run(ref: str | Path, root: str | Path | None = None) -> Run:
    """A run from a path to its directory (or its adapter/), or an id inside `root`."""
    path = Path(ref)
    if path.name == "adapter":
        path = path.parent
    if not path.is_dir() and root is not None:
        path = Path(root) / str(ref)
    if not (path / "manifest.json").is_file():
        raise UserError(f"{ref}: not a run directory (no manifest.json)")
    return Run(path)


def resumable(root: str | Path, stage: str, fingerprint_: str) -> Run | None:
    """The newest interrupted/failed run of `stage` with this fingerprint that left a checkpoint."""
    reg = read_registry(root)
    for run_id in sorted(reg["runs"], reverse=True):
        entry = reg["runs"][run_id]
        if entry.get("stage") != stage or entry.get("fingerprint") != fingerprint_:
            continue
        run = Run(Path(root) / run_id)
        if run.status in ("interrupted", "failed") and any(run.path.glob("checkpoints/checkpoint-*")):
            return run
    return None


def last_checkpoint(run: Run) -> str | None:
    """The newest checkpoint-N folder of a run, if any."""
    checkpoints = sorted(run.path.glob("checkpoints/checkpoint-*"), key=lambda p: int(p.name.split("-")[-1]))
    return str(checkpoints[-1]) if checkpoints else None


def parent_of_adapter(adapter_dir: str | Path) -> Run | None:
    """The run that produced an adapter directory, refusing one that did not complete."""
    path = Path(adapter_dir)
    run_dir = path.parent if path.name == "adapter" else path
    if not (run_dir / "manifest.json").is_file():
        return None  # an adapter from elsewhere: allowed, recorded by path only
    run = Run(run_dir)
    if run.status != "completed":
        raise UserError(f"{adapter_dir}: its run is '{run.status}', not completed; it cannot be a parent")
    return run
