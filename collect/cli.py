"""`alignkit collect init|users|serve|generate|judge|export|stats` — the labeling workflow on the command line.

This module is the parser; the commands live by group: `cli_setup` (init, users), `cli_run` (serve, generate,
judge), `cli_report` (export, stats), and `inputs` (the recipe, the store URL and the prompt/gold files).
The store URL comes from --store, else $ALIGNKIT_COLLECT_STORE, else the recipe's `store:` (--config), else
sqlite:///runs/demo/collect.db.
"""

from __future__ import annotations

import argparse

from collect.cli_report import check_out, cmd_export, cmd_stats, export_production
from collect.cli_run import check_port, cmd_generate, cmd_judge, cmd_serve, serve
from collect.cli_setup import PASSWORD_ENV, cmd_init, cmd_users_add, cmd_users_list
from collect.inputs import DEFAULT_STORE, add_gold, read_gold, read_prompts

__all__ = ["DEFAULT_STORE", "PASSWORD_ENV", "add_gold", "build_commands", "check_out", "check_port", "cmd_export",
           "cmd_generate", "cmd_init", "cmd_judge", "cmd_serve", "cmd_stats", "cmd_users_add", "cmd_users_list",
           "export_production", "main", "read_gold", "read_prompts", "register", "serve"]


def register(sub) -> None:
    """Add `alignkit collect …` to the CLI."""
    collect = sub.add_parser("collect", help="label preference pairs in a Gradio app; export them for DPO")
    cmds = collect.add_subparsers(dest="collect_command", required=True, metavar="COMMAND")
    build_commands(cmds)


def build_commands(cmds) -> None:
    def common(p, config=True):
        p.add_argument("--store", help=f"store URL (default ${'{'}ALIGNKIT_COLLECT_STORE{'}'} or {DEFAULT_STORE})")
        if config:
            p.add_argument("--config", help="collect recipe, e.g. recipes/smollm2/collect.yaml")
            p.add_argument("overrides", nargs="*", metavar="key.sub=value", help="override recipe values")
        p.add_argument("--debug", action="store_true", help="show tracebacks")

    p = cmds.add_parser("init", help="create the store and load prompts (again: adds only new prompts)")
    common(p)
    p.add_argument("--prompts", help="prompts JSONL: {'prompt': [messages], 'category': …} per line")
    p.add_argument("--gold", help="gold items JSONL: {'prompt': [...], 'chosen': …, 'rejected': …} per line")
    p.set_defaults(handler=cmd_init)

    users = cmds.add_parser("users", help="manage annotators and admins").add_subparsers(
        dest="users_command", required=True, metavar="ACTION")
    p = users.add_parser("add", help="add a user (or reset their password/role); asks for the password")
    p.add_argument("name")
    p.add_argument("--role", choices=["annotator", "admin"], default="annotator")
    p.add_argument("--password-stdin", action="store_true", help=f"read the password from stdin (or set ${PASSWORD_ENV})")
    common(p, config=False)
    p.set_defaults(handler=cmd_users_add)
    p = users.add_parser("list", help="list users and roles")
    common(p, config=False)
    p.set_defaults(handler=cmd_users_list)

    p = cmds.add_parser("serve", help="run the labeling app (127.0.0.1 unless --host)")
    common(p)
    p.add_argument("--adapter", help="adapter under review (default: the recipe's model.adapter, else the base)")
    p.add_argument("--host", default="127.0.0.1", help="bind address; anything but loopback exposes the app")
    p.add_argument("--port", type=int, default=7860)
    p.add_argument("--share", action="store_true", help="also open a public Gradio share link (explicit opt-in)")
    p.add_argument("--no-generate", action="store_true", help="serve stored items only; no background worker")
    p.set_defaults(handler=cmd_serve)

    p = cmds.add_parser("export", help="write preference pairs (TRL conversational format) + KTO/SFT leftovers")
    common(p)
    p.add_argument("--out", required=True, help="pairs JSONL; .kto.jsonl, .sft.jsonl, .report.json and "
                                                ".dataset/ are written next to it")
    p.add_argument("--min-votes", type=int, help="drop items with fewer counted votes")
    p.add_argument("--min-agreement", type=float, help="drop items whose majority share is below this (0–1)")
    p.add_argument("--edited-as-chosen", action="store_true", default=None,
                   help="an edited ideal answer of a majority voter becomes the chosen side")
    p.add_argument("--no-dataset", action="store_true", help="skip the datasets.Dataset folder")
    p.add_argument("--judges", choices=["include", "exclude", "only"],
                   help="votes of `collect judge`: counted like people's (default: the recipe's export.judges, "
                        "else include), left out, or the only ones")
    p.add_argument("--judge-weight", type=float, help="what one judge vote counts for in an item's majority, a "
                                                      "person's counting 1 (default: export.judge_weight, else 1)")
    p.add_argument("--source", choices=["labels", "production"], default="labels",
                   help="labels: the annotators' votes (default); production: what `alignkit serve` stored — "
                        "thumbs → OUT/kto.jsonl, A/B preferences → OUT/dpo.jsonl, prompts → OUT/prompts.jsonl "
                        "(--out is then a folder)")
    p.set_defaults(handler=cmd_export)

    p = cmds.add_parser("generate", help="fill the store with candidate pairs from the policy, in batch (no server)")
    common(p)
    p.add_argument("--adapter", help="adapter under review (default: the recipe's model.adapter, else the base)")
    p.add_argument("--min-prompts", type=int, default=1, help="refuse a round with fewer prompts in the store")
    p.set_defaults(handler=cmd_generate)

    p = cmds.add_parser("judge", help="an automatic annotator: vote on the queue as a program (rules, a reward run or a "
                                    "local judge model)")
    common(p)
    p.add_argument("--judge", default="rules", help="rules (refusal detector + prompt category + house style), "
                                                    "reward:RUN (a gated reward run) or model:MODEL (a local chat "
                                                    "model answering A or B, asked both ways round)")
    p.add_argument("--name", help="the judge's identity in the store (default judge-rules / judge-reward / "
                                  "judge-model)")
    p.add_argument("--min-margin", type=float, help="below this margin the judge skips the item, leaving it to "
                                                    "people (default 0.5 for rules, 0.1 for a reward model, "
                                                    "0.25 nats for a judge model)")
    p.add_argument("--max-items", type=int, help="stop after this many items")
    p.set_defaults(handler=cmd_judge)

    p = cmds.add_parser("stats", help="agreement, position bias, time on task, gold accuracy, self-consistency")
    common(p)
    p.add_argument("--json", action="store_true", help="print JSON instead of tables")
    p.set_defaults(handler=cmd_stats)


def main(argv: list[str] | None = None) -> int:
    """`python -m collect …`: the same commands as `alignkit collect …`."""
    from alignkit.cli import guarded

    parser = argparse.ArgumentParser(prog="python -m collect", description=__doc__.splitlines()[0])
    build_commands(parser.add_subparsers(dest="collect_command", required=True, metavar="COMMAND"))
    args = parser.parse_args(argv)
    return guarded(lambda: args.handler(args), args.debug)
