"""`collect export` and `collect stats`: pairs for DPO (or production feedback), and the quality numbers."""

from __future__ import annotations

import json
import os

from alignkit.errors import UserError
from collect.inputs import recipe_of, store_of, store_url


def cmd_export(args) -> int:
    from collect.export import rules_from, write

    if args.source == "production":
        return export_production(args)
    recipe = recipe_of(args)
    store = store_of(args, recipe)
    rules = rules_from(recipe.export if recipe else None, min_votes=args.min_votes, min_agreement=args.min_agreement,
                       edited_as_chosen=args.edited_as_chosen, judges=args.judges, judge_weight=args.judge_weight)
    if not 0 <= rules.min_agreement <= 1:
        raise UserError("--min-agreement: a share between 0 and 1")
    if not rules.judge_weight > 0:
        raise UserError("--judge-weight: a positive number (to leave judge votes out: --judges exclude)")
    check_out(args.out)
    try:
        report = write(store.dump(), args.out, rules, store.overlap, dataset=not args.no_dataset)
    except OSError as e:
        raise UserError(f"--out {args.out}: cannot write: {e.strerror or e}") from None
    with store.write() as s:
        store.audit(s, os.environ.get("USER", "cli"), "export", via="cli", out=str(args.out), pairs=report["pairs"])
    print(f"pairs: {report['pairs']} → {args.out}")
    print(f"kto rows: {report['kto']}  sft rows: {report['sft']}")
    print("dropped: " + (", ".join(f"{k} {v}" for k, v in report["dropped"].items()) or "none"))
    if "dataset" in report["files"]:
        print(f"dataset: {report['files']['dataset']}")
    return 0


def export_production(args) -> int:
    """Served answers with feedback (alignkit serve) → KTO rows, DPO pairs and prompts for the next round."""
    from pathlib import Path

    from alignkit import feedback

    recipe = recipe_of(args)
    url = store_url(args, recipe)
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out}: with --source production, --out is a folder (kto.jsonl, dpo.jsonl, "
                        "prompts.jsonl are written in it)")
    if url.startswith("sqlite:///") and not Path(url[len("sqlite:///"):].partition("?")[0]).is_file():
        raise UserError(f"store {url}: no such database (alignkit serve writes it when feedback.store is set)")
    try:
        report = feedback.export(feedback.engine(url), out)
    except OSError as e:
        raise UserError(f"--out {out}: cannot write: {e.strerror or e}") from None
    print(f"kto rows (thumbs): {report['kto_rows']} → {report['files']['kto']}")
    print(f"dpo pairs (A/B preferences): {report['dpo_pairs']} → {report['files']['dpo']}")
    print(f"prompts: {report['prompts']} → {report['files']['prompts']} (alignkit collect init --prompts …)")
    return 0


def check_out(out: str) -> None:
    """--out must name a file in a directory we can write (or create), not a directory or a path under a file."""
    from pathlib import Path

    from collect.engine import in_system_dir, nearest_folder

    p = Path(out)
    if p.is_dir() or out.endswith(("/", os.sep)):
        raise UserError(f"--out {out}: is a directory; name the pairs file, e.g. {p / 'pairs.jsonl'}")
    parent = nearest_folder(p, f"--out {out}", "is a file, not a directory")
    if in_system_dir(parent) or not os.access(parent, os.W_OK):
        raise UserError(f"--out {out}: cannot write in {parent}")


def cmd_stats(args) -> int:
    from collect.agreement import summarize

    recipe = recipe_of(args)
    store = store_of(args, recipe)
    s = summarize(store.dump(), store.overlap)
    if args.json:
        print(json.dumps(s, indent=2, default=list))
        return 0
    f = lambda x, d=3: "-" if x is None else f"{x:.{d}f}"  # noqa: E731
    print(f"items: {s['items']} ready, {s['complete']} with {store.overlap} votes, {s['flagged']} flagged "
          f"near-identical; votes: {s['votes']}  labels: {json.dumps(s['label_counts'])}")
    print(f"Krippendorff's alpha (nominal, ties included): {f(s['krippendorff_alpha'])}   "
          f"Fleiss' kappa ({s['fleiss']['items']} items with {store.overlap} votes): {f(s['fleiss']['kappa'])}")
    print(f"\n{'annotator':16} {'votes':>6} {'skips':>6} {'median s':>9} {'left rate':>10} {'p(left)':>8} "
          f"{'gold acc':>9} {'self-cons':>10}")
    for user, a in s["annotators"].items():
        print(f"{user:16} {a.get('votes', 0):6d} {a.get('skips', 0):6d} {f(a.get('median_s'), 1):>9} "
              f"{f(a.get('left_rate')):>10} {f(a.get('p_value')):>8} {f(a.get('accuracy')):>9} "
              f"{f(a.get('consistency')):>10}")
    if s["reward_model_agreement"]:
        r = s["reward_model_agreement"]
        print(f"pre-ranking reward model: the annotators' majority picks its higher-scored answer on "
              f"{r['agreement']:.0%} of {r['items']} items")
    for judge, j in s.get("judge_agreement", {}).items():
        print(f"judge {judge}: {j['votes']} votes; agrees with the people's majority on "
              f"{f(j['agreement'])} of the {j['items_with_people']} items people voted on too")
        if j.get("suggested_votes"):  # anchoring: people pick the judge's side more often when they saw it?
            print(f"  people's votes equal to its label: {f(j['suggested_agreement'])} of {j['suggested_votes']} "
                  f"with its suggestion shown, {f(j['unsuggested_agreement'])} of {j['unsuggested_votes']} without")
    if s["pairs"]:
        print(f"\n{'pair':34} {'items':>6} {'agree':>6} {'kappa':>7}")
        for p in s["pairs"]:
            print(f"{p['pair'][0] + ' / ' + p['pair'][1]:34} {p['items']:6d} {p['agreement']:6.2f} {f(p['kappa']):>7}")
    return 0
