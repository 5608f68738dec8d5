"""`alignkit gate` on run directories with hand-made reports: exit codes, gate.json, manifest and registry."""

import json

import pytest

from alignkit import runs
from alignkit.runs import write_json
from alignkit.cli import main
from eval import stats


def make_run(root, candidate_refusals, base_refusals, stage="sft"):
    def metric(outcomes):
        return {"refusal_rate": stats.metric("mean", {f"h{i}": v for i, v in enumerate(outcomes)}, binary=True)}

    run = runs.start_run(root, stage, {})
    run.finish("completed")
    write_json(run.path / "eval" / "report.json", {"model_id": "m", "arms": {
        "base": {"harmful": {"metrics": metric(base_refusals)}},
        "adapter": {"harmful": {"metrics": metric(candidate_refusals)}}}})
    return run


@pytest.fixture
def gate_yaml(tmp_path):
    path = tmp_path / "gate.yaml"
    path.write_text("checks:\n  - {metric: harmful.refusal_rate, reference: parent, margin: 0.03}\n"
                    "  - {metric: harmful.refusal_rate, reference: base, margin: 0.03}\n")
    return path


def test_gate_passes_with_exit_0_and_records_the_verdict(tmp_path, gate_yaml, capsys):
    run = make_run(tmp_path / "runs", [1] * 20, [1] * 20)
    with pytest.raises(SystemExit) as exit_:
        main(["gate", "--config", str(gate_yaml), "--candidate", str(run.path)])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert "metric" in out and "p-value" in out and "verdict: PASS" in out
    assert json.loads((run.path / "gate.json").read_text())["verdict"] == "pass"
    assert run.manifest["gate"] == "pass"
    assert runs.read_registry(tmp_path / "runs")["runs"][run.id]["gate"] == "pass"


def test_gate_fails_with_exit_1_against_the_parent(tmp_path, gate_yaml, capsys):
    """Parent refused 20/20, candidate 5/20: b = 15, c = 0, p = 2/2^15 → fail (the base check as well)."""
    root = tmp_path / "runs"
    parent = make_run(root, [1] * 20, [1] * 20)
    child = make_run(root, [1] * 5 + [0] * 15, [1] * 20, stage="dpo")
    child.update(parent=parent.id)  # the parent is found from the manifest
    with pytest.raises(SystemExit) as exit_:
        main(["gate", "--config", str(gate_yaml), "--candidate", str(child.path)])
    assert exit_.value.code == 1
    verdict = json.loads((child.path / "gate.json").read_text())
    assert verdict["verdict"] == "fail" and verdict["parent"] == parent.id
    assert verdict["checks"][0]["against"] == "parent"
    assert verdict["checks"][0]["p_value"] == pytest.approx(2 / 2 ** 15)
    assert runs.read_registry(root)["runs"][child.id]["gate"] == "fail"
    assert "FAIL" in capsys.readouterr().out


def test_gate_without_an_eval_report_exits_2(tmp_path, gate_yaml, capsys):
    run = runs.start_run(tmp_path / "runs", "sft", {})
    with pytest.raises(SystemExit) as exit_:
        main(["gate", "--config", str(gate_yaml), "--candidate", str(run.path)])
    assert exit_.value.code == 2 and "no eval/report.json" in capsys.readouterr().err
