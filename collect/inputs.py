"""What a collect command reads: its recipe, its store, and the prompt and gold files of `collect init`.

The store URL comes from --store, else $ALIGNKIT_COLLECT_STORE, else the recipe's `store:` (--config), else
sqlite:///runs/demo/collect.db. Every record of a file is checked before anything is written.
"""

from __future__ import annotations

import os

from alignkit.errors import UserError

DEFAULT_STORE = "sqlite:///runs/demo/collect.db"


def recipe_of(args):
    from alignkit.recipe import load_recipe
    from collect.config import CollectRecipe

    if getattr(args, "config", None):
        return load_recipe(args.config, CollectRecipe, getattr(args, "overrides", None) or [])
    if getattr(args, "overrides", None):
        raise UserError("key.sub=value overrides need --config")
    return None


def store_url(args, recipe=None) -> str:
    return args.store or os.environ.get("ALIGNKIT_COLLECT_STORE") or (recipe.store if recipe else DEFAULT_STORE)


def store_of(args, recipe=None, **kw):
    from collect.store import open_store

    return open_store(store_url(args, recipe), recipe, **kw)


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
