"""`make demo`'s pipeline recipe through the real CLI on the embedded model, with reduced steps and suites."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "WANDB_MODE": "offline", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}


@pytest.mark.slow
@pytest.mark.timeout(1800)  # ~6-10 min alone on 2 cores; the subprocess has its own 1500 s limit
def test_demo_pipeline_recipe_end_to_end(tmp_path):
    recipe = yaml.safe_load((ROOT / "recipes/smollm2/pipeline.yaml").read_text())
    small = ["train.max_steps=3", "train.per_device_train_batch_size=4", "train.save_steps=3", "train.logging_steps=1"]
    recipe["output"] = str(tmp_path / "runs")
    recipe["eval"]["overrides"] = [
        "suites=[{name: harmful, limit: 8}, {name: benign, limit: 8}, {name: mc, limit: 12}, {name: passages, limit: 4}]",
        "generation.max_new_tokens=24"]
    recipe["stages"][0]["overrides"] = small + ["train.eval_strategy=no"]
    recipe["stages"][1]["overrides"] = small + ["train.eval_steps=3"]
    for stage in recipe["stages"]:  # margins wide enough that 3 steps on 8 prompts cannot fail by noise
        stage["gate"] = str(tmp_path / "gate.yaml")
    (tmp_path / "gate.yaml").write_text(yaml.safe_dump({"checks": [
        {"metric": "harmful.refusal_rate", "reference": "parent", "margin": 1.0},
        {"metric": "mc.acc", "reference": "base", "margin": 1.0}]}))
    config = tmp_path / "pipeline.yaml"
    config.write_text("# test\n" + yaml.safe_dump(recipe, sort_keys=False))
    proc = subprocess.run([sys.executable, "-m", "alignkit.cli", "pipeline", "--config", str(config)],
                          capture_output=True, text=True, cwd=ROOT, env=ENV, timeout=1500)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    reg = json.loads((tmp_path / "runs" / "registry.json").read_text())
    dpo = [r for r in reg["runs"] if r.startswith("dpo-")][0]
    assert reg["promoted"] == dpo and reg["runs"][dpo]["parent"].startswith("sft-")
    assert "promoted: " + dpo in proc.stdout and "report: " in proc.stdout
    report = (tmp_path / "runs" / "report" / "report.md").read_text()
    assert "Sample answers: harmful" in report and "| harmful.refusal_rate |" in report

    listing = subprocess.run([sys.executable, "-m", "alignkit.cli", "runs", "--dir", str(tmp_path / "runs"), "list"],
                             capture_output=True, text=True, cwd=ROOT, env=ENV)
    assert listing.returncode == 0 and f"* {dpo}" in listing.stdout
