"""`alignkit serve` — the promoted adapter behind an OpenAI-compatible API.

    alignkit serve --config recipes/smollm2/serve.yaml --runs runs/demo [--port 8000] [key.sub=value …]
    alignkit serve keys add NAME --runs runs/demo      # prints the new API key as its last line
    alignkit serve keys list|remove NAME --runs runs/demo
    alignkit serve stats [--config …] [--store URL]    # per run/variant: answers, latency, thumbs, refusals
"""

from __future__ import annotations

import argparse

from alignkit.errors import UserError

USAGE = ("alignkit serve --config FILE [--runs DIR] [--host H] [--port P] [key.sub=value …]\n"
         "       alignkit serve keys add|list|remove [NAME] --runs DIR\n"
         "       alignkit serve stats [--config FILE] [--store URL]")


def register(sub) -> None:
    """Add `serve` (with `serve keys` and `serve stats`) to the CLI."""
    from alignkit.cli import add_recipe_args

    p = sub.add_parser("serve", help="serve the promoted adapter (OpenAI API), hot swap, A/B, feedback",
                       usage=USAGE, description=__doc__.splitlines()[0])
    add_recipe_args(p, required=False, config_help="serve recipe YAML, e.g. recipes/smollm2/serve.yaml", words="words",
                    words_help="recipe overrides; or `keys add NAME`, `keys list`, `keys remove NAME`, `stats`")
    p.add_argument("--runs", help="the pipeline's run folder (default: the recipe's `runs:`)")
    p.add_argument("--host", help="bind address (default 127.0.0.1; anything else exposes the API)")
    p.add_argument("--port", type=int, help="TCP port (default 8000)")
    p.add_argument("--store", help="stats: the collect store holding production answers (default: the recipe's)")
    p.set_defaults(handler=dispatch)


def dispatch(args: argparse.Namespace) -> int:
    from alignkit.cli import quiet_libraries

    quiet_libraries()
    words = args.words
    if words[:1] == ["keys"]:
        return keys_cmd(words[1:], args)
    if words[:1] == ["stats"]:
        return stats_cmd(args, words[1:])
    return serve_cmd(args, words)


def load(args, overrides):
    from dataclasses import replace

    from alignkit.recipe import load_recipe
    from serve.config import ServerConfig, ServeRecipe

    recipe = load_recipe(args.config, ServeRecipe, overrides) if args.config else ServeRecipe()
    if args.host or args.port:
        try:
            server = replace(recipe.server, **{k: v for k, v in (("host", args.host), ("port", args.port)) if v})
        except ValueError as e:
            raise UserError(f"--port: {e}") from None
        recipe = replace(recipe, server=server)
    assert isinstance(recipe.server, ServerConfig)
    return recipe


def keys_cmd(words: list[str], args) -> int:
    from serve import keys

    if not args.runs:
        raise UserError("serve keys: --runs DIR is required (the run folder the server serves)")
    if words[:1] == ["add"] and len(words) == 2:
        token = keys.add(args.runs, words[1])
        print(f"key '{words[1]}' added to {args.runs}/{keys.FILE} (only its hash is stored; this is the one time "
              "it is shown):")
        print(token)
        return 0
    if words == ["list"]:
        for name, entry in sorted(keys.read(args.runs).items()):
            print(f"{name:24s} sha256 {entry['sha256'][:12]}…")
        return 0
    if words[:1] == ["remove"] and len(words) == 2:
        keys.remove(args.runs, words[1])
        print(f"key '{words[1]}' removed")
        return 0
    raise UserError(f"serve keys: expected `add NAME`, `list` or `remove NAME`, got {' '.join(words) or 'nothing'}")


def stats_cmd(args, overrides) -> int:
    from alignkit import feedback

    recipe = load(args, overrides)
    store = args.store or recipe.feedback.store
    if not store:
        raise UserError("serve stats: no store (feedback.store in the recipe, or --store URL)")
    rows = feedback.stats(feedback.engine(store))
    if not rows:
        print(f"no production answers in {store.split('@')[-1]} yet")
        return 0
    fmt = lambda v: "–" if v is None else f"{v:.3f}"  # noqa: E731
    print(f"{'run':32s} {'variant':7s} {'answers':>7s} {'p50 ms':>8s} {'p99 ms':>8s} {'thumbs up':>9s} "
          f"{'refusal':>8s} (sampled)")
    for r in rows:
        print(f"{r['run']:32s} {r['variant'] or '':7s} {r['answers']:7d} {r['p50_ms']:8.0f} {r['p99_ms']:8.0f} "
              f"{fmt(r['thumbs_up_rate']):>9s} {fmt(r['refusal_rate']):>8s} ({r['sampled']})")
    return 0


def build(recipe, runs_dir: str):
    """(ASGI app, FastAPI app, engine) for a recipe: the engine, the feedback store, the router."""
    from pathlib import Path

    from alignkit import feedback
    from serve.app import create_app

    if not (Path(runs_dir) / "registry.json").is_file():
        raise UserError(f"{runs_dir}: no registry.json (a run folder the pipeline or a stage wrote)")
    if recipe.engine.kind == "vllm":
        from serve.vllm import VLLMEngine

        engine = VLLMEngine(recipe.model, recipe.engine)
    else:
        from serve.engine import TransformersEngine

        engine = TransformersEngine(recipe.model, recipe.engine.max_batch, recipe.engine.max_wait_ms,
                                    recipe.engine.threads, pack_weights=recipe.engine.pack_weights)
    store = feedback.engine(recipe.feedback.store) if recipe.feedback.store else None
    asgi, app = create_app(recipe, runs_dir, engine, store)
    return asgi, app, engine


def serve_cmd(args, overrides) -> int:
    import uvicorn

    recipe = load(args, overrides)
    runs_dir = args.runs or recipe.runs
    asgi, app, engine = build(recipe, runs_dir)
    router = app.state.router
    print(f"serving {router.name} ({router.current or 'nothing promoted yet'}) on "
          f"http://{recipe.server.host}:{recipe.server.port}/v1", flush=True)
    try:
        uvicorn.run(asgi, host=recipe.server.host, port=recipe.server.port, log_level="warning")
    except (OSError, SystemExit) as e:
        raise UserError(f"serve: cannot listen on {recipe.server.host}:{recipe.server.port} ({e})") from None
    finally:
        app.state.stop.set()
        engine.close()
    return 0
