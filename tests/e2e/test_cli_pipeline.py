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
@pytest.mark.timeout(1800)  # ~6-10 min alone on 2 cores; each subprocess has its own 1500 s limit
def test_demo_pipeline_recipe_end_to_end(tmp_path):
    """The demo's loop with people in place of the judge (a 3-step SFT refuses too rarely for the rules judge
    to be sure of any pair): the SFT adapter's answers wait in the store (exit 3), an annotator votes on them
    through the store calls the app uses, and the re-run trains DPO on those pairs and promotes it."""
    from collect.store import open_store

    recipe = yaml.safe_load((ROOT / "recipes/smollm2/pipeline.yaml").read_text())
    small = ["train.max_steps=3", "train.per_device_train_batch_size=4", "train.save_steps=3", "train.logging_steps=1"]
    recipe["output"] = str(tmp_path / "runs")
    recipe["eval"]["overrides"] = [
        "suites=[{name: harmful, sample: 8}, {name: benign, sample: 8}, {name: mc, limit: 12}, {name: passages, limit: 4}]",
        "generation.max_new_tokens=24"]
    recipe["stages"][0]["overrides"] = small + ["train.eval_strategy=no"]
    recipe["stages"][1]["overrides"] = small + ["train.eval_steps=3", "reference.pairs=2"]
    url = f"sqlite:///{tmp_path}/rounds/{{parent}}.db"
    recipe["collect"].update(annotator="humans", store=url, prompts=10, min_prompts=10, min_pairs=6,
                             overrides=["generation.max_new_tokens=16", "generation.batch_size=10"])
    for stage in recipe["stages"]:  # margins wide enough that 3 steps on 8 prompts cannot fail by noise
        stage["gate"] = str(tmp_path / "gate.yaml")
    (tmp_path / "gate.yaml").write_text(yaml.safe_dump({"checks": [
        {"metric": "harmful.refusal_rate", "reference": "parent", "margin": 1.0},
        {"metric": "mc.acc", "reference": "base", "margin": 1.0}]}))
    config = tmp_path / "pipeline.yaml"
    config.write_text("# test\n" + yaml.safe_dump(recipe, sort_keys=False))
    command = [sys.executable, "-m", "alignkit.cli", "pipeline", "--config", str(config)]

    waiting = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, env=ENV, timeout=1500)
    assert waiting.returncode == 3, waiting.stdout[-3000:] + waiting.stderr[-3000:]
    sft = json.loads((tmp_path / "runs" / "registry.json").read_text())["promoted"]
    assert sft.startswith("sft-") and "collect serve --config recipes/smollm2/collect.yaml" in waiting.stdout
    assert waiting.stdout.rstrip().splitlines()[-1].startswith("report: ")  # written while waiting too
    store = open_store(url.replace("{parent}", sft))
    store.add_user("alice", "annotator", "correct horse battery staple")
    votes = 0
    while (shown := store.next_item("alice")) is not None:  # what the app does for each item alice sees
        store.submit("alice", shown.assignment_id, "a", shown.idempotency_key, then_next=False)
        votes += 1
    assert votes >= 10  # one pair per prompt, and the SFT adapter's own answers

    proc = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, env=ENV, timeout=1500)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert f"== sft: unchanged, reusing {sft}" in proc.stdout
    reg = json.loads((tmp_path / "runs" / "registry.json").read_text())
    dpo = [r for r in reg["runs"] if r.startswith("dpo-")][0]
    assert reg["promoted"] == dpo and reg["runs"][dpo]["parent"] == sft
    assert f"promoted: {dpo}" in proc.stdout and "report: " in proc.stdout
    report = (tmp_path / "runs" / "report" / "report.md").read_text()
    assert "Sample answers: harmful" in report and "| harmful.refusal_rate |" in report

    listing = subprocess.run([sys.executable, "-m", "alignkit.cli", "runs", "--dir", str(tmp_path / "runs"), "list"],
                             capture_output=True, text=True, cwd=ROOT, env=ENV)
    assert listing.returncode == 0 and f"* {dpo}" in listing.stdout
