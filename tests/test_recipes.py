"""Every YAML under recipes/ loads into its dataclasses (stage recipes) or is a valid accelerate config."""

from pathlib import Path

import pytest
import yaml

from alignkit.cli import RECIPE_COMMANDS, _load
from alignkit.recipe import load_recipe

ROOT = Path(__file__).resolve().parent.parent
# recipe file stem (before any "-variant") → recipe class
CLASSES = {
    **{name: ref for name, (ref, _, _) in RECIPE_COMMANDS.items()},
    "ipo": "preference.config:DPORecipe",
    "robust": "preference.config:DPORecipe",
    "eval": "eval.config:EvalRecipe",
    "gate": "eval.config:GateRecipe",
    "collect": "collect.config:CollectRecipe",
    "pipeline": "alignkit.pipeline:PipelineRecipe",
}
STAGE_RECIPES = sorted(p for p in (ROOT / "recipes").rglob("*.yaml") if "accelerate" not in p.parts)


@pytest.mark.parametrize("path", STAGE_RECIPES, ids=lambda p: str(p.relative_to(ROOT)))
def test_stage_recipe_loads(path, monkeypatch):
    monkeypatch.chdir(ROOT)  # recipes name bundled files relative to the repo root
    stem = path.stem.split("-")[0]
    assert stem in CLASSES, f"{path.name}: no recipe class known for '{stem}'; add it to CLASSES"
    assert path.read_text().startswith("# "), f"{path.name}: a recipe opens with its command in a comment"
    load_recipe(path, _load(CLASSES[stem]))


@pytest.mark.parametrize("path", sorted((ROOT / "recipes/accelerate").glob("*.yaml")), ids=lambda p: p.name)
def test_accelerate_configs_are_valid(path):
    config = yaml.safe_load(path.read_text())
    assert config["distributed_type"] in {"MULTI_GPU", "FSDP", "DEEPSPEED"} and config["num_processes"] >= 2
    assert "accelerate launch --config_file recipes/accelerate/" in path.read_text()


def test_every_recipe_file_is_covered():
    assert len(STAGE_RECIPES) >= 10
