"""Run directories and the registry: atomic manifests, status, lineage guards."""

import json
import os
import subprocess
import sys

import pytest

from alignkit import runs
from alignkit.errors import UserError


def test_start_update_finish_and_registry(tmp_path):
    run = runs.start_run(tmp_path, "sft", {"a": 1}, fingerprint_="fp1")
    assert run.status == "running" and run.path.parent == tmp_path
    run.finish("completed", metrics={"loss": 1.0})
    manifest = json.loads((run.path / "manifest.json").read_text())
    assert manifest["status"] == "completed" and manifest["wall_time_s"] >= 0
    assert manifest["versions"]["torch"] and manifest["recipe"] == {"a": 1}
    reg = json.loads((tmp_path / "registry.json").read_text())
    assert reg["runs"][run.id]["status"] == "completed" and reg["runs"][run.id]["fingerprint"] == "fp1"


def test_two_runs_in_the_same_second_get_distinct_dirs(tmp_path):
    a, b = runs.start_run(tmp_path, "sft", {}), runs.start_run(tmp_path, "sft", {})
    assert a.path != b.path and len(runs.read_registry(tmp_path)["runs"]) == 2


def test_a_killed_process_reads_as_interrupted(tmp_path):
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    run = runs.start_run(tmp_path, "sft", {})
    run.update(pid=child.pid)
    assert run.status == "running"
    child.kill()
    child.wait()
    assert run.status == "interrupted"


def test_failed_run_cannot_be_a_parent(tmp_path):
    run = runs.start_run(tmp_path, "sft", {})
    run.finish("failed")
    (run.path / "adapter").mkdir()
    with pytest.raises(UserError, match="is 'failed', not completed"):
        runs.parent_of_adapter(run.path / "adapter")


def test_resumable_finds_only_matching_interrupted_runs_with_checkpoints(tmp_path):
    run = runs.start_run(tmp_path, "sft", {}, fingerprint_="fp")
    run.finish("interrupted")
    assert runs.resumable(tmp_path, "sft", "fp") is None  # no checkpoint yet
    (run.path / "checkpoints" / "checkpoint-2").mkdir(parents=True)
    (run.path / "checkpoints" / "checkpoint-10").mkdir()
    assert runs.resumable(tmp_path, "sft", "other") is None
    assert runs.resumable(tmp_path, "sft", "fp").id == run.id
    assert runs.last_checkpoint(run).endswith("checkpoint-10")  # numeric, not lexical, order


def test_atomic_write_leaves_no_temp_files(tmp_path):
    from alignkit.runs import write_json

    write_json(tmp_path / "x.json", {"a": 1})
    write_json(tmp_path / "x.json", {"a": 2})
    assert os.listdir(tmp_path) == ["x.json"] and json.loads((tmp_path / "x.json").read_text()) == {"a": 2}
