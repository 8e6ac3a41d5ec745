"""Accounts of a lab's server: who may look, who may review, who may manage (``cellmorphnet users``).

Each account has a name, a role and a token. The token is shown once, when it is made, and stored only as a
salted ``hashlib.scrypt`` hash: whoever reads the file cannot sign in with it. A token reads
``cmn_<key>_<secret>``; the key (public) finds the account, the secret is what is hashed. The accounts live in
``HOME/accounts.sqlite`` beside the review store (versioned and migrated like it, every change one transaction,
and each change recorded in ``events``). Once an account exists, ``serve`` requires a valid token on every ``/v1``
route, and a review is recorded under the account's name.

Roles, each with the rights of the one before: ``viewer`` (read cases and reports, classify images),
``reviewer`` (add cells to cases, review, start an adaptation), ``admin`` (choose the served model).
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import threading
from dataclasses import dataclass
from pathlib import Path

from cellmorphnet.errors import Conflict, InvalidData, NotFound
from cellmorphnet.reviews.store import check_name
from cellmorphnet.runtime.database import Database, Stored, now

SCHEMA = 1
FILENAME = "accounts.sqlite"
ROLES = ("viewer", "reviewer", "admin")
RIGHTS = {
    "viewer": frozenset({"read", "classify"}),
    "reviewer": frozenset({"read", "classify", "review", "adapt"}),
    "admin": frozenset({"read", "classify", "review", "adapt", "promote"}),
}
# scrypt's cost (RFC 7914's interactive setting: 16 MiB, 49 ms a hash on the 2-core development machine, docs/serve.md);
# a verified token is remembered in memory (as its SHA-256) so each request does not pay it again
SCRYPT = {"n": 2**14, "r": 8, "p": 1, "dklen": 32}
_TOKEN = re.compile(r"cmn_([0-9a-f]{12})_([A-Za-z0-9_-]{43})")
_HASHING = threading.BoundedSemaphore(2)  # scrypt calls at once: a burst of wrong tokens costs 2 x 16 MiB, not 40 x

_MIGRATIONS = {
    1: """
        CREATE TABLE users (
            id INTEGER PRIMARY KEY,
            name TEXT NOT NULL UNIQUE,
            role TEXT NOT NULL,
            token_key TEXT NOT NULL UNIQUE,  -- the token's public part, which finds the account
            salt BLOB NOT NULL,
            token_hash BLOB NOT NULL,        -- scrypt of the token's secret part: the token itself is never stored
            created TEXT NOT NULL
        );
        CREATE TABLE events (
            id INTEGER PRIMARY KEY,
            name TEXT NOT NULL,
            action TEXT NOT NULL,            -- added, removed, new token
            role TEXT,
            created TEXT NOT NULL
        );
    """,
}


@dataclass(frozen=True)
class Account:
    """Who a request comes from: ``name`` (None: the one shared ``--token``, or no token at all) and ``role``."""

    name: str | None
    role: str
    created: str | None = None

    def may(self, right: str) -> bool:
        return right in RIGHTS.get(self.role, frozenset())

    def to_dict(self) -> dict[str, str | None]:
        return {"name": self.name, "role": self.role, "created": self.created}


ANONYMOUS_ADMIN = Account(None, "admin")  # a server without accounts: whoever holds its --token (or anyone, without)


def accounts_path(home: Path) -> Path:
    return Path(home) / FILENAME


def check_role(role: str) -> str:
    if role not in ROLES:
        raise InvalidData(f"Unknown role '{role}'; choose one of {', '.join(ROLES)}.")
    return role


def _hash(secret: str, salt: bytes) -> bytes:
    with _HASHING:
        return hashlib.scrypt(secret.encode("ascii"), salt=salt, maxmem=64 * 1024 * 1024, **SCRYPT)


def _new_token() -> tuple[str, str, bytes, bytes]:
    """(token, key, salt, hash) of a new random token."""
    key, secret, salt = secrets.token_hex(6), secrets.token_urlsafe(32), secrets.token_bytes(16)
    return f"cmn_{key}_{secret}", key, salt, _hash(secret, salt)


class Accounts(Stored):
    """The accounts file at ``path`` (created on open unless ``read_only``)."""

    def __init__(self, path: Path, *, read_only: bool = False) -> None:
        self.path = Path(path)
        self._file = Database(self.path, what="accounts file", schema=SCHEMA, migrations=_MIGRATIONS,
                              marker="users", read_only=read_only,
                              hint="Accounts are made with: cellmorphnet users add NAME --role reviewer")  # fmt: skip
        self._verified: dict[bytes, bytes] = {}  # SHA-256 of a token -> the stored hash it matched
        self._cache_lock = threading.Lock()

    def _row_account(self, row) -> Account | None:
        """A stored row as an account; None where the file holds something else (it is read as input)."""
        role, name = row["role"], row["name"]
        if role not in ROLES or not isinstance(name, str):
            return None
        return Account(name, role, row["created"] if isinstance(row["created"], str) else None)

    def list(self) -> list[Account]:
        rows = self._file.db.execute("SELECT name, role, created FROM users ORDER BY name").fetchall()
        return [a for a in (self._row_account(r) for r in rows) if a is not None]

    def any(self) -> bool:
        """Whether any account exists (then every ``/v1`` route needs a token)."""
        return self._file.db.execute("SELECT 1 FROM users LIMIT 1").fetchone() is not None

    def add(self, name: str, role: str) -> tuple[Account, str]:
        """A new account and its token (shown once: only its hash is kept)."""
        name, role = check_name(name, "account name", required=True), check_role(role)
        token, key, salt, digest = _new_token()
        with self._file.write() as db:
            if db.execute("SELECT 1 FROM users WHERE name = ?", (name,)).fetchone():
                raise Conflict(f"There is already an account '{name}'.",
                               hint=f"Give it a new token with: cellmorphnet users token {name}")  # fmt: skip
            created = now()
            db.execute("INSERT INTO users (name, role, token_key, salt, token_hash, created) VALUES (?, ?, ?, ?, ?, ?)",
                       (name, role, key, salt, digest, created))  # fmt: skip
            db.execute("INSERT INTO events (name, action, role, created) VALUES (?, 'added', ?, ?)",
                       (name, role, created))  # fmt: skip
        return Account(name, role, created), token

    def new_token(self, name: str) -> str:
        """A new token for ``name``; the old one stops working at once."""
        token, key, salt, digest = _new_token()
        with self._file.write() as db:
            row = db.execute("SELECT role FROM users WHERE name = ?", (name,)).fetchone()
            if row is None:
                raise NotFound(f"There is no account '{name}'.", hint="See them with: cellmorphnet users list")
            db.execute("UPDATE users SET token_key = ?, salt = ?, token_hash = ? WHERE name = ?",
                       (key, salt, digest, name))  # fmt: skip
            db.execute("INSERT INTO events (name, action, role, created) VALUES (?, 'new token', ?, ?)",
                       (name, row["role"], now()))  # fmt: skip
        return token

    def remove(self, name: str) -> None:
        with self._file.write() as db:
            row = db.execute("SELECT role FROM users WHERE name = ?", (name,)).fetchone()
            if row is None:
                raise NotFound(f"There is no account '{name}'.", hint="See them with: cellmorphnet users list")
            db.execute("DELETE FROM users WHERE name = ?", (name,))
            db.execute("INSERT INTO events (name, action, role, created) VALUES (?, 'removed', ?, ?)",
                       (name, row["role"], now()))  # fmt: skip

    def authenticate(self, token: str) -> Account | None:
        """The account whose token ``token`` is; None for any other text. A removed account or a replaced token
        stops working at once (the account is read on every call; only the scrypt work is remembered)."""
        match = _TOKEN.fullmatch(token.strip())
        if match is None:
            return None
        key, secret = match.groups()
        row = self._file.db.execute("SELECT name, role, created, salt, token_hash FROM users WHERE token_key = ?",
                                    (key,)).fetchone()  # fmt: skip
        if row is None or not isinstance(row["token_hash"], bytes) or not isinstance(row["salt"], bytes):
            return None
        stored = row["token_hash"]
        seen = hashlib.sha256(token.strip().encode("ascii")).digest()
        with self._cache_lock:
            known = self._verified.get(seen)
        if known is None or not hmac.compare_digest(known, stored):
            if not hmac.compare_digest(_hash(secret, row["salt"]), stored):
                return None
            with self._cache_lock:
                if len(self._verified) >= 4096:  # bounded, whatever is sent
                    self._verified.clear()
                self._verified[seen] = stored
        return self._row_account(row)
