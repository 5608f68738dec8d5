"""The pipeline's collect round (collect.round): prompt draw, bad input before a model loads, a judge that
labels nothing, and a re-run that generates and votes nothing twice — on the real store and the tiny model."""

import json
from collections import Counter

import pytest

from alignkit.errors import UserError
from alignkit.recipe import load_recipe
from collect.config import CollectRecipe
from collect.round import run_round, sample_prompts
from collect.store import open_store


def _prompts(n_harmful, n_benign):
    return ([{"prompt": [{"role": "user", "content": f"harmful {i}"}], "category": "harmful"} for i in range(n_harmful)]
            + [{"prompt": [{"role": "user", "content": f"benign {i}"}], "category": "general"} for i in range(n_benign)])


def test_the_draw_keeps_each_categorys_share_and_is_fixed_by_the_seed():
    prompts = _prompts(30, 90)
    drawn = sample_prompts(prompts, 40, seed=1)
    assert Counter(p["category"] for p in drawn) == {"harmful": 10, "general": 30}
    assert drawn == sample_prompts(prompts, 40, seed=1) and drawn != sample_prompts(prompts, 40, seed=2)
    assert [prompts.index(p) for p in drawn] == sorted(prompts.index(p) for p in drawn)  # file order kept
    assert sample_prompts(prompts, None, 0) == prompts and sample_prompts(prompts, 500, 0) == prompts


def _recipe(tmp_path, model, prompts):
    path = tmp_path / "prompts.jsonl"
    path.write_text("".join(json.dumps(p) + "\n" for p in prompts))
    recipe = tmp_path / "collect.yaml"
    recipe.write_text(f"model: {{base: {model}}}\nprompts: {path}\n"
                      "generation: {max_new_tokens: 6, batch_size: 8, threads: 1}\n")
    return load_recipe(str(recipe), CollectRecipe), str(path)


def test_too_few_prompts_or_an_unknown_judge_fail_before_a_model_loads(tmp_path):
    recipe, path = _recipe(tmp_path, "no/such-model", _prompts(2, 3))  # loading it would fail differently
    url = f"sqlite:///{tmp_path}/round.db"
    with pytest.raises(UserError, match=r"prompts\.jsonl: 5 prompts for the collect round, at least 20 needed"):
        run_round(url, recipe, path, None, "rules", tmp_path / "pairs.jsonl")
    with pytest.raises(UserError, match="expected humans, rules, reward:RUN or model:MODEL"):
        run_round(url, recipe, path, None, "gpt-judge", tmp_path / "pairs.jsonl", min_prompts=1)
    assert not (tmp_path / "round.db").exists() and not (tmp_path / "pairs.jsonl").exists()


def test_a_round_where_the_judge_is_unsure_on_everything_exports_nothing(tiny_model_dir, tmp_path):
    """The tiny random model neither refuses nor writes the house style, so both answers of every item score
    the same: the judge labels nothing (exit 2 through the CLI), the items stay open for people, no pairs file."""
    recipe, path = _recipe(tmp_path, tiny_model_dir, _prompts(3, 3))
    url = f"sqlite:///{tmp_path}/round.db"
    with pytest.raises(UserError, match=r"unsure on all 6 items"):
        run_round(url, recipe, path, None, "rules", tmp_path / "pairs.jsonl", min_prompts=6)
    store = open_store(url)
    assert store.item_count() == 6 and store.open_items() == 6  # a skip is not a vote: people still see them
    assert not (tmp_path / "pairs.jsonl").exists()
    # re-running generates nothing new (every prompt has its pair) and votes nothing twice: 0 pairs
    assert run_round(url, recipe, path, None, "rules", tmp_path / "pairs.jsonl", min_prompts=6) == 0
    assert open_store(url).item_count() == 6 and (tmp_path / "pairs.jsonl").read_text() == ""


def test_a_contrast_round_gives_a_pair_on_every_prompt_with_the_refusal_chosen_only_where_harmful(tiny_model_dir, tmp_path):
    """generation.contrast: each item is the policy's answer against its continuation of the refusal opener, so
    the rules judge is sure on every item (where two free samples of the tiny model left it unsure on all)."""
    recipe, path = _recipe(tmp_path, tiny_model_dir, _prompts(3, 3))
    recipe = load_recipe(str(tmp_path / "collect.yaml"), CollectRecipe, ["generation.contrast=I can't help with that."])
    out = tmp_path / "pairs.jsonl"
    assert run_round(f"sqlite:///{tmp_path}/round.db", recipe, path, None, "rules", out, min_prompts=6) == 6
    pairs = [json.loads(line) for line in out.read_text().splitlines()]
    for pair in pairs:
        refused = pair["chosen"][0]["content"].startswith("I can't help with that.")
        assert refused == pair["prompt"][0]["content"].startswith("harmful")
        assert pair["metadata"]["labelled_by"] == "judge"
