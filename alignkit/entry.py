"""The command-line contract every stage shares: `--config FILE [key.sub=value …] [--debug]`.

User errors print one line and exit 2; a failed training run exits 1; `--debug` shows tracebacks.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
from typing import Any, Callable

from alignkit import distributed
from alignkit.errors import TrainingFailed, UserError


def add_recipe_args(parser: argparse.ArgumentParser, help_config: bool = False) -> None:
    """--config, overrides and --debug, as every stage command takes them (and --help-config for a stage)."""
    parser.add_argument("--config", required=not help_config, help="recipe YAML, e.g. recipes/smollm2/sft.yaml")
    parser.add_argument("overrides", nargs="*", metavar="key.sub=value", help="override recipe values")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    if help_config:
        parser.add_argument("--help-config", action="store_true",
                            help="print every recipe key with its help text and default, then exit")


def guarded(fn: Callable[[], Any], debug: bool = False) -> int:
    """Run fn; map UserError → 2, TrainingFailed → 1, Ctrl-C → 130, with one clear line on stderr."""
    try:
        result = fn()
        return result if isinstance(result, int) else 0
    except UserError as e:
        if debug:
            raise
        if getattr(e, "echo", True):  # an error another rank found and printed is not printed twice
            print(f"error: {e}", file=sys.stderr)
        return 2
    except TrainingFailed as e:
        if debug:
            raise
        if getattr(e, "echo", True):
            print(f"training failed: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted: the run is marked interrupted; run the same command again to resume", file=sys.stderr)
        return 130


def stage_main(prog: str, stage_or_recipe_cls: Any, run: Callable[[Any], Any] | None = None,
               argv: list[str] | None = None) -> int:
    """`python -m <stage>`: parse the recipe and run the stage (a `Stage`, or a recipe class and run(recipe))."""
    parser = argparse.ArgumentParser(prog=prog)
    add_recipe_args(parser, help_config=True)
    args = parser.parse_args(argv)
    if run is None:
        return guarded(lambda: run_stage(args, stage_or_recipe_cls), args.debug)
    return guarded(lambda: run_recipe(args, stage_or_recipe_cls, run), args.debug)


def run_stage(args: argparse.Namespace, stage) -> int:
    """`alignkit <stage> …` and `python -m <stage> …`: the recipe's keys (--help-config), or a run."""
    from alignkit import stage as lifecycle

    quiet_libraries()
    if getattr(args, "help_config", False):
        print_recipe_help(stage.recipe, stage.defaults)
        return 0
    return run_recipe(args, stage.recipe, functools.partial(lifecycle.run, stage))


def print_recipe_help(recipe_cls: type, train_defaults: dict[str, Any] | None = None) -> None:
    """Every key of a recipe class with its default and help text; then the stage's defaults under `train:`."""
    from alignkit.recipe import help_text

    for key, help_, default in help_text(recipe_cls):
        value = "" if default == "(section)" else f" {default!r}"
        print(f"{key}:{value}" + (f"\n    {help_}" if help_ else ""))
    if train_defaults:
        print("\ntrain: our defaults (any field of the TRL config class may be set; the recipe wins):")
        for key, value in train_defaults.items():
            print(f"train.{key}: {value!r}")


def run_recipe(args: argparse.Namespace, recipe_cls: type, run: Callable[[Any], Any]) -> int:
    """Load the recipe from parsed args and run the stage; prints where the run went."""
    from alignkit.recipe import load_recipe

    if getattr(args, "help_config", False):
        print_recipe_help(recipe_cls)
        return 0
    if not args.config:
        raise UserError("--config FILE is required (or --help-config to list the recipe's keys)")
    quiet_libraries()
    recipe = load_recipe(args.config, recipe_cls, args.overrides)
    result = run(recipe)
    path = getattr(result, "path", None)
    if path is not None and distributed.is_main():  # one line, not one per rank
        print(f"run: {path}")
    return 0


def quiet_libraries() -> None:
    """Keep library chatter (tokenizer forks, telemetry) off the console."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    import logging
    import warnings

    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)  # "no CPU 4-bit kernel from the Hub" at import
    warnings.filterwarnings("ignore", category=FutureWarning)
