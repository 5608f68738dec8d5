"""`alignkit` — the command line. The top floor of the spine: the only module (with pipeline) that imports stages.

Stage commands take `--config FILE [key.sub=value …]` (or `--help-config`); command groups (collect, eval, runs …) register
their own sub-commands. Stages are imported lazily, so `alignkit --help` stays fast.
"""

from __future__ import annotations

import argparse
import functools
import importlib
import sys

from alignkit import distributed
from alignkit.entry import add_recipe_args, guarded, quiet_libraries, run_stage

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
    "runs": "alignkit.registry",
    "export": "alignkit.export",
    "report": "alignkit.report",
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


def _stage_command(args: argparse.Namespace, name: str) -> int:
    quiet_libraries()  # before the stage's imports (bitsandbytes speaks at import)
    spec = launch_spec(args)
    if spec.kind is None or distributed.launched() or args.help_config:
        return run_stage(args, stage(name))
    return _launch(args, name, spec)


def add_launch_args(parser: argparse.ArgumentParser) -> None:
    """--launcher and its sizes: run the stage as several processes (torchrun, accelerate) or Ray Train workers."""
    g = parser.add_argument_group("several processes")
    g.add_argument("--launcher", choices=distributed.ENGINES,
                   help="run under torchrun / accelerate launch on this machine, or as a Ray Train job")
    g.add_argument("--processes", "--workers", type=int, default=None, metavar="N",
                   help="processes (or Ray workers); default 2 with --launcher, the accelerate config's with one")
    g.add_argument("--launch-config", metavar="FILE", help="accelerate config, e.g. recipes/accelerate/ddp.yaml")
    g.add_argument("--ray-address", metavar="ADDR", help="Ray cluster (default: RAY_ADDRESS, else a local one)")


def launch_spec(args: argparse.Namespace) -> "distributed.LaunchSpec":
    """The LaunchSpec the command-line flags ask for (engine None: this process)."""
    if not getattr(args, "launcher", None):
        return distributed.LaunchSpec()
    from alignkit.errors import UserError

    n = args.processes if args.processes is not None else (1 if args.launch_config else 2)
    try:
        if args.launcher == "ray":
            return distributed.LaunchSpec(engine="ray", workers=n, address=args.ray_address)
        return distributed.LaunchSpec(engine=args.launcher, processes=n, config=args.launch_config)
    except ValueError as e:
        raise UserError(str(e)) from None


def _launch(args: argparse.Namespace, name: str, spec: "distributed.LaunchSpec") -> int:
    """Check the recipe and the launch here, then start the workers: a bad key or launch exits 2 before any does."""
    from alignkit.errors import UserError
    from alignkit.recipe import load_recipe

    if not args.config:
        raise UserError("--config FILE is required")
    st = stage(name)
    distributed.preflight(spec)
    recipe = load_recipe(args.config, st.recipe, args.overrides)
    if spec.kind == "ray":
        from alignkit import ray_engine

        print(f"run: {ray_engine.run(st, recipe, spec).path}")
        return 0
    return distributed.launch(spec, [name, "--config", args.config, *args.overrides, *(["--debug"] * args.debug)])


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="alignkit", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (_, help_) in STAGES.items():
        p = sub.add_parser(name, help=help_)
        add_recipe_args(p, help_config=True)
        add_launch_args(p)
        p.set_defaults(handler=functools.partial(_stage_command, name=name))
    for name, module in COMMAND_GROUPS.items():
        importlib.import_module(module).register(sub)
    return parser


@functools.lru_cache(maxsize=1)
def eval_texts() -> tuple[str, ...]:
    """The bundled eval suites' prompts, questions and passages: training records sharing a 13-gram with one are
    counted in every data report (and dropped with data.decontaminate)."""
    from eval.config import SuiteSpec
    from eval.suites import BUNDLED, load_suite

    return tuple(str(item[k]) for name in BUNDLED for item in load_suite(SuiteSpec(name=name)).items
                 for k in ("prompt", "question", "text", "goal") if item.get(k))


def main(argv: list[str] | None = None) -> None:
    """Entry point of the `alignkit` console script."""
    from alignkit import curation

    curation.use_references(eval_texts)  # the spine curates; only this floor may read the eval suites
    args = build_parser().parse_args(argv)
    code = guarded(lambda: args.handler(args), getattr(args, "debug", False))
    distributed.record_exit(code)  # under our launcher: the wrapper exits 2 if any rank did
    distributed.shutdown()
    sys.exit(code)


if __name__ == "__main__":
    main()
