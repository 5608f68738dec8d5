"""`collect init` and `collect users`: create the store, load prompts and gold items, add people."""

from __future__ import annotations

import getpass
import os
import sys

from alignkit.errors import UserError
from collect.inputs import read_gold, read_prompts, recipe_of, store_of

PASSWORD_ENV = "ALIGNKIT_COLLECT_PASSWORD"


def cmd_init(args) -> int:
    """Validate every input file first, then write settings, prompts and gold items in one transaction."""
    from collect.store import QUEUE_KEYS, apply_settings, queue_settings

    recipe = recipe_of(args)
    source = args.prompts or (recipe.prompts if recipe else None)
    prompts = read_prompts(source) if source else []
    gold = read_gold(args.gold) if args.gold else []
    store = store_of(args, recipe, create=True)
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
    store = store_of(args)
    store.add_user(args.name, args.role, _password(args))
    print(f"user {args.name} ({args.role}) saved in {store.url}")
    return 0


def cmd_users_list(args) -> int:
    for u in store_of(args).users():
        print(f"{u['name']:24} {u['role']:10} {'active' if u['active'] else 'disabled'}")
    return 0
