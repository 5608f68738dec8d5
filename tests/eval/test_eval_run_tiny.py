"""`eval.run_eval` end to end on the tiny random model: arms, per-item report, plots, cache, bad adapters."""

import json
import shutil
from pathlib import Path

import pytest
import torch

from alignkit import models
from alignkit.cli import main
from alignkit.recipe import ModelConfig, load_recipe
from eval import run_eval
from eval.config import EvalRecipe, GateRecipe
from eval.gate import decide

ROOT = Path(__file__).resolve().parents[2]
SUITES = """
suites:
  - {name: harmful, limit: 4}
  - {name: benign, limit: 4}
  - {name: mc, limit: 6}
  - {name: passages, limit: 3}
  - {name: kl, limit: 3}
  - {name: task, recipe: RECIPE, limit: 3}
generation: {max_new_tokens: 6, samples: 2, batch_size: 8}
tracking: {backend: none}
"""


@pytest.fixture(scope="module")
def adapter(tiny_model_dir, tmp_path_factory):
    """A LoRA adapter on the tiny model with random B matrices, so it differs from the base."""
    tokenizer, _ = models.load_tokenizer(tiny_model_dir)
    model = models.attach_lora(models.load_model(ModelConfig(base=tiny_model_dir)), {"r": 4})
    torch.manual_seed(1)
    for name, p in model.named_parameters():
        if "lora_B" in name:
            p.data.normal_(0, 0.3)
    out = tmp_path_factory.mktemp("adapter") / "adapter"
    models.save_adapter(model, tokenizer, out)
    return out


@pytest.fixture
def recipe_file(tmp_path, tiny_model_dir):
    path = tmp_path / "eval.yaml"
    path.write_text(f"model: {{base: {tiny_model_dir}}}\n" + SUITES.replace("RECIPE", str(ROOT / "recipes/smollm2/sft.yaml"))
                    + f"cache: {{dir: {tmp_path / 'cache'}}}\noutput: {{dir: {tmp_path / 'runs'}}}\n")
    return path


def test_run_eval_writes_a_report_with_per_item_outcomes(recipe_file, adapter, tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)  # the SFT recipe's data path is relative to the repository
    recipe = load_recipe(recipe_file, EvalRecipe)
    report = run_eval(recipe, str(adapter), tmp_path / "out")
    assert report["arm_names"] == ["base", "prompted", "adapter"]
    arms = report["arms"]
    assert set(arms["adapter"]) == {"harmful", "benign", "mc", "passages", "kl", "task"}
    assert "kl" not in arms["base"] and "passages" not in arms["prompted"]  # KL is adapter-vs-base only
    refusal = arms["adapter"]["harmful"]["metrics"]["refusal_rate"]
    assert refusal["n"] == 4 and set(refusal["outcomes"]) == {it["id"] for it in arms["adapter"]["harmful"]["items"]}
    assert arms["adapter"]["mc"]["metrics"]["acc"]["binary"] and len(arms["adapter"]["mc"]["items"]) == 6
    assert arms["adapter"]["kl"]["metrics"]["mean_kl"]["value"] > 0
    assert set(arms["adapter"]["task"]["metrics"]) == {"exact_match", "house_style", "rouge"}
    assert len(arms["base"]["harmful"]["samples"]) == 2
    assert "vs_prompted" in report["uplift"]["mc.acc"]
    dec = report["decontamination"]
    assert dec["train_files"] and set(dec["suites"]) >= {"harmful", "task"}
    files = {p.name for p in (tmp_path / "out").iterdir()}
    assert {"report.json", "report.md", "harmful.png", "mc.png"} <= files
    assert "95% CI" in (tmp_path / "out" / "report.md").read_text()
    # the reader is told which detector labelled the refusals and how far it agrees with humans
    assert report["detector_validation"].startswith(f"refusal detector `{report['detector']}`")
    assert report["detector_validation"] in (tmp_path / "out" / "report.md").read_text()
    verdict = decide(report, {}, GateRecipe())
    assert verdict["verdict"] in ("pass", "warn", "fail") and len(verdict["checks"]) == 5

    # a second eval of the same adapter never loads the model: every (arm, suite) comes from the cache
    import alignkit.generate

    monkeypatch.setattr(alignkit.generate, "load_policy", lambda *a, **k: pytest.fail("model loaded"))
    again = run_eval(recipe, str(adapter), tmp_path / "again")
    assert all(again["from_cache"].values())
    assert again["arms"]["adapter"]["mc"]["metrics"]["acc"] == arms["adapter"]["mc"]["metrics"]["acc"]


def test_adapter_for_another_base_and_non_adapter_exit_2(recipe_file, adapter, tmp_path, capsys):
    other = tmp_path / "other"
    shutil.copytree(adapter, other)
    config = json.loads((other / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = "HuggingFaceTB/SmolLM2-360M-Instruct"
    (other / "adapter_config.json").write_text(json.dumps(config))
    with pytest.raises(SystemExit) as exit_:
        main(["eval", "--config", str(recipe_file), "--adapter", str(other)])
    assert exit_.value.code == 2 and "adapter was trained on 'HuggingFaceTB/SmolLM2-360M-Instruct'" in \
        capsys.readouterr().err
    (tmp_path / "plain").mkdir()
    with pytest.raises(SystemExit) as exit_:
        main(["eval", "--config", str(recipe_file), "--adapter", str(tmp_path / "plain")])
    assert exit_.value.code == 2 and "not a PEFT adapter" in capsys.readouterr().err


def test_reward_model_win_rate_over_the_base_and_over_a_parent(recipe_file, adapter, tiny_reward_adapter, tmp_path,
                                                                 monkeypatch):
    from alignkit.reward_model import RewardScorer

    monkeypatch.chdir(ROOT)
    rm = tiny_reward_adapter
    recipe = load_recipe(recipe_file, EvalRecipe, [f"reward.model={rm}", "arms.prompted=false",
                                                   "suites=[{name: harmful, limit: 4}, {name: benign, limit: 4}, "
                                                   "{name: mc, limit: 3}]"])
    report = run_eval(recipe, str(adapter), tmp_path / "out")
    assert report["reward"]["reference"] == "base" and set(report["reward"]["suites"]) == {"harmful", "benign"}
    scorer = RewardScorer.load(rm)
    for suite in ("harmful", "benign"):
        mine, base = report["arms"]["adapter"][suite]["items"], report["arms"]["base"][suite]["items"]
        convs = [[{"role": "user", "content": row["prompt"]}] for row in mine]
        ours = scorer.score(convs, [row["response"] for row in mine])
        theirs = scorer.score(convs, [row["response"] for row in base])
        expected = sum(1.0 if a > b else 0.5 if a == b else 0.0 for a, b in zip(ours, theirs)) / len(ours)
        got = report["arms"]["adapter"][suite]["metrics"]["reward_win_rate"]
        assert got["value"] == pytest.approx(expected) and got["n"] == 4
    assert "reward_win_rate" in (tmp_path / "out" / "report.md").read_text()

    # the adapter against itself as parent: identical answers, every prompt a tie
    same = run_eval(recipe, str(adapter), tmp_path / "self", parent=str(adapter))
    assert same["reward"]["reference"] == "parent"
    assert [s["win_rate"] for s in same["reward"]["suites"].values()] == [0.5, 0.5]


def test_reward_model_that_is_not_one_exits_2(recipe_file, adapter, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["eval", "--config", str(recipe_file), "--adapter", str(adapter), f"reward.model={tmp_path}",
              "suites=[{name: harmful, limit: 2}]", "arms.prompted=false"])
    assert exit_.value.code == 2 and "not a reward run directory" in capsys.readouterr().err
