"""Which adapter answers a request: the pipeline's promoted run (or its A/B variants), or a run by id —
and the registry watcher that swaps the promoted adapter without dropping a request.

A swap loads the new adapter beside the old one, points new requests at it, and retires the old one: the
engine unloads it once the requests already admitted on it have finished. A promoted run whose gate did
not pass (only `runs promote --force` can do that) is refused and logged; the old adapter keeps serving.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from alignkit import runs
from alignkit.errors import UserError
from alignkit.promotion import PASSING

log = logging.getLogger("alignkit.serve")


class UnknownModel(LookupError):
    """No pipeline or run of that name; `.names` lists what is served."""

    def __init__(self, name: str, names: list[str]):
        super().__init__(name)
        self.names = names


class NothingPromoted(LookupError):
    """The pipeline's registry has no promoted run yet."""


@dataclass(frozen=True)
class Route:
    run_id: str
    variant: str | None = None  # "A" / "B" under an A/B split


def servable(root: Path, run_id: str) -> Path:
    """The adapter folder of a completed run whose gate passed; a clear error otherwise."""
    run = runs.find_run(run_id, root)
    gate = run.manifest.get("gate")
    if run.status != "completed" or gate not in PASSING:
        raise UserError(f"{run_id}: status '{run.status}', gate '{gate or 'not run'}'; only completed runs whose "
                        "gate passed are served")
    if not (run.adapter_dir / "adapter_config.json").is_file():
        raise UserError(f"{run_id}: no adapter/ to serve")
    return run.adapter_dir


def variant_of(user: str, split: float) -> str:
    """Sticky A/B assignment: the same user always lands on the same side (sha256 of the user id)."""
    bucket = int.from_bytes(hashlib.sha256(user.encode()).digest()[:8], "big") / 2**64
    return "A" if bucket < split else "B"


class Router:
    """Maps model names to adapters and follows the registry; thread-safe."""

    def __init__(self, root: str | Path, engine, ab_runs: list[str] = (), split: float = 0.5):
        self.root, self.engine = Path(root), engine
        self.name = self.root.resolve().name  # the pipeline's name is its run folder's name
        self.ab = list(ab_runs)
        self.split = split
        self._lock = threading.RLock()
        self.current: str | None = None
        self.swaps = 0
        self.refused: list[dict] = []
        self._mtime = None
        for run_id in self.ab:
            self._ensure(run_id)
        self.refresh()

    # model names ------------------------------------------------------------------------------------------
    def names(self) -> list[str]:
        reg = runs.read_registry(self.root)
        served = [rid for rid, e in sorted(reg["runs"].items()) if e.get("status") == "completed"
                  and e.get("gate") in PASSING]
        return [self.name] + served

    def acquire(self, model: str, user: str) -> Route:
        """Choose the run for a request and hold its adapter until `release` (the request is admitted)."""
        with self._lock:
            if model == self.name:
                if self.ab:
                    variant = variant_of(user, self.split)
                    route = Route(self.ab[0] if variant == "A" else self.ab[1], variant)
                elif self.current is None:
                    raise NothingPromoted(self.name)
                else:
                    route = Route(self.current)
            elif model in self.names():
                self._ensure(model)
                route = Route(model)
            else:
                raise UnknownModel(model, self.names())
            self.engine.acquire(route.run_id, revive=model != self.name)
            return route

    def release(self, route: Route) -> None:
        self.engine.release(route.run_id)

    def _ensure(self, run_id: str) -> None:
        if run_id not in self.engine.loaded:
            self.engine.load_adapter(run_id, str(servable(self.root, run_id)))

    # the registry watcher ---------------------------------------------------------------------------------
    def refresh(self) -> str | None:
        """Follow the registry's promoted run; returns what now answers for the pipeline's name."""
        path = self.root / "registry.json"
        mtime = path.stat().st_mtime_ns if path.is_file() else None
        if mtime == self._mtime:
            return self.current
        self._mtime = mtime
        promoted = runs.read_registry(self.root).get("promoted")
        if promoted == self.current or promoted is None:
            return self.current
        try:
            adapter = servable(self.root, promoted)
            self.engine.load_adapter(promoted, str(adapter))  # beside the old one; requests keep flowing
        except UserError as e:
            self.refused.append({"at": time.time(), "run": promoted, "reason": str(e)})
            log.warning("swap to %s refused: %s (still serving %s)", promoted, e, self.current)
            return self.current
        with self._lock:
            old, self.current = self.current, promoted
            self.swaps += old is not None
        if old and old not in self.ab and old != promoted:
            self.engine.retire_adapter(old)  # unloaded once its admitted requests have finished
        log.info("serving %s for %s (was %s)", promoted, self.name, old)
        return self.current

    def watch(self, interval_s: float, stop: threading.Event) -> threading.Thread:
        def loop():
            while not stop.wait(interval_s):
                try:
                    self.refresh()
                except Exception as e:  # a half-written registry or a vanished run must not kill the watcher
                    log.warning("registry check failed: %s", e)

        thread = threading.Thread(target=loop, name="serve-registry-watch", daemon=True)
        thread.start()
        return thread
