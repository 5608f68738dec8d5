"""The same SFT stage as a Ray Train job on a local Ray cluster of 2 CPU workers: one run directory written by
rank 0 with world size 2, checkpoints in the run directory, and a re-run that resumes from them under Ray."""

from __future__ import annotations

import json
import shutil

import pytest

from tests.distributed.conftest import SFT, runs_in

pytestmark = pytest.mark.slow
ray = pytest.importorskip("ray", reason="pip install -e '.[dev]' (ray[train] is a dev dependency)")


@pytest.fixture
def local_cluster(small_data, monkeypatch):
    """A 2-CPU local cluster shared by both jobs of the test (started once: ~10 s)."""
    monkeypatch.chdir(small_data)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=256 * 1024 ** 2)
    yield small_data
    ray.shutdown()


def test_ray_two_workers_then_resume(local_cluster, capsys):
    from alignkit import cli

    args = ["sft", *[a for a in SFT if a != "tracking.backend=wandb"], "tracking.backend=none",
            "data.train=sft16.jsonl", "train.per_device_train_batch_size=1", "train.save_steps=1", "output.dir=ray",
            "--launcher", "ray", "--processes", "2"]
    with pytest.raises(SystemExit) as e:
        cli.main(args)
    out = capsys.readouterr()
    assert e.value.code == 0, out.err[-3000:]
    (run,), reg = runs_in(local_cluster / "ray")
    assert list(reg["runs"]) == [run.name] and reg["runs"][run.name]["status"] == "completed"
    m = json.loads((run / "manifest.json").read_text())
    assert m["distributed"]["world_size"] == 2 and m["distributed"]["engine"] == "ray"
    assert m["distributed"]["effective_batch"] == 2 and m["metrics"]["train_steps"] == 2
    assert sorted(p.name for p in (run / "checkpoints").glob("checkpoint-*")) == ["checkpoint-1", "checkpoint-2"]
    assert out.out.count(f"run: {run}") == 1

    # as if the job had been killed after its first checkpoint: the re-run resumes from it, under Ray
    shutil.rmtree(run / "checkpoints" / "checkpoint-2")
    shutil.rmtree(run / "adapter")
    (run / "manifest.json").write_text(json.dumps({**m, "status": "interrupted"}))
    with pytest.raises(SystemExit) as e:
        cli.main(args)
    assert e.value.code == 0, capsys.readouterr().err[-3000:]
    (again,), reg = runs_in(local_cluster / "ray")
    resumed = json.loads((again / "manifest.json").read_text())
    assert again == run and resumed["status"] == "completed"
    assert resumed["resumed_from"].endswith("checkpoint-1")
    assert (run / "adapter" / "adapter_model.safetensors").is_file()
