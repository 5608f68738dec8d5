"""Adding a stage is one folder and one STAGE: an ORPO stage written here (TRL's experimental ORPOTrainer), put in
the stage table, runs through `alignkit orpo` with everything the lifecycle gives every stage."""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path

import pytest

from alignkit import cli, runs

ROOT = Path(__file__).resolve().parent.parent

ORPO_TRAIN = textwrap.dedent('''
    """ORPO: preference optimisation without a reference model; only load_data, build_trainer and STAGE."""
    import dataclasses
    from dataclasses import dataclass, field

    from alignkit import lifecycle, models
    from alignkit.pairs import load_pairs, to_preference_dataset
    from alignkit.recipe import DataConfig, ModelConfig, OutputConfig, TrackingConfig, lora_keys


    def orpo_keys():
        from trl.experimental.orpo import ORPOConfig

        return [f.name for f in dataclasses.fields(ORPOConfig)]


    @dataclass(frozen=True)
    class ORPORecipe:
        model: ModelConfig = field(default_factory=ModelConfig)
        lora: dict = field(default_factory=dict, metadata={"passthrough": lora_keys})
        data: DataConfig = field(default_factory=lambda: DataConfig(train="pairs.jsonl"))
        train: dict = field(default_factory=dict, metadata={"help": "TRL ORPOConfig fields.", "passthrough": orpo_keys})
        tracking: TrackingConfig = field(default_factory=TrackingConfig)
        output: OutputConfig = field(default_factory=OutputConfig)


    def load_data(recipe, tokenizer):
        prepared = load_pairs(recipe.data, tokenizer)
        return lifecycle.Data(inputs=prepared.sha256s, fields={"data": {"curation": prepared.report}},
                          train=to_preference_dataset(prepared.splits["train"]), trl={"eval_strategy": "no"})


    def build_trainer(ctx):
        from trl.experimental.orpo import ORPOTrainer

        model = models.attach_lora(models.load_model(ctx.recipe.model), ctx.recipe.lora)
        return lifecycle.build_trainer(ORPOTrainer, model=model, args=ctx.args, train_dataset=ctx.data.train,
                                   processing_class=ctx.tokenizer, callbacks=ctx.callbacks)


    STAGE = lifecycle.Stage(name="orpo", recipe=ORPORecipe, trl_config="trl.experimental.orpo:ORPOConfig",
                        defaults={"beta": 0.2, "logging_steps": 1, "save_strategy": "no", "max_length": 256},
                        consumes=("pairs", "adapter"), produces="adapter", load_data=load_data,
                        build_trainer=build_trainer)
''')


def test_a_new_stage_is_one_folder_and_one_line_in_the_stage_table(tmp_path, tiny_model_dir, monkeypatch, capsys):
    package = tmp_path / "orpo_stage"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "train.py").write_text(ORPO_TRAIN)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(cli.STAGES, "orpo", ("orpo_stage.train:STAGE", "ORPO"))
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps({"prompt": f"How do I fix thing number {i} at home?",
                                         "chosen": f"Take the manual, open page {i} and follow the three steps.",
                                         "rejected": "I can't help with that."}) + "\n" for i in range(12)))
    recipe = tmp_path / "orpo.yaml"
    recipe.write_text(f"# alignkit orpo --config {recipe}\nmodel: {{base: {tiny_model_dir}}}\n"
                      f"lora: {{r: 4, alpha: 8}}\ndata: {{train: {pairs}, near_dedup: false, val_fraction: 0.0}}\n"
                      "train: {max_steps: 2, per_device_train_batch_size: 4}\n"
                      f"tracking: {{backend: none}}\noutput: {{dir: {tmp_path / 'runs'}}}\n")

    args = cli.build_parser().parse_args(["orpo", "--config", str(recipe)])
    assert args.handler(args) == 0
    (run_id,) = runs.read_registry(tmp_path / "runs")["runs"]
    m = runs.Run(tmp_path / "runs" / run_id).manifest
    assert m["stage"] == "orpo" and m["status"] == "completed" and m["metrics"]["train_steps"] == 2
    assert m["trl_config_class"] == "ORPOConfig" and m["trl_config"]["beta"] == 0.2  # our default, resolved
    assert m["fingerprint"] and m["chat_template_sha256"] and m["data"]["curation"]["kept"] == 12
    assert (tmp_path / "runs" / run_id / "adapter" / "adapter_model.safetensors").is_file()

    args = cli.build_parser().parse_args(["orpo", "--help-config"])
    assert args.handler(args) == 0 and "train.beta: 0.2" in capsys.readouterr().out
    sys.modules.pop("orpo_stage.train", None)
    sys.modules.pop("orpo_stage", None)
