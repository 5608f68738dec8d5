"""`alignkit collect init|users|serve|export|stats` — the labeling workflow on the command line.

The store URL comes from --store, else $ALIGNKIT_COLLECT_STORE, else the recipe's `store:` (--config), else
sqlite:///runs/demo/collect.db.
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import sys

from alignkit.errors import UserError

DEFAULT_STORE = "sqlite:///runs/demo/collect.db"
PASSWORD_ENV = "ALIGNKIT_COLLECT_PASSWORD"


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
    p.add_argument("--judges", choices=["include", "exclude", "only"], default="include",
                   help="votes of `collect judge`: counted like people's (default), left out, or the only ones")
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

    p = cmds.add_parser("judge", help="an automatic annotator: vote on the queue as a program (rules or a reward run)")
    common(p)
    p.add_argument("--judge", default="rules", help="rules (refusal detector + prompt category + house style) or "
                                                    "reward:RUN (a gated reward run)")
    p.add_argument("--name", help="the judge's identity in the store (default judge-rules / judge-reward)")
    p.add_argument("--min-margin", type=float, help="below this margin the judge skips the item, leaving it to "
                                                    "people (default 0.5 for rules, 0.1 for a reward model)")
    p.add_argument("--max-items", type=int, help="stop after this many items")
    p.set_defaults(handler=cmd_judge)

    p = cmds.add_parser("stats", help="agreement, position bias, time on task, gold accuracy, self-consistency")
    common(p)
    p.add_argument("--json", action="store_true", help="print JSON instead of tables")
    p.set_defaults(handler=cmd_stats)


def _recipe(args):
    from alignkit.recipe import load_recipe
    from collect.config import CollectRecipe

    if getattr(args, "config", None):
        return load_recipe(args.config, CollectRecipe, getattr(args, "overrides", None) or [])
    if getattr(args, "overrides", None):
        raise UserError("key.sub=value overrides need --config")
    return None


def _url(args, recipe=None) -> str:
    return args.store or os.environ.get("ALIGNKIT_COLLECT_STORE") or (recipe.store if recipe else DEFAULT_STORE)


def _store(args, recipe=None, **kw):
    from collect.store import open_store

    return open_store(_url(args, recipe), recipe, **kw)


def cmd_init(args) -> int:
    """Validate every input file first, then write settings, prompts and gold items in one transaction."""
    from collect.store import QUEUE_KEYS, apply_settings, queue_settings

    recipe = _recipe(args)
    source = args.prompts or (recipe.prompts if recipe else None)
    prompts = read_prompts(source) if source else []
    gold = read_gold(args.gold) if args.gold else []
    store = _store(args, recipe, create=True)
    if recipe is not None:  # --config: its queue settings are the store's from now on
        settings = queue_settings(recipe)
    else:  # no recipe: keep what the store has; a new store gets the defaults written once
        from collect.config import CollectRecipe

        settings = {k: v for k, v in queue_settings(CollectRecipe()).items() if store.meta(k) is None}
    added = store.load(prompts, gold, settings)
    apply_settings(store, {k: store.meta(k) for k in QUEUE_KEYS})
    print(f"store: {store.url}\nprompts added: {added['prompts']} (total {len(store.prompts())})"
          + (f"\ngold items added: {added['gold']} (already stored: {len(gold) - added['gold']})" if args.gold else "")
          + f"\nqueue: {store.overlap} votes per item, reservations expire after {store.reservation_s / 60:g} min")
    return 0


def _records(path: str):
    from alignkit.data import read_records

    try:
        records = read_records(path)
    except UnicodeDecodeError as e:
        raise UserError(f"{path}: not UTF-8 text (byte {e.start}); expected JSON records") from None
    except OSError as e:
        raise UserError(f"{path}: cannot read: {e.strerror or e}") from None
    except UserError:
        raise
    except RecursionError:
        raise UserError(f"{path}: JSON nested too deeply") from None
    except ValueError as e:  # csv/parquet readers
        raise UserError(f"{path}: cannot read records: {str(e).splitlines()[0] if str(e) else type(e).__name__}") \
            from None
    if not records:
        raise UserError(f"{path}: no records (expected one JSON object per line)")
    return records


def _check_text(origin: str, key: str, value, limit: int) -> None:
    from collect.auth import is_text

    if not is_text(value):
        raise UserError(f"{origin}: '{key}' must be valid Unicode text (found a lone surrogate or a non-string)")
    if len(value) > limit:
        raise UserError(f"{origin}: '{key}' is longer than {limit} characters")


def _prompt(rec) -> dict:
    prompt = rec.data.get("prompt")
    if isinstance(prompt, str) and prompt.strip():
        prompt = [{"role": "user", "content": prompt}]
    if (not isinstance(prompt, list) or not prompt
            or not all(isinstance(m, dict) and {"role", "content"} <= set(m) for m in prompt)):
        raise UserError(f"{rec.origin}: 'prompt' must be a string or a list of {{role, content}} messages")
    for m in prompt:
        if m["role"] not in ("system", "user", "assistant"):
            raise UserError(f"{rec.origin}: message role {str(m['role'])[:40]!r}: expected system, user or assistant")
        _check_text(rec.origin, "prompt", m["content"], 100_000)
    if prompt[-1]["role"] != "user":
        raise UserError(f"{rec.origin}: the prompt's last message must be the user's, got {prompt[-1]['role']!r}")
    category = rec.data.get("category")
    if category is not None:
        if not isinstance(category, str):
            raise UserError(f"{rec.origin}: 'category' must be a string, got {type(category).__name__}")
        _check_text(rec.origin, "category", category, 64)
    return {"prompt": [{"role": m["role"], "content": m["content"]} for m in prompt], "category": category}


def read_prompts(path: str) -> list[dict]:
    """Prompt records from any format alignkit.data reads; each needs `prompt`: a string or a message list."""
    return [_prompt(rec) for rec in _records(path)]


def read_gold(path: str) -> list[dict]:
    """Gold items: a known better (`chosen`) and worse (`rejected`) answer; every record checked before any write."""
    out = []
    for rec in _records(path):
        item = _prompt(rec)
        for side in ("chosen", "rejected"):
            value = rec.data.get(side)
            if isinstance(value, list) and value and isinstance(value[-1], dict):
                value = value[-1].get("content")
            if not isinstance(value, str) or not value.strip():
                raise UserError(f"{rec.origin}: gold items need '{side}' (a string or an assistant message list)")
            _check_text(rec.origin, side, value, 100_000)
            item[side] = value
        out.append(item)
    return out


def add_gold(store, path: str) -> int:
    """Store the gold items of a file (all or none; ones already stored are skipped); the number added."""
    return store.load(gold=read_gold(path))["gold"]


def _password(args) -> str:
    if args.password_stdin:
        return sys.stdin.readline().rstrip("\n")
    if os.environ.get(PASSWORD_ENV):
        return os.environ[PASSWORD_ENV]
    first = getpass.getpass(f"password for {args.name}: ")
    if getpass.getpass("again: ") != first:
        raise UserError("the two passwords differ")
    return first


def cmd_users_add(args) -> int:
    store = _store(args)
    store.add_user(args.name, args.role, _password(args))
    print(f"user {args.name} ({args.role}) saved in {store.url}")
    return 0


def cmd_users_list(args) -> int:
    for u in _store(args).users():
        print(f"{u['name']:24} {u['role']:10} {'active' if u['active'] else 'disabled'}")
    return 0


def cmd_serve(args) -> int:
    from collect.config import CollectRecipe

    explicit = _recipe(args)
    recipe = explicit or CollectRecipe()
    check_port(args.host, args.port)
    # Queue settings: the recipe's when --config is given (and remembered), else the store's own
    store = _store(args, explicit, remember=explicit is not None, background_checkpoint=True)
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"warning: binding {args.host}: the app is reachable from other machines; use TLS in front of it",
              file=sys.stderr)
    serve(store, recipe, args.adapter, args.host, args.port, args.share, not args.no_generate)
    return 0


def check_port(host: str, port: int) -> None:
    """A port in 1–65535 that this host can bind now: one clear line instead of uvicorn's traceback."""
    import socket

    if not 1 <= port <= 65535:
        raise UserError(f"--port {port}: expected 1–65535")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_STREAM) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((host, port))
    except OSError as e:
        raise UserError(f"--host {host} --port {port}: cannot listen there: {e.strerror or e}") from None


def serve(store, recipe, adapter, host, port, share=False, generate=True) -> None:
    """Start the worker (if prompts still need items) and the HTTP server; blocks until Ctrl-C."""
    import threading

    import uvicorn

    from alignkit.entry import quiet_libraries
    from collect.export import ExportRules
    from collect.server import LOOPBACK, create_app
    from collect.worker import Worker, load_generators

    quiet_libraries()
    adapter = adapter or recipe.model.adapter
    generator = f"{recipe.model.base}+{adapter}" if adapter else recipe.model.base
    worker = Worker(store, recipe.generation, lambda: load_generators(recipe.model, adapter, recipe.generation))
    if generate and worker.todo():
        worker.start()
        print(f"worker: generating candidates with {generator} (rival: {recipe.generation.rival or 'itself'})")
    rules = ExportRules(recipe.export.min_votes, recipe.export.min_agreement, recipe.export.edited_as_chosen)
    # Secure cookies beyond loopback: there the app must sit behind TLS (a browser then never sends the
    # session over plain HTTP); on loopback, and through the https share tunnel, per request (scheme).
    app = create_app(store, recipe.guidelines, generator, rules, secure_cookies=host not in LOOPBACK)
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False))
    print(f"collect: http://{'[' + host + ']' if ':' in host else host}:{port}/  (store {store.url})", flush=True)
    if share:
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        import secrets

        from gradio import networking

        url = networking.setup_tunnel("127.0.0.1", port, secrets.token_urlsafe(32), None, None)
        print(f"share link (public, anyone with it reaches the login page): {url}", flush=True)
        thread.join()
    else:
        server.run()
    worker.stop.set()
    store.close()


def cmd_export(args) -> int:
    from collect.export import ExportRules, write

    if args.source == "production":
        return export_production(args)
    recipe = _recipe(args)
    store = _store(args, recipe)
    e = recipe.export if recipe else None
    rules = ExportRules(
        min_votes=args.min_votes if args.min_votes is not None else (e.min_votes if e else 1),
        min_agreement=args.min_agreement if args.min_agreement is not None else (e.min_agreement if e else 0.0),
        edited_as_chosen=args.edited_as_chosen if args.edited_as_chosen is not None
        else (e.edited_as_chosen if e else False), judges=args.judges)
    if not 0 <= rules.min_agreement <= 1:
        raise UserError("--min-agreement: a share between 0 and 1")
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


def cmd_generate(args) -> int:
    """The worker's generation in batch mode: every prompt gets its pairs, then exit (the pipeline's round)."""
    from alignkit.entry import quiet_libraries
    from collect.config import CollectRecipe
    from collect.worker import Worker, load_generators

    quiet_libraries()
    recipe = _recipe(args) or CollectRecipe()
    store = _store(args, recipe)
    prompts = len(store.prompts())
    if prompts < max(args.min_prompts, 1):
        raise UserError(f"store {store.url}: {prompts} prompt(s), the round needs at least {max(args.min_prompts, 1)} "
                        "(alignkit collect init --prompts FILE adds them)")
    adapter = args.adapter or recipe.model.adapter
    worker = Worker(store, recipe.generation, lambda: load_generators(recipe.model, adapter, recipe.generation))
    before, batches = store.item_count(), 0
    while worker.todo():
        worker.step(force=True)
        batches += 1
        print(f"generate: batch {batches}, {store.item_count() - before} pairs so far", flush=True)
    ready = sum(store.ready_counts().values())
    print(f"generate: {store.item_count() - before} new pairs ({ready} ready for voting, the rest flagged as "
          f"near-duplicates) for {prompts} prompts")
    return 0


def cmd_judge(args) -> int:
    """Vote on every open item as a program; unsure items are skipped and stay with the people."""
    from collect.judge import run_judge

    recipe = _recipe(args)
    store = _store(args, recipe)
    if args.max_items is not None and args.max_items < 1:
        raise UserError("--max-items: at least 1")
    name = args.name or ("judge-rules" if args.judge == "rules" else "judge-reward")
    base = recipe.model.base if recipe else "smollm2-135m-instruct"
    counts = run_judge(store, name, args.judge, base, args.min_margin, args.max_items)
    print(f"{name}: {counts['a'] + counts['b']} votes ({counts['a']} left, {counts['b']} right), "
          f"{counts['skip']} unsure and left for people")
    return 0


def export_production(args) -> int:
    """Served answers with feedback (alignkit serve) → KTO rows, DPO pairs and prompts for the next round."""
    from pathlib import Path

    from alignkit import feedback

    recipe = _recipe(args)
    url = args.store or os.environ.get("ALIGNKIT_COLLECT_STORE") or (recipe.store if recipe else DEFAULT_STORE)
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

    p = Path(out)
    if p.is_dir() or out.endswith(("/", os.sep)):
        raise UserError(f"--out {out}: is a directory; name the pairs file, e.g. {p / 'pairs.jsonl'}")
    parent = p.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise UserError(f"--out {out}: {parent} is a file, not a directory")
    real = str(parent.resolve())
    if real.startswith(("/proc", "/sys", "/dev")) or not os.access(parent, os.W_OK):
        raise UserError(f"--out {out}: cannot write in {parent}")


def cmd_stats(args) -> int:
    from collect.agreement import summarize

    recipe = _recipe(args)
    store = _store(args, recipe)
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
    if s["pairs"]:
        print(f"\n{'pair':34} {'items':>6} {'agree':>6} {'kappa':>7}")
        for p in s["pairs"]:
            print(f"{p['pair'][0] + ' / ' + p['pair'][1]:34} {p['items']:6d} {p['agreement']:6.2f} {f(p['kappa']):>7}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """`python -m collect …`: the same commands as `alignkit collect …`."""
    from alignkit.entry import guarded

    parser = argparse.ArgumentParser(prog="python -m collect", description=__doc__.splitlines()[0])
    build_commands(parser.add_subparsers(dest="collect_command", required=True, metavar="COMMAND"))
    args = parser.parse_args(argv)
    return guarded(lambda: args.handler(args), args.debug)
