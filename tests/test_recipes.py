"""Every YAML under recipes/ loads into its dataclasses (stage recipes) or is a valid accelerate config; every
stage in the CLI's stage table has a bundled recipe, and each loads with what the recipe file says."""

from pathlib import Path

import pytest
import yaml

from alignkit.cli import STAGES, load, stage
from alignkit.recipe import load_recipe

ROOT = Path(__file__).resolve().parent.parent
# recipe file stem (before any "-variant") → recipe class, for the files that are not named after their stage
OTHER_RECIPES = {
    "ipo": "preference.config:DPORecipe",
    "robust": "preference.config:DPORecipe",
    "eval": "eval.config:EvalRecipe",
    "gate": "eval.config:GateRecipe",
    "collect": "collect.config:CollectRecipe",
    "serve": "serve.config:ServeRecipe",
    "pipeline": "alignkit.pipeline:PipelineRecipe",
    "serve": "serve.config:ServeRecipe",
}
RECIPES = sorted(p for p in (ROOT / "recipes").rglob("*.yaml") if "accelerate" not in p.parts)


def recipe_class(path: Path) -> type:
    stem = path.stem.split("-")[0]
    if stem in STAGES:
        return stage(stem).recipe
    assert stem in OTHER_RECIPES, f"{path.name}: no recipe class known for '{stem}'; add it to OTHER_RECIPES"
    return load(OTHER_RECIPES[stem])


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: str(p.relative_to(ROOT)))
def test_recipe_loads_with_what_the_file_says(path, monkeypatch):
    """Each top-level section the YAML sets is in the loaded recipe as written (a dropped or renamed section
    would load silently otherwise); passthrough `train:` keys arrive verbatim."""
    monkeypatch.chdir(ROOT)  # recipes name bundled files relative to the repo root
    text = path.read_text()
    assert text.startswith("# "), f"{path.name}: a recipe opens with its command in a comment"
    recipe = load_recipe(path, recipe_class(path))
    raw = yaml.safe_load(text) or {}
    for section, value in raw.items():
        loaded = getattr(recipe, section)
        if isinstance(value, dict) and isinstance(loaded, dict):  # passthrough (train:, lora:)
            assert set(loaded) == set(value), (path.name, section)
        elif isinstance(value, dict):
            for key, v in value.items():
                if isinstance(v, (str, bool)):
                    assert getattr(loaded, key) == v, (path.name, f"{section}.{key}")


@pytest.mark.parametrize("name", sorted(STAGES))
def test_every_stage_has_a_bundled_recipe_and_a_complete_stage_value(name):
    st = stage(name)
    assert st.name == name and (ROOT / f"recipes/smollm2/{name}.yaml").is_file()
    assert st.produces in ("adapter", "reward_model") and st.consumes
    assert callable(st.load_data) and callable(st.build_trainer)
    assert set(st.defaults) <= {f for f in st.recipe.__dataclass_fields__["train"].metadata["passthrough"]()}


@pytest.mark.parametrize("path", sorted((ROOT / "recipes/accelerate").glob("*.yaml")), ids=lambda p: p.name)
def test_accelerate_configs_are_valid(path):
    config = yaml.safe_load(path.read_text())
    assert config["distributed_type"] in {"MULTI_GPU", "FSDP", "DEEPSPEED"} and config["num_processes"] >= 2
    assert "accelerate launch --config_file recipes/accelerate/" in path.read_text()


def test_every_recipe_file_is_covered():
    """Each YAML maps to a recipe class (the load test above): every stage and the eval, gate, collect and pipeline
    recipes are among them, so a recipe deleted or renamed by mistake fails here, not only a missing class."""
    stems = {p.stem.split("-")[0] for p in RECIPES}
    assert set(STAGES) | {"eval", "gate", "collect", "pipeline", "ipo", "robust"} <= stems
