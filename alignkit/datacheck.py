"""`alignkit data check FILE`: detected format, counts, duplicates, token lengths and splits, without training."""

from __future__ import annotations

import argparse

from alignkit.recipe import DataConfig


def register(sub) -> None:
    """Add `alignkit data check` to the CLI."""
    data = sub.add_parser("data", help="inspect datasets").add_subparsers(dest="data_command", required=True)
    p = data.add_parser("check", help="format, counts, duplicates, token-length percentiles, split sizes")
    p.add_argument("files", nargs="+", help="data file(s) or a Hub dataset id")
    p.add_argument("--model", default="smollm2-135m-instruct", help="tokenizer used to count tokens")
    p.add_argument("--val-fraction", type=float, default=0.1)
    p.add_argument("--test-fraction", type=float, default=0.0)
    p.add_argument("--max-tokens", type=int, default=1024)
    p.add_argument("--debug", action="store_true")
    p.set_defaults(handler=check)


def check(args: argparse.Namespace) -> int:
    """Print the curation report of the given files."""
    from alignkit.data import prepare_conversations
    from alignkit.models import load_tokenizer

    cfg = DataConfig(train=list(args.files), val_fraction=args.val_fraction, test_fraction=args.test_fraction,
                     max_tokens=args.max_tokens)
    tokenizer, _ = load_tokenizer(args.model)
    report = prepare_conversations(cfg, tokenizer).report
    print(f"files:            {', '.join(args.files)}")
    print(f"formats:          {', '.join(f'{k} ({v})' for k, v in report['formats'].items())}")
    print(f"records read:     {report['read']}")
    print(f"exact duplicates: {report.get('exact_duplicates', 0)}")
    print(f"near duplicates:  {report.get('near_duplicates', 0)}")
    print(f"too short / long: {report['too_short']} / {report['too_long']}")
    print(f"13-gram overlap with eval suites: {report['contaminated_13gram']}")
    print("tokens:           " + "  ".join(f"{k}={v}" for k, v in report["tokens"].items()))
    print("splits:           " + "  ".join(f"{k}={v}" for k, v in report["splits"].items()))
    return 0
