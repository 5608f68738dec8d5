"""The real CLI in a subprocess: SFT on the embedded model, and one clear exit-2 message per user error."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "WANDB_MODE": "offline", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}


def cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "alignkit.cli", *args], capture_output=True, text=True,
                          cwd=cwd or ROOT, env=ENV, timeout=600)


def assert_user_error(proc, *needles):
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    for needle in needles:
        assert needle in proc.stderr, proc.stderr[-2000:]


@pytest.mark.slow
def test_python_m_sft_trains_the_embedded_model(tmp_path):
    """`python -m sft` on SmolLM2-135M for 3 steps: LoRA weights move, loss finite, manifest complete."""
    proc = subprocess.run([sys.executable, "-m", "sft", "--config", "recipes/smollm2/sft.yaml",
                           "train.max_steps=3", "train.per_device_train_batch_size=4", "train.logging_steps=1",
                           "train.eval_strategy=no", f"output.dir={tmp_path}/runs"],
                          capture_output=True, text=True, cwd=ROOT, env=ENV, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run_dir,) = [p for p in (tmp_path / "runs").iterdir() if p.name.startswith("sft-")]
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["status"] == "completed" and manifest["metrics"]["train_steps"] == 3
    assert manifest["base_model"]["id"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert len(manifest["chat_template_sha256"]) == 64 and manifest["versions"]["trl"]
    assert manifest["wandb"]["mode"] == "offline" and list((run_dir / "wandb").glob("offline-run-*"))
    losses = [r["loss"] for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines()) if "loss" in r]
    assert losses and all(0 < l < 20 for l in losses)
    from safetensors.torch import load_file

    weights = load_file(run_dir / "adapter" / "adapter_model.safetensors")
    assert any("lora_B" in k and v.abs().sum() > 0 for k, v in weights.items())  # B is zero at init
    config = json.loads((run_dir / "adapter" / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == "HuggingFaceTB/SmolLM2-135M-Instruct"


def write(path: Path, text: str) -> str:
    path.write_text(text)
    return str(path)


GOOD = json.dumps({"messages": [{"role": "user", "content": "Hi there, how are you?"},
                                {"role": "assistant", "content": "Fine, thanks for asking."}]})


def test_missing_data_file(tmp_path):
    assert_user_error(cli("sft", "--config", "recipes/smollm2/sft.yaml", f"data.train={tmp_path}/nope.jsonl",
                          f"output.dir={tmp_path}/runs"), "nope.jsonl: data file not found")
    assert not (tmp_path / "runs").exists()  # nothing half-written


def test_malformed_json_line(tmp_path):
    data = write(tmp_path / "d.jsonl", GOOD + "\n{oops\n")
    assert_user_error(cli("sft", "--config", "recipes/smollm2/sft.yaml", f"data.train={data}",
                          f"output.dir={tmp_path}/runs"), "d.jsonl:2: malformed JSON")
    assert not (tmp_path / "runs").exists()


def test_missing_assistant_turn(tmp_path):
    data = write(tmp_path / "d.jsonl", json.dumps({"messages": [{"role": "user", "content": "hello?"}]}) + "\n")
    assert_user_error(cli("sft", "--config", "recipes/smollm2/sft.yaml", f"data.train={data}"),
                      "d.jsonl:1: field 'messages': missing assistant turn")


def test_empty_dataset_after_filtering(tmp_path):
    data = write(tmp_path / "d.jsonl", GOOD + "\n")
    assert_user_error(cli("sft", "--config", "recipes/smollm2/sft.yaml", f"data.train={data}", "data.max_tokens=5",
                          f"output.dir={tmp_path}/runs"), "empty dataset after filtering", "too_long=1")
    assert not (tmp_path / "runs").exists()


def test_unknown_recipe_key(tmp_path):
    recipe = write(tmp_path / "r.yaml", (ROOT / "recipes/smollm2/sft.yaml").read_text() + "trainer: {x: 1}\n")
    assert_user_error(cli("sft", "--config", recipe), "unknown key 'trainer'", "'train'")


def test_unknown_model(tmp_path):
    assert_user_error(cli("sft", "--config", "recipes/smollm2/sft.yaml", "model.base=nobody/no-such-model",
                          f"output.dir={tmp_path}/runs"), "HF_HUB_OFFLINE", "nobody/no-such-model")


def test_debug_shows_the_traceback(tmp_path):
    proc = cli("sft", "--config", "recipes/smollm2/sft.yaml", f"data.train={tmp_path}/nope.jsonl", "--debug")
    assert proc.returncode != 0 and "Traceback" in proc.stderr


def test_data_check_prints_the_report():
    proc = cli("data", "check", "recipes/data/sft_demo.jsonl")
    assert proc.returncode == 0, proc.stderr
    records = sum(1 for line in (ROOT / "recipes/data/sft_demo.jsonl").read_text().splitlines() if line.strip())
    assert f"formats:          messages ({records})" in proc.stdout and "splits:" in proc.stdout and "p95=" in proc.stdout
