"""`alignkit` — the command line. The top floor of the spine: the only module (with pipeline) that imports stages.

Stage commands take `--config FILE [key.sub=value …]`; command groups (collect, eval, runs …) register
their own sub-commands. Stages are imported lazily, so `alignkit --help` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from alignkit.entry import add_recipe_args, guarded, run_recipe

# name → (recipe class, run function, help): commands of the shape `alignkit NAME --config FILE …`
RECIPE_COMMANDS: dict[str, tuple[str, str, str]] = {
    "sft": ("sft.config:SFTRecipe", "sft.train:run", "supervised fine-tuning into a LoRA/QLoRA adapter"),
    "dpo": ("preference.config:DPORecipe", "preference.train:run", "DPO: refine an SFT adapter on preference pairs"),
    "kto": ("preference.config:KTORecipe", "preference.train:run_kto", "KTO: refine an SFT adapter on thumbs up/down"),
    "reward": ("reward.config:RewardRecipe", "reward.train:run", "reward model (LoRA + score head) from preference pairs, gated"),
    "rlhf": ("reward.config:RLHFRecipe", "reward.rlhf:run", "RLHF (RLOO or GRPO) of an SFT adapter against a gated reward model"),
}

# name → module with `register(subparsers)`: commands with their own sub-commands or arguments
COMMAND_GROUPS: dict[str, str] = {
    "data": "alignkit.datacheck",
    "pipeline": "alignkit.pipeline",
    "runs": "alignkit.registry",
    "export": "alignkit.export",
    "report": "alignkit.report",
    "collect": "collect.cli",
    "eval": "eval.cli",  # registers `eval` (with `eval classify`) and `gate`
}


def _load(ref: str):
    module, _, attr = ref.partition(":")
    return getattr(importlib.import_module(module), attr)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="alignkit", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (recipe_ref, run_ref, help_) in RECIPE_COMMANDS.items():
        p = sub.add_parser(name, help=help_)
        add_recipe_args(p)
        p.set_defaults(handler=lambda a, r=recipe_ref, f=run_ref: run_recipe(a, _load(r), _load(f)))
    for name, module in COMMAND_GROUPS.items():
        importlib.import_module(module).register(sub)
    return parser


def main(argv: list[str] | None = None) -> None:
    """Entry point of the `alignkit` console script."""
    args = build_parser().parse_args(argv)
    sys.exit(guarded(lambda: args.handler(args), getattr(args, "debug", False)))


if __name__ == "__main__":
    main()
