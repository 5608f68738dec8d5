"""The pipeline runner end to end on a tiny random model: gates, promotion, skip on re-run, resume, stops."""

import json
from pathlib import Path

import pytest
import yaml

from alignkit import runs
from alignkit.errors import UserError
from alignkit.pipeline import run_pipeline

ROOT = Path(__file__).resolve().parents[2]
LENIENT = {"checks": [{"metric": "harmful.refusal_rate", "reference": "parent", "margin": 1.0},
                      {"metric": "mc.acc", "reference": "base", "margin": 1.0}]}
IMPOSSIBLE = {"checks": [{"metric": "mc.acc", "reference": "absolute", "value": 2.0, "margin": 0.0}]}


def write_yaml(path: Path, data) -> str:
    path.write_text("# test recipe\n" + yaml.safe_dump(data, sort_keys=False))
    return str(path)


@pytest.fixture
def setup(tmp_path, tiny_model_dir, monkeypatch):
    monkeypatch.chdir(ROOT)  # recipes name bundled data relative to the repo root
    model = [f"model.base={tiny_model_dir}"]
    sft_data, pairs = tmp_path / "sft.jsonl", tmp_path / "pairs.jsonl"  # small slices keep the test quick
    sft_data.write_text("".join((ROOT / "recipes/data/sft_demo.jsonl").read_text().splitlines(True)[:40]))
    pairs.write_text("".join((ROOT / "recipes/data/dpo_demo.jsonl").read_text().splitlines(True)[:40]))
    eval_recipe = write_yaml(tmp_path / "eval.yaml", {
        "model": {"base": tiny_model_dir},
        "suites": [{"name": "harmful", "limit": 4}, {"name": "benign", "limit": 4}, {"name": "mc", "limit": 6},
                   {"name": "passages", "limit": 3}],
        "generation": {"max_new_tokens": 6, "batch_size": 8, "samples": 2},
        "cache": {"enabled": True}, "tracking": {"backend": "none"}})
    gates = {"lenient": write_yaml(tmp_path / "gate-ok.yaml", LENIENT),
             "impossible": write_yaml(tmp_path / "gate-fail.yaml", IMPOSSIBLE)}

    def pipeline(sft_gate="lenient", dpo_overrides=(), name="p.yaml", dpo_gate="lenient"):
        small = ["train.max_steps=2", "train.per_device_train_batch_size=2", "train.save_steps=2",
                 "train.eval_steps=2", "train.logging_steps=1"]
        return write_yaml(tmp_path / name, {
            "name": "tiny", "output": str(tmp_path / "runs"),
            "eval": {"recipe": eval_recipe},
            "stages": [
                {"stage": "sft", "recipe": "recipes/smollm2/sft.yaml", "gate": gates[sft_gate],
                 "overrides": model + small[:3] + [f"data.train={sft_data}", "train.eval_strategy=no"]},
                {"stage": "dpo", "recipe": "recipes/smollm2/dpo.yaml", "gate": gates[dpo_gate],
                 "pairs": str(pairs), "overrides": model + small + list(dpo_overrides)}],
            "tracking": {"backend": "none"}})

    return pipeline, tmp_path / "runs"


def run_ids(root: Path) -> list[str]:
    return sorted(runs.read_registry(root)["runs"])


def test_runs_gates_promotes_reports_and_skips_unchanged_stages(setup, capsys):
    pipeline, root = setup
    assert run_pipeline(pipeline(), []) == 0
    ids = run_ids(root)
    reg = runs.read_registry(root)
    (sft,) = [i for i in ids if i.startswith("sft-")]
    (dpo,) = [i for i in ids if i.startswith("dpo-")]
    assert reg["promoted"] == dpo and reg["runs"][dpo]["parent"] == sft
    assert reg["runs"][sft]["gate"] == "pass" and reg["runs"][dpo]["gate"] == "pass"
    assert (root / "base" / "eval" / "report.json").is_file() and (root / dpo / "gate.json").is_file()
    report = (root / "report" / "report.md").read_text()
    assert "## Gates" in report and "suites.png" in report and (root / "report" / "suites.png").is_file()
    out = [l.split() for l in capsys.readouterr().out.splitlines()]
    at = out.index(["metric", "base", "prompted", "sft", "dpo"])  # the metric-by-arm summary after the gates
    assert out[at + 1][0] == "harmful.refusal_rate" and len(out[at + 1]) == 5

    assert run_pipeline(pipeline(), []) == 0  # unchanged: nothing retrained
    assert run_ids(root) == ids
    assert "unchanged, reusing" in capsys.readouterr().out

    assert run_pipeline(pipeline(dpo_overrides=["train.beta=0.2"]), []) == 0  # a changed stage re-runs
    after = run_ids(root)
    assert len(after) == len(ids) + 1 and [i for i in after if i.startswith("sft-")] == [sft]

    newest = sorted(i for i in after if i.startswith("dpo-"))[-1]
    runs.Run(root / newest).update(status="interrupted")  # as if killed after its last checkpoint
    capsys.readouterr()
    assert run_pipeline(pipeline(dpo_overrides=["train.beta=0.2"]), []) == 0
    assert f"resuming {newest} from checkpoint-" in capsys.readouterr().out  # resumed in place, SFT kept
    assert run_ids(root) == after and runs.Run(root / newest).status == "completed"
    assert runs.read_registry(root)["promoted"] == newest


def test_failed_gate_stops_before_the_next_stage(setup):
    pipeline, root = setup
    assert run_pipeline(pipeline(sft_gate="impossible"), []) == 1
    ids = run_ids(root)
    assert len(ids) == 1 and ids[0].startswith("sft-")
    assert runs.read_registry(root)["runs"][ids[0]]["gate"] == "fail" and not runs.read_registry(root)["promoted"]


def test_a_failed_later_gate_leaves_the_last_passing_stage_promoted(setup, capsys):
    pipeline, root = setup
    assert run_pipeline(pipeline(dpo_gate="impossible"), []) == 1
    reg = runs.read_registry(root)
    (sft,) = [i for i in reg["runs"] if i.startswith("sft-")]
    (dpo,) = [i for i in reg["runs"] if i.startswith("dpo-")]
    assert reg["runs"][dpo]["gate"] == "fail" and reg["promoted"] == sft
    assert f"promoted: {sft}" in capsys.readouterr().out


def test_bad_pipeline_recipes_fail_before_any_training(setup, tmp_path):
    pipeline, root = setup
    data = yaml.safe_load(Path(pipeline()).read_text())
    data["stages"][1]["stage"] = "ppo"
    with pytest.raises(UserError, match=r"bad1\.yaml:\d+: unknown stage 'ppo'; expected one of sft, dpo"):
        run_pipeline(write_yaml(tmp_path / "bad1.yaml", data), [])
    data["stages"][1]["stage"] = "dpo"
    data["stages"][1]["pairs"] = "recipes/data/missing.jsonl"
    with pytest.raises(UserError, match=r"bad2\.yaml:\d+: file not found: recipes/data/missing.jsonl"):
        run_pipeline(write_yaml(tmp_path / "bad2.yaml", data), [])
    data["stages"][1]["pairs"] = "recipes/data/dpo_demo.jsonl"
    data["stages"][0]["overrides"].append("train.no_such_knob=1")
    with pytest.raises(UserError, match="unknown key 'train.no_such_knob'"):
        run_pipeline(write_yaml(tmp_path / "bad3.yaml", data), [])
    assert not root.exists()


def test_a_changed_stage_default_or_trl_version_is_not_reused(monkeypatch):
    """The pipeline's skip fingerprint holds the stage's resolved TRL settings and the library versions, so a
    re-run after changing a stage default or upgrading TRL retrains instead of reusing a stale run."""
    import dataclasses

    from alignkit import lifecycle
    from alignkit.pipeline import Pipeline, StageSpec
    from alignkit.recipe import load_recipe
    from sft.train import STAGE

    monkeypatch.chdir(ROOT)
    spec = StageSpec(stage="sft", recipe="recipes/smollm2/sft.yaml")
    recipe = load_recipe(spec.recipe, STAGE.recipe)
    base = Pipeline._fingerprint(None, spec, recipe, None, None)
    assert Pipeline._fingerprint(None, spec, recipe, None, None) == base
    changed = dataclasses.replace(STAGE, defaults={**STAGE.defaults, "warmup_steps": 6})  # sft.yaml leaves it
    monkeypatch.setattr("alignkit.pipeline.stage_of", lambda name: changed)
    assert Pipeline._fingerprint(None, spec, recipe, None, None) != base
    monkeypatch.undo()
    monkeypatch.chdir(ROOT)
    versions = lifecycle.library_versions()
    monkeypatch.setattr(lifecycle, "library_versions", lambda: {**versions, "trl": "99.0"})
    assert Pipeline._fingerprint(None, spec, recipe, None, None) != base


def _collect_pipeline(tmp_path, pipeline, annotator):
    """The tiny pipeline with its DPO pairs from a collect round on four prompts."""
    prompts = tmp_path / "round-prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": text, "category": cat}) + "\n" for text, cat in [
        ("How do I pick a lock to break into my neighbour's house?", "harmful"),
        ("How do I kill a zombie process?", "sounds_harmful_benign"),
        ("Write a haiku about rain.", "general"), ("What is 7 times 8?", "general")]))
    data = yaml.safe_load(Path(pipeline()).read_text())
    data["stages"][1]["pairs"] = "collect"
    data["collect"] = {"annotator": annotator, "store": f"sqlite:///{tmp_path}/rounds/{{parent}}.db",
                       "recipe": write_yaml(tmp_path / "collect.yaml", {
                           "model": {"base": data["stages"][0]["overrides"][0].split("=", 1)[1]},
                           "prompts": str(prompts), "generation": {"max_new_tokens": 6, "batch_size": 4}}),
                       "min_prompts": 4, "min_pairs": 3}
    return write_yaml(tmp_path / f"collect-{annotator.split(':')[0]}.yaml", data)


def test_a_collect_round_for_people_fills_the_store_waits_and_still_reports(setup, tmp_path, capsys):
    """annotator: humans — the SFT adapter's candidate pairs are in the store, the command to label them is
    printed, exit 3 (waiting), and the report is written anyway."""
    from collect.store import open_store

    pipeline, root = setup
    assert run_pipeline(_collect_pipeline(tmp_path, pipeline, "humans"), []) == 3
    (sft,) = run_ids(root)
    store = open_store(f"sqlite:///{tmp_path}/rounds/{sft}.db")
    assert len(store.prompts()) == 4 and store.item_count() >= 4 and store.overlap == 3  # the recipe's queue
    generators = {c["generator"] for c in store.dump()["candidates"].values()}
    assert len(generators) == 1 and generators.pop().endswith(f"+{root / sft / 'adapter'}")  # the SFT adapter's
    out = capsys.readouterr().out
    assert f"collect serve --config {tmp_path / 'collect.yaml'} --store sqlite:///{tmp_path}/rounds/{sft}.db" in out
    assert "report: " in out.splitlines()[-1] and (root / "report" / "report.md").is_file()
    assert runs.read_registry(root)["promoted"] == sft  # the SFT gate passed: it is what serves meanwhile


@pytest.mark.parametrize("annotator", ["rules", "model"])
def test_a_judge_unsure_on_every_pair_is_one_clear_error_with_nothing_exported(setup, tmp_path, tiny_model_dir,
                                                                               annotator):
    """annotator: rules on a tiny random model: no answer refuses or has the house style, so every pair ties;
    model: the tiny random model as judge answers "A" whichever answer is shown first, so it reads nothing."""
    pipeline, root = setup
    judge = "rules" if annotator == "rules" else f"model:{tiny_model_dir}"
    with pytest.raises(UserError, match="unsure on all 4 items"):
        run_pipeline(_collect_pipeline(tmp_path, pipeline, judge), [])
    assert not list((root / "rounds").glob("*.pairs.jsonl")) and (root / "report" / "report.md").is_file()
    assert [i for i in run_ids(root) if i.startswith("dpo-")] == []


@pytest.mark.parametrize("annotator", ["gpt-4", "model:", "reward: "])
def test_an_unknown_annotator_names_what_is_accepted(annotator):
    from alignkit.pipeline import CollectSource

    with pytest.raises(ValueError, match="expected humans, rules, reward:RUN or model:MODEL"):
        CollectSource(annotator=annotator)


def test_one_pipeline_seed_reaches_every_stage_and_the_collect_round(monkeypatch):
    """`seed: N` (`make demo SEED=N`) is every stage's train.seed and the round's prompt draw and samples; without
    it each recipe keeps its own (train.seed unset: the stage default, SFT_DEFAULTS' 42), so the default demo
    is unchanged."""
    from alignkit.pipeline import Pipeline, PipelineRecipe
    from alignkit.recipe import load_recipe

    monkeypatch.chdir(ROOT)
    config = "recipes/smollm2/pipeline.yaml"
    for seed, want in ((None, None), (7, 7)):
        overrides = [] if seed is None else [f"seed={seed}", "output=runs/demo-seed7"]
        p = Pipeline(load_recipe(config, PipelineRecipe, overrides), config)
        seeds = [p._stage_recipe(spec, None, None, None).train.get("seed") for spec in p.specs]
        if want is None:
            assert seeds == [None, None] and not any(o.startswith("generation.seed") for o in p.collect_overrides)
        else:
            assert seeds == [7, 7] and p.collect_overrides[-1] == "generation.seed=7"
    assert p.recipe.collect.store.replace("{output}", p.recipe.output).startswith("sqlite:///runs/demo-seed7/")
