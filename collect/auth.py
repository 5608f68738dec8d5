"""Users, passwords and login sessions of the labeling store (mixed into `collect.store.Store`).

Passwords are argon2id hashes; a session is a random 256-bit token of which the store keeps only the sha256.
Changing a user (password, role, disabling) ends every session of theirs; so does logging out.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import time

from sqlalchemy import delete, select

from alignkit.errors import UserError
from collect.models import LoginSession, User

ROLES = ("annotator", "admin", "judge")  # judge: `collect judge`, a program; never logs in
SESSION_HOURS = 12
NAME_RE = re.compile(r"[A-Za-z0-9._-]{1,64}")  # ASCII only: no full-width or other look-alike names
_DUMMY_HASH: list[str] = []


def sha(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def is_text(value) -> bool:
    """A str that is valid Unicode (encodes to UTF-8: no lone surrogates such as '\\ud800')."""
    if not isinstance(value, str):
        return False
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def valid_name(name) -> bool:
    return isinstance(name, str) and NAME_RE.fullmatch(name) is not None


def hash_password(password: str) -> str:
    """argon2id with argon2-cffi's defaults (RFC 9106 low-memory profile)."""
    from argon2 import PasswordHasher

    if not is_text(password):
        raise UserError("password: not valid text")
    if len(password) < 8:
        raise UserError("password: at least 8 characters")
    if len(password) > 1024:
        raise UserError("password: at most 1024 characters")
    return PasswordHasher().hash(password)


def _verify(stored: str, password: str) -> bool:
    from argon2 import PasswordHasher
    from argon2.exceptions import InvalidHashError, VerificationError

    try:
        return PasswordHasher().verify(stored, password)
    except (VerificationError, InvalidHashError):
        return False


class UsersMixin:
    """The user and session methods of Store (needs its `read()`, `write()` and `audit()`)."""

    def add_user(self, name: str, role: str, password: str, by: str = "cli") -> None:
        """Add a user, or reset an existing one's password and role: that ends all of their sessions."""
        if role not in ROLES:
            raise UserError(f"role '{role}': expected one of {', '.join(ROLES)}")
        if not valid_name(name):
            shown = name if is_text(name) else name.encode("utf-8", "backslashreplace").decode()
            raise UserError(f"user name '{shown[:80]}': use 1–64 ASCII letters, digits, '-', '_' or '.'")
        digest = hash_password(password)
        with self.write() as s:
            user = s.scalar(select(User).where(User.name == name))
            if user is None:
                s.add(User(name=name, role=role, password_hash=digest, active=True, created_at=time.time()))
                self.audit(s, by, "user_add", name=name, role=role)
            else:
                user.role, user.password_hash, user.active = role, digest, True
                ended = s.execute(delete(LoginSession).where(LoginSession.user_id == user.id)).rowcount
                self.audit(s, by, "user_update", name=name, role=role, sessions_ended=ended)

    def users(self) -> list[dict]:
        with self.read() as s:
            return [{"name": u.name, "role": u.role, "active": u.active} for u in s.scalars(select(User))]

    def check_password(self, name: str, password: str) -> dict | None:
        """The user (name, role) when the password matches; a dummy hash keeps timing alike for unknown names."""
        stored = user = None
        if valid_name(name) and is_text(password) and len(password) <= 1024:
            with self.read() as s:
                user = s.scalar(select(User).where(User.name == name, User.active.is_(True)))
                stored = user.password_hash if user else None
        if stored is None:
            if not _DUMMY_HASH:
                _DUMMY_HASH.append(hash_password("not-a-real-password"))
            _verify(_DUMMY_HASH[0], password if is_text(password) else "")
            return None
        if user.role == "judge":  # a program's identity (collect judge): nobody logs in as it
            return None
        return {"name": user.name, "role": user.role} if _verify(stored, password) else None

    def login(self, name: str, password: str) -> str | None:
        """A new session token for a correct password, else None; the store keeps only its sha256."""
        user = self.check_password(name, password)
        with self.write() as s:
            if user is None:
                self.audit(s, name[:64] if valid_name(name) else "(invalid name)", "login_failed")
                return None
            token = secrets.token_urlsafe(32)
            uid = s.scalar(select(User.id).where(User.name == name))
            now = time.time()
            s.add(LoginSession(token_sha256=sha(token), user_id=uid, created_at=now,
                               expires_at=now + SESSION_HOURS * 3600))
            self.audit(s, name, "login")
        return token

    def session_user(self, token: str | None) -> dict | None:
        if not token or not is_text(token) or len(token) > 256:
            return None
        with self.read() as s:
            row = s.execute(select(User.name, User.role).join(LoginSession, LoginSession.user_id == User.id)
                            .where(LoginSession.token_sha256 == sha(token), LoginSession.expires_at > time.time(),
                                   User.active.is_(True))).first()
        return {"name": row.name, "role": row.role} if row else None

    def logout(self, token: str) -> bool:
        """End one session; True when there was one."""
        if not token or not is_text(token):
            return False
        with self.write() as s:
            sess = s.get(LoginSession, sha(token))
            if sess is None:
                return False
            s.delete(sess)
            return True

    def role(self, name: str | None) -> str | None:
        with self.read() as s:
            return s.scalar(select(User.role).where(User.name == name, User.active.is_(True))) if name else None
