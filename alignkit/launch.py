"""Launching a stage as several processes: `alignkit <stage> --launcher …` and a pipeline stage's `launch:`.

`LaunchSpec` says how (torchrun, accelerate launch, Ray Train; how many processes); `preflight()` refuses, with
exit 2 and before any worker starts, an engine that is not installed or more processes than devices; `launch()`
runs `alignkit <stage>` under the launcher and turns the ranks' exit codes into one; `run_launched()` is the
same for the pipeline, which gets the run back. What each started process then does — ranks, rank-0
sections, the shared run — is alignkit/distributed.py.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from alignkit.distributed import ENGINE_ENV, EXIT_DIR_ENV, RESULT_FILE_ENV
from alignkit.errors import TrainingFailed, UserError

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
