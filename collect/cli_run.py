"""`collect serve`, `collect generate` and `collect judge`: the app, candidate generation, the automatic annotator."""

from __future__ import annotations

import sys

from alignkit.errors import UserError
from collect.inputs import recipe_of, store_of


def cmd_serve(args) -> int:
    from collect.config import CollectRecipe

    explicit = recipe_of(args)
    recipe = explicit or CollectRecipe()
    check_port(args.host, args.port)
    # Queue settings: the recipe's when --config is given (and remembered), else the store's own
    store = store_of(args, explicit, remember=explicit is not None, background_checkpoint=True)
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

    from alignkit.cli import quiet_libraries
    from collect.export import rules_from
    from collect.server import LOOPBACK, create_app
    from collect.worker import Worker, load_generators

    quiet_libraries()
    adapter = adapter or recipe.model.adapter
    generator = f"{recipe.model.base}+{adapter}" if adapter else recipe.model.base
    worker = Worker(store, recipe.generation, lambda: load_generators(recipe.model, adapter, recipe.generation))
    if generate and worker.todo():
        worker.start()
        print(f"worker: generating candidates with {generator} (rival: {recipe.generation.rival or 'itself'})")
    rules = rules_from(recipe.export)
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


def cmd_generate(args) -> int:
    """The worker's generation in batch mode: every prompt gets its pairs, then exit (the pipeline's round)."""
    from alignkit.cli import quiet_libraries
    from collect.config import CollectRecipe
    from collect.round import fill

    quiet_libraries()
    recipe = recipe_of(args) or CollectRecipe()
    store = store_of(args, recipe)
    prompts = len(store.prompts())
    if prompts < max(args.min_prompts, 1):
        raise UserError(f"store {store.url}: {prompts} prompt(s), the round needs at least {max(args.min_prompts, 1)} "
                        "(alignkit collect init --prompts FILE adds them)")
    before = store.item_tally()
    made = fill(store, recipe, args.adapter or recipe.model.adapter, log=lambda line: print(line, flush=True))
    new = {k: n - before[k] for k, n in store.item_tally().items()}
    print(f"generate: {made} new items for {prompts} prompts: {new['pair']} pairs ready for voting, {new['repeat']} "
          f"blind repeats of them (queue.repeat_every), {new['flagged']} flagged as near-duplicates")
    return 0


def cmd_judge(args) -> int:
    """Vote on every open item as a program; unsure items are skipped and stay with the people."""
    from collect.judge import default_name, run_judge

    recipe = recipe_of(args)
    store = store_of(args, recipe)
    if args.max_items is not None and args.max_items < 1:
        raise UserError("--max-items: at least 1")
    name = args.name or default_name(args.judge)
    base = recipe.model.base if recipe else "smollm2-135m-instruct"
    counts = run_judge(store, name, args.judge, base, args.min_margin, args.max_items)
    print(f"{name}: {counts['a'] + counts['b']} votes ({counts['a']} left, {counts['b']} right), "
          f"{counts['skip']} unsure and left for people")
    return 0
