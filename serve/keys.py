"""API keys for the server: `alignkit serve keys add NAME --runs DIR` prints a new key once; only its
sha256 is stored (`<runs>/serve_keys.json`, atomic writes). Keys are 256-bit random tokens, so a plain
sha256 is enough (a slow password hash would add ~50 ms to every request for no gain)."""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import secrets
import time
from pathlib import Path

from alignkit.errors import UserError
from alignkit.runs import write_text

NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")
FILE = "serve_keys.json"


def _path(runs_dir: str | Path) -> Path:
    return Path(runs_dir) / FILE


def read(runs_dir: str | Path) -> dict[str, dict]:
    """name → {sha256, created}; an absent file is no keys."""
    path = _path(runs_dir)
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
        return dict(data["keys"])
    except (ValueError, KeyError, TypeError):
        raise UserError(f"{path}: not a keys file written by `alignkit serve keys add`") from None


def add(runs_dir: str | Path, name: str) -> str:
    """Create a key for `name` (replacing an earlier one) and return it; only its hash is kept."""
    if not NAME.fullmatch(name):
        raise UserError(f"key name {name!r}: expected 1-64 letters, digits, '.', '_' or '-'")
    if not Path(runs_dir).is_dir():
        raise UserError(f"{runs_dir}: no such run folder")
    keys = read(runs_dir)
    token = "ak-" + secrets.token_urlsafe(32)
    keys[name] = {"sha256": hashlib.sha256(token.encode()).hexdigest(), "created": time.time()}
    write_text(_path(runs_dir), json.dumps({"keys": keys}, indent=1) + "\n")
    return token


def remove(runs_dir: str | Path, name: str) -> None:
    keys = read(runs_dir)
    if name not in keys:
        raise UserError(f"{name}: no such key (keys: {', '.join(sorted(keys)) or 'none'})")
    del keys[name]
    write_text(_path(runs_dir), json.dumps({"keys": keys}, indent=1) + "\n")


class KeyRing:
    """Checks bearer tokens against the keys file, re-read when it changes (adding a key needs no restart)."""

    def __init__(self, runs_dir: str | Path):
        self.path = _path(runs_dir)
        self._mtime: int | None = -1
        self._by_hash: dict[str, str] = {}

    def name_of(self, token: str) -> str | None:
        mtime = self.path.stat().st_mtime_ns if self.path.is_file() else None
        if mtime != self._mtime:
            self._by_hash = {v["sha256"]: k for k, v in read(self.path.parent).items()}
            self._mtime = mtime
        digest = hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()
        for known, name in self._by_hash.items():
            if hmac.compare_digest(known, digest):
                return name
        return None
