"""Several processes, one run: ranks, rank-0 sections whose outcome every rank shares, and launching.

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

`LaunchSpec` + `launch()` are the launcher wrapper behind `alignkit <stage> --launcher …` and a pipeline stage's
`launch:`; `preflight()` refuses, with exit 2 and before any worker starts, an engine that is not installed,
more processes than devices, and (in every rank, before data or training) a run folder some rank cannot see.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import re
import secrets
import socket
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal, TypeVar

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


# -------------------------------------------------------------------------------------------------- launching
ENGINES = ("torchrun", "accelerate", "ray")


@dataclass(frozen=True)
class LaunchSpec:
    """How to run one stage: in this process (the default), or as N processes under a launcher."""

    engine: Literal["torchrun", "accelerate", "ray"] | None = field(default=None, metadata={
        "help": "torchrun, accelerate or ray; default: ray with workers, accelerate with a config, else torchrun."})
    processes: int = field(default=1, metadata={"help": "Processes (one per GPU; on CPU at most one per core)."})
    workers: int = field(default=0, metadata={"help": "Ray Train workers (the same as processes, for engine ray)."})
    config: str | None = field(default=None, metadata={"help": "accelerate config, e.g. recipes/accelerate/ddp.yaml."})
    address: str | None = field(default=None, metadata={
        "help": "Ray cluster address (default: RAY_ADDRESS, else a local cluster)."})

    def __post_init__(self):
        if self.processes < 1 or self.workers < 0:
            raise ValueError(f"launch: processes must be >= 1 and workers >= 0, got {self.processes}/{self.workers}")
        if self.config and not Path(self.config).is_file():
            raise ValueError(f"launch.config: file not found: {self.config}")

    @property
    def kind(self) -> str | None:
        """The engine to use, or None to run in this process."""
        if self.engine:
            return self.engine
        if self.workers:
            return "ray"
        if self.config:
            return "accelerate"
        return "torchrun" if self.processes > 1 else None

    @property
    def size(self) -> int:
        if self.kind == "accelerate" and self.processes == 1 and self.config:
            return int(_accelerate_config(self.config).get("num_processes", 1))
        return max(self.processes, self.workers)


def _accelerate_config(path: str) -> dict[str, Any]:
    import yaml

    return yaml.safe_load(Path(path).read_text()) or {}


def installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def device_count() -> tuple[int, str]:
    """(devices, what they are): CUDA GPUs, else the CPU cores this process may use."""
    import torch

    if torch.cuda.is_available():
        return torch.cuda.device_count(), "CUDA GPUs"
    return len(os.sched_getaffinity(0)), "CPU cores (no CUDA)"


def preflight(spec: LaunchSpec) -> None:
    """Refuse a launch that cannot work, with one message (UserError, exit 2), before any worker starts."""
    kind = spec.kind
    if kind is None:
        return
    needs = {"torchrun": ("torch.distributed.run", "torch (torchrun ships with it)"),
             "accelerate": ("accelerate", "pip install accelerate"),
             "ray": ("ray.train", "pip install 'ray[train]'  (or: pip install -e '.[ray]')")}[kind]
    if not installed(needs[0]):
        raise UserError(f"launcher {kind} is not installed: {needs[1]}")
    if kind == "accelerate" and spec.config:
        cfg = _accelerate_config(spec.config)
        if cfg.get("distributed_type") == "DEEPSPEED" and not installed("deepspeed"):
            raise UserError(f"{spec.config}: distributed_type DEEPSPEED needs deepspeed, which is not installed: "
                            "pip install deepspeed")
        if cfg.get("num_machines", 1) > 1:
            return  # a multi-machine launch: this machine's devices are a part; the rank-level check covers storage
    if kind == "ray":
        return  # Ray counts its cluster's resources itself: see alignkit.ray_engine.preflight
    n, what = device_count()
    if spec.size > n:
        raise UserError(f"launch: {spec.size} processes but this machine has {n} {what}; use at most {n} "
                        "(one process per device)")


def command(spec: LaunchSpec, argv: list[str]) -> list[str]:
    """The launcher command line that runs `alignkit <argv>` as spec.size processes on this machine."""
    target = ["-m", "alignkit.cli", *argv]
    if spec.kind == "torchrun":
        # --standalone: a local rendezvous on a free port (no clash with another run's 29500)
        return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(spec.size),
                *target]
    if spec.kind == "accelerate":
        # Without a config: accelerate's torchrun path (--multi_gpu). On a machine without CUDA its processes
        # train on CPU over gloo, because the resolved TRL config says use_cpu (see docs/distributed.md);
        # accelerate's own CPU mode (--cpu) starts one process, or needs mpirun.
        cfg = (["--config_file", spec.config] if spec.config else
               ["--multi_gpu", "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"])
        return [sys.executable, "-m", "accelerate.commands.launch", *cfg, "--num_processes", str(spec.size),
                *target]
    raise ValueError(f"no subprocess launcher for {spec.kind}")


def launch(spec: LaunchSpec, argv: list[str]) -> int:
    """Run `alignkit <argv>` under the launcher; the exit code: 2 if any rank exited 2, else the launcher's."""
    preflight(spec)
    with tempfile.TemporaryDirectory(prefix="alignkit-launch-") as tmp:
        env = {**os.environ, EXIT_DIR_ENV: tmp, ENGINE_ENV: spec.kind or "none"}
        env.setdefault("OMP_NUM_THREADS", "1")  # N processes on N cores: one thread each, as torchrun would set
        code, report = _run_quietly(command(spec, argv), env)
        codes = [int(p.read_text()) for p in Path(tmp).glob("rank-*")]
    if code != 0 and not codes:  # no rank got to say why (killed, crashed): the launcher's own report is it
        sys.stderr.write("".join(report))
    if 2 in codes:
        return 2
    if code != 0:
        return 130 if 130 in codes else 1
    return max(codes, default=0)


# The launcher's own failure report (torchrun's ChildFailedError block) starts with a log line like this.
_AGENT_LINE = re.compile(r"^[EWI]\d{4} [\d:.]+ \d+ .*torch/distributed/elastic/")


def _run_quietly(cmd: list[str], env: dict[str, str]) -> tuple[int, list[str]]:
    """Run the launcher, passing the workers' output through; hold back its failure report (the ranks have
    printed the one message that matters) and return it, for when no rank could."""
    proc = subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, text=True, bufsize=1)
    held: list[str] = []
    assert proc.stderr is not None
    for line in proc.stderr:
        if held or _AGENT_LINE.match(line):
            held.append(line)
        else:
            sys.stderr.write(line)
    return proc.wait(), held


def run_launched(stage, recipe, spec: LaunchSpec):
    """Run `stage` on `recipe` under `spec`'s launcher from this process (the pipeline); returns the run."""
    from alignkit import runs
    from alignkit.recipe import to_dict

    if spec.kind == "ray":
        from alignkit import ray_engine

        return ray_engine.run(stage, recipe, spec)
    import yaml

    folder = Path(recipe.output.dir) / ".launch"
    folder.mkdir(parents=True, exist_ok=True)
    fd, config = tempfile.mkstemp(dir=folder, prefix=f"{stage.name}-", suffix=".yaml")
    with os.fdopen(fd, "w") as f:
        yaml.safe_dump(_plain(to_dict(recipe)), f, sort_keys=False)
    result = Path(config).with_suffix(".run")
    os.environ[RESULT_FILE_ENV] = str(result)
    try:
        code = launch(spec, [stage.name, "--config", config])
    finally:
        os.environ.pop(RESULT_FILE_ENV, None)
    if code == 2:
        raise UserError(f"{stage.name} under {spec.kind}: the stage refused its input (see the message above)")
    if code != 0 or not result.is_file():
        raise TrainingFailed(f"{stage.name} under {spec.kind} exited {code}")
    run = runs.Run(Path(result.read_text().strip()))
    result.unlink()
    Path(config).unlink()
    return run


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if dataclasses.is_dataclass(value):
        return _plain(dataclasses.asdict(value))
    return value
