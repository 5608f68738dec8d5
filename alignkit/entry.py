"""The command-line contract every stage shares: `--config FILE [key.sub=value …] [--debug]`.

User errors print one line and exit 2; a failed training run exits 1; `--debug` shows tracebacks.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any, Callable

from alignkit.errors import TrainingFailed, UserError


def add_recipe_args(parser: argparse.ArgumentParser) -> None:
    """--config, overrides and --debug, as every stage command takes them."""
    parser.add_argument("--config", required=True, help="recipe YAML, e.g. recipes/smollm2/sft.yaml")
    parser.add_argument("overrides", nargs="*", metavar="key.sub=value", help="override recipe values")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")


def guarded(fn: Callable[[], Any], debug: bool = False) -> int:
    """Run fn; map UserError → 2, TrainingFailed → 1, Ctrl-C → 130, with one clear line on stderr."""
    try:
        result = fn()
        return result if isinstance(result, int) else 0
    except UserError as e:
        if debug:
            raise
        print(f"error: {e}", file=sys.stderr)
        return 2
    except TrainingFailed as e:
        if debug:
            raise
        print(f"training failed: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted: the run is marked interrupted; run the same command again to resume", file=sys.stderr)
        return 130


def stage_main(prog: str, recipe_cls: type, run: Callable[[Any], Any], argv: list[str] | None = None) -> int:
    """`python -m <stage>`: parse the recipe and call the stage's run(recipe)."""
    parser = argparse.ArgumentParser(prog=prog)
    add_recipe_args(parser)
    args = parser.parse_args(argv)
    return guarded(lambda: run_recipe(args, recipe_cls, run), args.debug)


def run_recipe(args: argparse.Namespace, recipe_cls: type, run: Callable[[Any], Any]) -> int:
    """Load the recipe from parsed args and run the stage; prints where the run went."""
    from alignkit.recipe import load_recipe

    quiet_libraries()
    recipe = load_recipe(args.config, recipe_cls, args.overrides)
    result = run(recipe)
    path = getattr(result, "path", None)
    if path is not None:
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
