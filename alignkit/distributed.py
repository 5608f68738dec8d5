"""Several processes, one run: ranks, and rank-0 sections whose outcome every rank shares.

A stage under `torchrun`, `accelerate launch` or Ray Train runs as N processes of the same lifecycle. Rank 0
curates the data, chooses the run directory, writes everything that is written once (manifest, registry,
metrics.jsonl, W&B, adapter, summary) and runs the checks that need one answer (DPO's step-0 reference
check); the others train and wait. How the run id reaches the other ranks: **broadcast over torch.distributed**
from rank 0 after the process group is up, not an environment variable set by our launcher. The broadcast works
under any launcher (a user's own `torchrun`, `accelerate launch`, Ray, srun), and the run is chosen after the
data is curated (its sha256s are in the fingerprint that decides new run vs. resume), which no launcher knows.

The process group is joined through accelerate's `PartialState` (the state the trainer's Accelerator then
reuses); control messages (run path, errors) go over a gloo group, so they need no GPU tensors. A failure in a
rank-0 section is sent to every rank and raised there as the same kind of error (UserError → exit 2,
TrainingFailed → exit 1), so no rank is left waiting in a collective for a peer that has given up.

Launching (`LaunchSpec`, `preflight`, `launch`) is alignkit/launch.py. A process no launcher started never
enters this module before its run is open: the lifecycle runs its plain one-process path.
"""

from __future__ import annotations

import contextlib
import io
import os
import pickle
import secrets
import socket
from pathlib import Path
from typing import Any, Callable, TypeVar

from alignkit.errors import TrainingFailed, UserError

T = TypeVar("T")
# Set by `launch()` in the children it starts: where each rank leaves its exit code and rank 0 its run path.
EXIT_DIR_ENV = "ALIGNKIT_EXIT_DIR"
RESULT_FILE_ENV = "ALIGNKIT_RESULT_FILE"
ENGINE_ENV = "ALIGNKIT_ENGINE"


# ---------------------------------------------------------------------------------------------------- ranks
def world_size() -> int:
    """Processes in this run (1 outside a launcher)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    """This process's global rank (0 outside a launcher)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank()
    return int(os.environ.get("RANK", "0"))


def is_main() -> bool:
    return rank() == 0


def launched() -> bool:
    """True inside a process a launcher started (torchrun, accelerate, Ray Train set WORLD_SIZE/LOCAL_RANK)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 or "LOCAL_RANK" in os.environ


_CONTROL: Any = None  # the gloo group for control messages


def init() -> None:
    """Join the launcher's process group (a no-op for a single process)."""
    global _CONTROL
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        _check_single_by_mistake()
        return
    import torch
    import torch.distributed as dist
    from accelerate import PartialState

    # use_cpu on a machine without CUDA, as the resolved TRL config will say: the same state (gloo on CPU)
    PartialState(cpu=not torch.cuda.is_available())
    if _CONTROL is None:
        _CONTROL = dist.new_group(backend="gloo") if dist.get_backend() != "gloo" else dist.group.WORLD


def _check_single_by_mistake() -> None:
    """`accelerate launch --cpu --num_processes 2` starts ONE process (its CPU launcher needs mpirun): refuse
    to pass that off as a 2-process run. accelerate sets MASTER_ADDR only when asked for several processes."""
    asked = os.environ.get("MASTER_ADDR") and os.environ.get("ACCELERATE_USE_CPU", "").lower() == "true"
    mpi = any(k in os.environ for k in ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE"))
    if asked and not mpi:
        raise UserError("accelerate launch --cpu started one process, not several: its multi-CPU launcher needs "
                        "mpirun (--mpirun_hostfile). Use `accelerate launch --config_file recipes/accelerate/cpu.yaml"
                        "` (its torchrun path, gloo on CPU), `alignkit <stage> --launcher torchrun`, or drop "
                        "--num_processes for a single process")


def _group():
    init()
    return _CONTROL


def barrier() -> None:
    """Every rank waits here until all have arrived (a no-op for one process)."""
    if world_size() > 1:
        import torch.distributed as dist

        dist.barrier(group=_group())


def broadcast(value: Any = None) -> Any:
    """Rank 0's `value` on every rank (pickled over the gloo group)."""
    if world_size() <= 1:
        return value
    import torch.distributed as dist

    box = [value if is_main() else None]
    dist.broadcast_object_list(box, src=0, group=_group())
    return box[0]


def _gather(value: Any) -> list[Any]:
    if world_size() <= 1:
        return [value]
    import torch.distributed as dist

    out: list[Any] = [None] * world_size()
    dist.all_gather_object(out, value, group=_group())
    return out


class RankFailed(TrainingFailed):
    """Another rank failed; this one stops too (exit 1). Its message was printed by that rank."""

    echo = False


class SharedUserError(UserError):
    """A user error found on another rank, raised here too (exit 2); printed once, by rank 0."""

    echo = False


def _outcome(e: BaseException) -> tuple[str, str]:
    kind = "user" if isinstance(e, UserError) else "interrupt" if isinstance(e, KeyboardInterrupt) else "failed"
    return kind, f"{type(e).__name__}: {e}" if kind == "failed" and not isinstance(e, TrainingFailed) else str(e)


def _raise(kind: str, message: str, where: str) -> None:
    if kind == "user":
        raise SharedUserError(message)
    if kind == "interrupt":
        raise KeyboardInterrupt
    raise RankFailed(f"{where}: {message}")


def on_main(fn: Callable[[], T]) -> T:
    """Run `fn` on rank 0 only and return its result on every rank; if it raises, every rank raises."""
    if world_size() <= 1:
        return fn()
    if is_main():
        try:
            result = fn()
        except BaseException as e:
            broadcast(("error", *_outcome(e)))
            raise
        broadcast(("ok", result))
        return result
    message = broadcast()
    if message[0] == "error":
        _raise(message[1], message[2], "rank 0 failed")
    return message[1]


def every_rank(fn: Callable[[], T]) -> T:
    """Run `fn` on every rank, then agree: if any rank raised, every rank raises (its own error, or the first)."""
    if world_size() <= 1:
        return fn()
    error: BaseException | None = None
    try:
        result = fn()
    except BaseException as e:  # noqa: BLE001 - re-raised below, after the others have heard of it
        error = e
    outcomes = _gather(None if error is None else _outcome(error))
    if error is not None:
        if not is_main() and outcomes[0] == outcomes[rank()]:
            error.echo = False  # every rank hit the same error: rank 0's line is the one message
        raise error
    for r, outcome in enumerate(outcomes):
        if outcome is not None:
            _raise(outcome[0], outcome[1], f"rank {r} failed")
    return result



def share(fn: Callable[[], T]) -> T:
    """`fn()` once, on rank 0, its result sent to the other ranks (the curated data: curation runs once). A
    result that cannot be sent (RLHF's data holds a live reward function) is computed by every rank, after
    rank 0 has finished and printed its report."""
    mine: dict[str, T] = {}

    def once() -> bytes | None:
        mine["result"] = fn()
        try:
            return pickle.dumps(mine["result"])
        except (pickle.PicklingError, TypeError, AttributeError):
            return None

    blob = on_main(once)
    if blob is not None:
        return mine["result"] if is_main() else pickle.loads(blob)
    # Every rank makes its own; rank 0 too takes part in every_rank's gather (keeping what it made), else the
    # others' gather would pair with rank 0's next collective
    with contextlib.redirect_stdout(io.StringIO()):  # rank 0 printed the report
        return every_rank(lambda: mine["result"] if is_main() else fn())


def save_sharded(trainer, model, save: Callable[[Any], None]) -> bool:
    """Under FSDP the parameters are sharded: every rank takes part in gathering the full state dict, then
    rank 0 saves `model` with it. False (nothing done) when the trainer is not sharded."""
    if world_size() <= 1 or trainer is None or not getattr(trainer, "is_fsdp_enabled", False):
        return False
    state_dict = trainer.accelerator.get_state_dict(trainer.model)  # a collective: every rank
    unwrapped = trainer.accelerator.unwrap_model(model)
    on_main(lambda: save(_WithState(unwrapped, state_dict)))
    return True


class _WithState:
    """A model whose save_pretrained writes a given (gathered) state dict."""

    def __init__(self, model, state_dict):
        self.model, self.state_dict = model, state_dict

    def save_pretrained(self, path):
        self.model.save_pretrained(path, state_dict=self.state_dict)

def check_shared(root: str | Path) -> None:
    """Every rank must see the folder rank 0 writes runs into: rank 0 leaves a random token there, each rank
    reads it back. A rank on another machine with a local disk at that path cannot, and every rank stops with
    exit 2 before any data is read or any step trained."""
    if world_size() <= 1:
        return
    root = Path(root).resolve() if is_main() else Path(root)
    token = secrets.token_hex(8)
    probe = root / f".alignkit-shared-{token}"
    if is_main():
        root.mkdir(parents=True, exist_ok=True)
        probe.write_text(token)
    token = broadcast(token)
    probe = Path(root) / f".alignkit-shared-{token}"
    seen = probe.is_file() and probe.read_text() == token
    views = _gather((seen, socket.gethostname(), str(Path(root).resolve())))
    if is_main():
        probe.unlink(missing_ok=True)
    missing = [f"rank {r} on {host} ({path})" for r, (ok, host, path) in enumerate(views) if not ok]
    if missing:
        message = (f"output.dir {root} is not on storage every worker sees: {', '.join(missing)} cannot read what "
                   f"rank 0 on {views[0][1]} wrote there. Put output.dir on a filesystem shared by all machines "
                   "(NFS, Lustre, a mounted bucket) at the same path")
        raise UserError(message) if is_main() else SharedUserError(message)


def prepare_trainer(trainer):
    """The trainer as this engine needs it: under Ray Train, Ray's `prepare_trainer` and its report callback."""
    if os.environ.get("ALIGNKIT_RAY_WORKER"):
        from alignkit import ray_engine

        return ray_engine.prepare(trainer)
    return trainer


def shutdown() -> None:
    """Leave the process group (at the end of a launched command)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and os.environ.get(ENGINE_ENV) != "ray":
        dist.destroy_process_group()


def record_exit(code: int) -> None:
    """Leave this rank's exit code where `launch()` reads it (inside a launch we started)."""
    folder = os.environ.get(EXIT_DIR_ENV)
    if folder:
        Path(folder, f"rank-{rank()}").write_text(str(code))


def record_result(path: str | Path) -> None:
    """Rank 0 leaves the run's path where `launch()` reads it."""
    target = os.environ.get(RESULT_FILE_ENV)
    if target and is_main():
        Path(target).write_text(str(path))


def engine_name() -> str:
    """How this process was started, for the manifest."""
    if os.environ.get(ENGINE_ENV):
        return os.environ[ENGINE_ENV]
    if "ACCELERATE_MIXED_PRECISION" in os.environ or "ACCELERATE_USE_CPU" in os.environ:
        return "accelerate"
    if "TORCHELASTIC_RUN_ID" in os.environ:
        return "torchrun"
    return "none" if world_size() == 1 else "external"


def topology(args) -> dict[str, Any]:
    """The manifest's `distributed` entry: world size and the effective batch (per device x processes x accum)."""
    per_device, accumulation = args.per_device_train_batch_size, args.gradient_accumulation_steps
    size = args.world_size
    return {"world_size": size, "engine": engine_name(), "backend": _backend(),
            "per_device_train_batch_size": per_device, "gradient_accumulation_steps": accumulation,
            "effective_batch": per_device * size * accumulation}


def _backend() -> str | None:
    import torch.distributed as dist

    return dist.get_backend() if dist.is_available() and dist.is_initialized() else None
