"""Promote / rollback: only passing runs, --force recorded with a reason, rollback re-points, all logged."""

import subprocess
import sys
from pathlib import Path

import pytest

from alignkit import promotion, runs
from alignkit.errors import UserError

ROOT = Path(__file__).resolve().parents[2]


def make(root, stage, gate, parent=None, status="completed"):
    run = runs.start_run(root, stage, {}, parent=parent)
    run.finish(status, gate=gate)
    return run


def test_promote_rollback_round_trip(tmp_path):
    sft = make(tmp_path, "sft", "pass")
    dpo = make(tmp_path, "dpo", "warn", parent=sft.id)
    promotion.promote(tmp_path, sft.id)
    event = promotion.promote(tmp_path, dpo.id)
    assert event["lineage"] == [sft.id, dpo.id] and event["previous"] == sft.id
    assert runs.read_registry(tmp_path)["promoted"] == dpo.id
    assert promotion.rollback(tmp_path)["run"] == sft.id
    assert runs.read_registry(tmp_path)["promoted"] == sft.id
    with pytest.raises(UserError, match="no earlier promoted run"):
        promotion.rollback(tmp_path)
    actions = [e["action"] for e in runs.read_registry(tmp_path)["history"]]
    assert actions == ["promote", "promote", "rollback"]


def test_failed_gate_needs_force_with_a_reason(tmp_path):
    bad = make(tmp_path, "dpo", "fail")
    with pytest.raises(UserError, match="its gate is 'fail'"):
        promotion.promote(tmp_path, bad.id)
    with pytest.raises(UserError, match="--force needs --reason"):
        promotion.promote(tmp_path, bad.id, force=True)
    event = promotion.promote(tmp_path, bad.id, force=True, reason="manual review found the check flaky")
    assert event["forced"] and runs.read_registry(tmp_path)["history"][-1]["reason"].startswith("manual")


def test_interrupted_run_is_never_promoted(tmp_path):
    run = make(tmp_path, "sft", "pass", status="interrupted")
    with pytest.raises(UserError, match="only a completed run"):
        promotion.promote(tmp_path, run.id, force=True, reason="x")


def test_cli_refuses_a_failed_run_with_exit_2(tmp_path):
    bad = make(tmp_path, "dpo", "fail")
    proc = subprocess.run([sys.executable, "-m", "alignkit.cli", "runs", "--dir", str(tmp_path), "promote", bad.id],
                          capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 2 and "its gate is 'fail'" in proc.stderr and "Traceback" not in proc.stderr
    listing = subprocess.run([sys.executable, "-m", "alignkit.cli", "runs", "--dir", str(tmp_path), "list"],
                             capture_output=True, text=True, cwd=ROOT)
    assert listing.returncode == 0 and bad.id in listing.stdout and "fail" in listing.stdout
