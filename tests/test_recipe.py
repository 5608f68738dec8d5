"""Recipe loading: overrides, unknown keys with nearest names, types, file:line in every message."""

import pytest

from alignkit.errors import UserError
from alignkit.recipe import apply_override, load_recipe
from sft.config import SFTRecipe


def write(tmp_path, text):
    path = tmp_path / "r.yaml"
    path.write_text(text)
    return path


def test_loads_sections_and_passthrough(tmp_path):
    path = write(tmp_path, "data: {train: x.jsonl}\ntrain: {num_train_epochs: 3, learning_rate: 2e-4}\nlora: {alpha: 8}\n")
    recipe = load_recipe(path, SFTRecipe)
    assert recipe.data.train == "x.jsonl"
    assert recipe.train == {"num_train_epochs": 3, "learning_rate": 2e-4}  # YAML's "2e-4" string became a float
    assert recipe.lora == {"alpha": 8}
    assert recipe.model.base == "smollm2-135m-instruct"


def test_dotted_overrides_beat_the_yaml(tmp_path):
    path = write(tmp_path, "data: {train: x.jsonl}\ntrain: {num_train_epochs: 3}\n")
    recipe = load_recipe(path, SFTRecipe, ["train.num_train_epochs=1", "output.dir=runs/try", "data.dedup=false"])
    assert recipe.train["num_train_epochs"] == 1
    assert recipe.output.dir == "runs/try"
    assert recipe.data.dedup is False


def test_unknown_key_names_file_line_and_nearest(tmp_path):
    path = write(tmp_path, "data:\n  train: x.jsonl\n  val_fracton: 0.1\n")
    with pytest.raises(UserError) as e:
        load_recipe(path, SFTRecipe)
    assert f"{path}:3" in str(e.value) and "data.val_fracton" in str(e.value) and "'val_fraction'" in str(e.value)


def test_unknown_trl_key_in_train_is_rejected(tmp_path):
    path = write(tmp_path, "data: {train: x.jsonl}\ntrain:\n  num_train_epoch: 1\n")
    with pytest.raises(UserError) as e:
        load_recipe(path, SFTRecipe)
    assert f"{path}:3" in str(e.value) and "'num_train_epochs'" in str(e.value)


def test_wrong_type_and_bad_choice(tmp_path):
    with pytest.raises(UserError, match="data.val_fraction' must be float"):
        load_recipe(write(tmp_path, "data: {train: x.jsonl, val_fraction: lots}\n"), SFTRecipe)
    with pytest.raises(UserError, match="must be one of none, nf4, int8"):
        load_recipe(write(tmp_path, "data: {train: x.jsonl}\nmodel: {quantization: fp4}\n"), SFTRecipe)


def test_invalid_yaml_and_missing_file(tmp_path):
    with pytest.raises(UserError, match=r"r.yaml:2: invalid YAML"):
        load_recipe(write(tmp_path, "data:\n  train: a: b\n"), SFTRecipe)
    with pytest.raises(UserError, match="recipe file not found"):
        load_recipe(tmp_path / "nope.yaml", SFTRecipe)


def test_section_validation_is_reported(tmp_path):
    with pytest.raises(UserError, match="val_fraction \\+ data.test_fraction must be below 1"):
        load_recipe(write(tmp_path, "data: {train: x.jsonl, val_fraction: 0.6, test_fraction: 0.5}\n"), SFTRecipe)


def test_override_syntax_error():
    with pytest.raises(UserError, match="expected key.sub=value"):
        apply_override({}, "train.num_train_epochs")


def test_yes_no_on_the_command_line_stay_strings():
    data = {}
    apply_override(data, "train.eval_strategy=no")
    apply_override(data, "data.dedup=false")
    assert data == {"train": {"eval_strategy": "no"}, "data": {"dedup": False}}
