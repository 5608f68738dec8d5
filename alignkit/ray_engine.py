"""A stage as a Ray Train job: `alignkit <stage> --launcher ray` or a pipeline stage's `launch: {engine: ray}`.

Written against Ray 2.60 (Ray Train V2, the default there): `ray.train.torch.TorchTrainer` starts N workers
with a torch process group (gloo on CPU, NCCL on GPUs) and the torchrun environment (RANK, WORLD_SIZE,
LOCAL_RANK); each worker runs the same `alignkit.lifecycle.run` as under torchrun, so rank 0 curates, opens the run
and writes once. After the stage builds its TRL trainer, `ray.train.huggingface.transformers.prepare_trainer`
is applied and a callback reports to Ray at each checkpoint. The checkpoints are written once, by the Trainer, in
the run directory (`<output.dir>/<run>/checkpoints/`), which must be storage every node sees; a re-run (or the
pipeline) resumes from them through the lifecycle's `resume: auto`. Ray's own records go to
`<output.dir>/.ray/`.

Before any worker starts, the driver refuses (exit 2) more workers than the cluster has CPUs/GPUs — Ray would
wait for them forever — and an output.dir some node cannot see.
"""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path
from typing import Any

from alignkit import distributed, launch, runs
from alignkit.errors import TrainingFailed, UserError

# Passed on to every worker: they decide where the model comes from and how W&B and threads behave.
FORWARDED_ENV = ("HF_HUB_OFFLINE", "HF_HOME", "WANDB_MODE", "WANDB_API_KEY", "WANDB_SILENT", "OMP_NUM_THREADS",
                 "TOKENIZERS_PARALLELISM", "ALIGNKIT_CACHE", "TRANSFORMERS_OFFLINE")


def connect(spec: launch.LaunchSpec) -> None:
    """Join the cluster at spec.address / RAY_ADDRESS, or start a local one (no dashboard)."""
    import ray

    if ray.is_initialized():
        return
    address = spec.address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, log_to_driver=True)
    else:
        ray.init(include_dashboard=False, log_to_driver=True, object_store_memory=256 * 1024 ** 2)


def uses_gpu() -> bool:
    import ray

    return ray.cluster_resources().get("GPU", 0) > 0


def preflight(spec: launch.LaunchSpec, output_dir: str | Path) -> None:
    """Enough CPUs/GPUs for the workers, and one output folder all nodes see; else UserError (exit 2)."""
    import ray

    workers = spec.size
    resources = ray.cluster_resources()
    kind = "GPU" if uses_gpu() else "CPU"
    have = int(resources.get(kind, 0))
    if workers > have:
        raise UserError(f"ray: {workers} workers need {workers} {kind}s, the cluster has {have}; Ray would wait "
                        f"for them forever. Use --processes {have} or add nodes (docs/distributed.md)")
    check_nodes_see(output_dir)


def check_nodes_see(output_dir: str | Path) -> None:
    """A zero-CPU task on every alive node reads a token the driver wrote into output.dir."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    root = Path(output_dir).resolve()
    root.mkdir(parents=True, exist_ok=True)
    token = secrets.token_hex(8)
    probe = root / f".alignkit-shared-{token}"
    probe.write_text(token)

    @ray.remote(num_cpus=0)
    def sees(path: str, expected: str) -> tuple[bool, str]:
        import socket

        p = Path(path)
        return p.is_file() and p.read_text() == expected, socket.gethostname()

    try:
        nodes = [n for n in ray.nodes() if n.get("Alive")]
        checks = [sees.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False))
                  .remote(str(probe), token) for n in nodes]
        views = ray.get(checks, timeout=120)
    finally:
        probe.unlink(missing_ok=True)
    blind = [host for ok, host in views if not ok]
    if blind:
        raise UserError(f"output.dir {root} is not on storage every Ray node sees: {', '.join(blind)} cannot read "
                        "what the driver wrote there. Put output.dir on a filesystem all nodes mount at the same "
                        "path (NFS, Lustre, a mounted bucket)")


def run(stage, recipe, spec: launch.LaunchSpec) -> runs.Run:
    """Run `stage` on `recipe` as spec.size Ray Train workers; returns the run rank 0 closed."""
    launch.preflight(spec)
    connect(spec)
    preflight(spec, recipe.output.dir)
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    root = Path(recipe.output.dir).resolve()
    env = {k: os.environ[k] for k in FORWARDED_ENV if k in os.environ}
    env.setdefault("OMP_NUM_THREADS", "1")
    trainer = TorchTrainer(
        _worker,
        train_loop_config={"stage": stage, "recipe": recipe, "cwd": os.getcwd()},
        scaling_config=ScalingConfig(num_workers=spec.size, use_gpu=uses_gpu()),
        # Ray's own records (and the checkpoint index) next to the runs, on the same shared storage
        run_config=RunConfig(name=f"{stage.name}-{secrets.token_hex(4)}", storage_path=str(root / ".ray"),
                             failure_config=FailureConfig(max_failures=0), worker_runtime_env={"env_vars": env}),
    )
    try:
        result = trainer.fit()
    except Exception as e:  # ray.train.TrainingFailedError: a worker crashed
        raise TrainingFailed(f"ray: the {stage.name} job failed: {str(e).strip().splitlines()[-1][:300]}") from None
    outcome = result.metrics or {}
    if "run_path" not in outcome and "error_kind" not in outcome and result.checkpoint is not None:
        with result.checkpoint.as_directory() as folder:
            outcome = json.loads(Path(folder, "outcome.json").read_text())
    if "run_path" not in outcome and "error_kind" not in outcome:
        raise TrainingFailed(f"ray: the {stage.name} job ended without an outcome from rank 0")
    if outcome.get("error_kind") == "user":
        raise UserError(outcome["error"])
    if outcome.get("error_kind"):
        raise TrainingFailed(outcome["error"])
    return runs.Run(Path(outcome["run_path"]))


def _worker(config: dict[str, Any]) -> None:
    """One Ray Train worker: the stage lifecycle, as under torchrun; its outcome is reported to the driver."""
    import ray.train

    os.environ[distributed.ENGINE_ENV] = "ray"
    os.environ["ALIGNKIT_RAY_WORKER"] = "1"
    if Path(config["cwd"]).is_dir():  # relative recipe paths, as the driver meant them
        os.chdir(config["cwd"])
    from alignkit import lifecycle
    from alignkit.cli import quiet_libraries

    quiet_libraries()
    try:
        done = lifecycle.run(config["stage"], config["recipe"])
        outcome: dict[str, Any] = {"run_path": str(done.path.resolve())}
    except UserError as e:  # raised on every rank alike (shared by alignkit.distributed): report, don't crash
        outcome = {"error_kind": "user", "error": str(e)}
    except TrainingFailed as e:
        outcome = {"error_kind": "failed", "error": str(e)}
    # Every worker reports once more. Ray 2.60 hands the driver the metrics of the last *checkpoint*, so rank 0
    # attaches a one-file checkpoint holding the outcome (a few bytes, copied into output.dir/.ray/).
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = None
        if ray.train.get_context().get_world_rank() == 0:
            Path(tmp, "outcome.json").write_text(json.dumps(outcome))
            checkpoint = ray.train.Checkpoint.from_directory(tmp)
        ray.train.report(outcome, checkpoint=checkpoint)


def prepare(trainer):
    """Ray's prepare_trainer, plus a callback reporting to Ray at each checkpoint the Trainer saves."""
    from ray.train.huggingface.transformers import prepare_trainer

    trainer = prepare_trainer(trainer)
    trainer.add_callback(_report_callback())
    return trainer


def _report_callback():
    import ray.train
    from transformers import TrainerCallback

    class ReportMetrics(TrainerCallback):
        """Every worker reports at each save (Ray requires the same count on every rank) with the metrics so far.

        The checkpoint itself is not handed to Ray: Ray 2.60 accepts only checkpoints under its experiment
        folder (storage_path/name), and copying each one there would store it twice. It stays where the
        Trainer wrote it, in the run directory on shared storage, and `resume: auto` restarts from it."""

        def on_save(self, args, state, control, **kwargs):
            metrics = {k: v for log in state.log_history for k, v in log.items() if isinstance(v, (int, float))}
            ray.train.report({**metrics, "checkpoint_step": state.global_step})

    return ReportMetrics()
