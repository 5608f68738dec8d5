"""`alignkit` — the command line. The top floor of the spine: the only module (with pipeline) that imports stages.

Every stage command takes `--config FILE [key.sub=value …] [--debug]` (or `--help-config`); command groups
(collect, eval, runs …) register their own sub-commands. The exit-code contract is the same everywhere: a
user error prints one line and exits 2, a failed training run exits 1, Ctrl-C exits 130; `--debug` shows the
traceback. Stages are imported lazily, so `alignkit --help` stays fast, and a stage command imports no
command group.
"""

from __future__ import annotations

import argparse
import functools
import importlib
import os
import sys
from typing import Any, Callable

from alignkit import distributed, launch
from alignkit.errors import TrainingFailed, UserError

# The stage table: name → (the stage package's `Stage` value, help). The CLI, the pipeline and the recipe tests
# read this one table; a new stage (ORPO, SimPO …) is one folder exporting a Stage and one line here.
STAGES: dict[str, tuple[str, str]] = {
    "sft": ("sft.train:STAGE", "supervised fine-tuning into a LoRA/QLoRA adapter"),
    "dpo": ("preference.train:DPO", "DPO: refine an SFT adapter on preference pairs"),
    "kto": ("preference.train:KTO", "KTO: refine an SFT adapter on thumbs up/down"),
    "reward": ("reward.train:STAGE", "reward model (LoRA + score head) from preference pairs, gated"),
    "rlhf": ("reward.rlhf:STAGE", "RLHF (RLOO or GRPO) of an SFT adapter against a gated reward model"),
}

# name → module with `register(subparsers)`: commands with their own sub-commands or arguments
COMMAND_GROUPS: dict[str, str] = {
    "data": "alignkit.datacheck",
    "pipeline": "alignkit.pipeline",
    "runs": "alignkit.promotion",
    "export": "alignkit.export",
    "report": "alignkit.pipeline_report",
    "collect": "collect.cli",
    "serve": "serve.cli",  # registers `serve` (with `serve keys` and `serve stats`)
    "eval": "eval.cli",  # registers `eval` (with `eval classify`) and `gate`
}


def load(ref: str):
    """The object a 'module:attr' reference names."""
    module, _, attr = ref.partition(":")
    return getattr(importlib.import_module(module), attr)


def stage(name: str):
    """The `Stage` value of a stage name in STAGES (imports its package)."""
    return load(STAGES[name][0])


# ---------------------------------------------------------------- what every command shares: arguments, exit codes


def add_recipe_args(parser: argparse.ArgumentParser, help_config: bool = False, *, required: bool | None = None,
                    config_help: str = "recipe YAML, e.g. recipes/smollm2/sft.yaml", words: str = "overrides",
                    words_help: str = "override recipe values") -> None:
    """--config, the positional `key.sub=value` overrides and --debug, as every command with a recipe takes them
    (and --help-config for a stage). A command whose words may also be its own sub-commands (`eval classify`,
    `serve keys add NAME`) passes required=False and its own words_help."""
    parser.add_argument("--config", required=(not help_config) if required is None else required, help=config_help)
    parser.add_argument(words, nargs="*", metavar="key.sub=value", help=words_help)
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


def quiet_libraries() -> None:
    """Keep library chatter (tokenizer forks, telemetry) off the console."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    import logging
    import warnings

    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)  # "no CPU 4-bit kernel from the Hub" at import
    warnings.filterwarnings("ignore", category=FutureWarning)


# ---------------------------------------------------------------- stage commands


def stage_main(prog: str, stage_or_recipe_cls: Any, run: Callable[[Any], Any] | None = None,
               argv: list[str] | None = None) -> int:
    """`python -m <stage>` without the other commands: parse the recipe and run the stage (a `Stage`, or a recipe
    class and run(recipe))."""
    parser = argparse.ArgumentParser(prog=prog)
    add_recipe_args(parser, help_config=True)
    args = parser.parse_args(argv)
    if run is None:
        return guarded(lambda: run_stage(args, stage_or_recipe_cls), args.debug)
    return guarded(lambda: run_recipe(args, stage_or_recipe_cls, run), args.debug)


def run_stage(args: argparse.Namespace, stage) -> int:
    """`alignkit <stage> …` and `python -m <stage> …`: the recipe's keys (--help-config), or a run."""
    from alignkit import lifecycle

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


def _stage_command(args: argparse.Namespace, name: str) -> int:
    quiet_libraries()  # before the stage's imports (bitsandbytes speaks at import)
    spec = launch_spec(args)
    if spec is None or distributed.launched() or args.help_config:
        return run_stage(args, stage(name))
    return _launch(args, name, spec)


# ---------------------------------------------------------------- several processes


def add_launch_args(parser: argparse.ArgumentParser) -> None:
    """--launcher and its sizes: run the stage as several processes (torchrun, accelerate) or Ray Train workers."""
    g = parser.add_argument_group("several processes")
    g.add_argument("--launcher", choices=launch.ENGINES,
                   help="run under torchrun / accelerate launch on this machine, or as a Ray Train job")
    g.add_argument("--processes", "--workers", type=int, default=None, metavar="N",
                   help="processes (or Ray workers); default 2 with --launcher, the accelerate config's with one")
    g.add_argument("--launch-config", metavar="FILE", help="accelerate config, e.g. recipes/accelerate/ddp.yaml")
    g.add_argument("--ray-address", metavar="ADDR", help="Ray cluster (default: RAY_ADDRESS, else a local one)")


def launch_spec(args: argparse.Namespace) -> "launch.LaunchSpec | None":
    """The LaunchSpec the command-line flags ask for; None without --launcher: the stage runs in this process."""
    if not getattr(args, "launcher", None):
        return None
    n = args.processes if args.processes is not None else (1 if args.launch_config else 2)
    try:
        if args.launcher == "ray":
            return launch.LaunchSpec(engine="ray", workers=n, address=args.ray_address)
        return launch.LaunchSpec(engine=args.launcher, processes=n, config=args.launch_config)
    except ValueError as e:
        raise UserError(str(e)) from None


def _launch(args: argparse.Namespace, name: str, spec: "launch.LaunchSpec") -> int:
    """Check the recipe and the launch here, then start the workers: a bad key or launch exits 2 before any does."""
    from alignkit.recipe import load_recipe

    if not args.config:
        raise UserError("--config FILE is required")
    st = stage(name)
    launch.preflight(spec)
    recipe = load_recipe(args.config, st.recipe, args.overrides)
    if spec.kind == "ray":
        from alignkit import ray_engine

        print(f"run: {ray_engine.run(st, recipe, spec).path}")
        return 0
    return launch.launch(spec, [name, "--config", args.config, *args.overrides, *(["--debug"] * args.debug)])


# ---------------------------------------------------------------- the parser and the entry point


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The `alignkit` parser. Given a stage `command`, the command groups are left out (their modules are not
    even imported): a stage run goes through the stage table alone."""
    parser = argparse.ArgumentParser(prog="alignkit", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (_, help_) in STAGES.items():
        p = sub.add_parser(name, help=help_)
        add_recipe_args(p, help_config=True)
        add_launch_args(p)
        p.set_defaults(handler=functools.partial(_stage_command, name=name))
    if command not in STAGES:
        for module in COMMAND_GROUPS.values():
            importlib.import_module(module).register(sub)
    return parser


@functools.lru_cache(maxsize=1)
def eval_texts() -> tuple[str, ...]:
    """The bundled eval suites' prompts, questions and passages: training records sharing a 13-gram with one are
    counted in every data report (and dropped with data.decontaminate). Read as the files' raw text fields: the
    eval stage validates the suites; curation only needs their words."""
    from alignkit.data import jsonl_objects
    from eval.suites import BUNDLED, DATA

    return tuple(str(obj[k]) for file, _, _ in BUNDLED.values() for _, obj in jsonl_objects(DATA / file)
                 for k in ("prompt", "question", "text", "goal") if obj.get(k))


def main(argv: list[str] | None = None) -> None:
    """Entry point of the `alignkit` console script."""
    from alignkit import curation

    argv = sys.argv[1:] if argv is None else list(argv)
    curation.use_references(eval_texts)  # the spine curates; only this floor may read the eval suites
    command = next((a for a in argv if not a.startswith("-")), None)
    args = build_parser(command).parse_args(argv)
    code = guarded(lambda: args.handler(args), getattr(args, "debug", False))
    distributed.record_exit(code)  # under our launcher: the wrapper exits 2 if any rank did
    distributed.shutdown()
    sys.exit(code)


if __name__ == "__main__":
    main()
