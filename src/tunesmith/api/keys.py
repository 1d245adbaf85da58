"""The service's API keys: created with `tunesmith api keys create`, stored only as hashes in api.db,
checked on every request by the HTTP gate (serve.app.Gate).

A key is `ts-` and 43 URL-safe characters (256 random bits). Only its SHA-256 is stored, with the
first few characters for `keys list` to tell keys apart. A fast hash is enough here: the slow,
salted hashes used for passwords (bcrypt, argon2) protect secrets a person chose, which can be
guessed; a 256-bit random key cannot be found from its hash by trying, however fast each try is,
and a slow hash would cost every request tens of milliseconds.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from tunesmith.errors import UserError

KEY_PREFIX = "ts-"
SHOWN_CHARS = 8  # "ts-" and five more: enough to tell keys apart in a list, far too few to guess the rest
CACHE_SECONDS = 1.0  # a revoked key stops working within this long in a server that has it cached
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


@dataclass(frozen=True)
class ApiKey:
    id: str
    name: str
    prefix: str  # the secret's first characters, for telling keys apart
    created_at: int
    revoked_at: int | None = None

    @property
    def active(self) -> bool:
        return self.revoked_at is None

    def created_text(self) -> str:
        return _when(self.created_at)

    def revoked_text(self) -> str:
        return _when(self.revoked_at) if self.revoked_at is not None else "-"


def _when(seconds: int) -> str:
    return datetime.fromtimestamp(seconds, tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ")


def _digest(secret: str) -> bytes:
    return hashlib.sha256(secret.encode("utf-8", "surrogatepass")).digest()


class KeyStore:
    """The api_keys table. Safe to share between threads; every process opens its own."""

    def __init__(self, db_path: Path):
        self.db_path = Path(db_path)
        self._lock = threading.Lock()
        self._cached: tuple[float, tuple[bytes, ...]] | None = None
        with self._connect() as db:
            db.execute(
                "CREATE TABLE IF NOT EXISTS api_keys (id TEXT PRIMARY KEY, name TEXT NOT NULL, prefix TEXT NOT NULL, "
                "hash BLOB NOT NULL UNIQUE, created_at INTEGER NOT NULL, revoked_at INTEGER)"
            )

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        self.db_path.parent.mkdir(parents=True, exist_ok=True)
        with closing(sqlite3.connect(self.db_path, timeout=30)) as db:
            db.execute("PRAGMA journal_mode=WAL")
            with db:  # one transaction, committed on leaving
                yield db

    def create(self, name: str) -> tuple[ApiKey, str]:
        """A new key and its secret, which exists nowhere else: the caller shows it once."""
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            raise UserError(
                f"key name {name!r} is not valid", where="--name", fix="use 1 to 64 letters, digits, '.', '_' or '-', starting with a letter or digit"
            )
        secret = KEY_PREFIX + secrets.token_urlsafe(32)
        key = ApiKey(id="key_" + secrets.token_hex(8), name=name, prefix=secret[:SHOWN_CHARS], created_at=int(time.time()))
        with self._connect() as db:
            db.execute("BEGIN IMMEDIATE")  # the name check and the insert together: two creates cannot both take a name
            if db.execute("SELECT 1 FROM api_keys WHERE name = ? AND revoked_at IS NULL", (name,)).fetchone():
                raise UserError(f"an active key is already named '{name}'", where="--name", fix=f"choose another name, or `revoke {name}` first")
            db.execute(
                "INSERT INTO api_keys (id, name, prefix, hash, created_at) VALUES (?, ?, ?, ?, ?)",
                (key.id, key.name, key.prefix, _digest(secret), key.created_at),
            )
        self._cached = None
        return key, secret

    def list(self) -> list[ApiKey]:
        with self._connect() as db:
            rows = db.execute("SELECT id, name, prefix, created_at, revoked_at FROM api_keys ORDER BY created_at, id").fetchall()
        return [ApiKey(*row) for row in rows]

    def revoke(self, key_id_or_name: str) -> ApiKey:
        """Revoke the key with this id, or the active key with this name. A key already revoked stays so."""
        with self._connect() as db:
            db.execute("BEGIN IMMEDIATE")
            row = db.execute(
                "SELECT id, name, prefix, created_at, revoked_at FROM api_keys WHERE id = ? OR (name = ? AND revoked_at IS NULL)",
                (key_id_or_name, key_id_or_name),
            ).fetchone()
            if row is None:
                raise UserError(f"no API key '{key_id_or_name}' (by id, or active key by name)", fix="`tunesmith api keys list` shows the ids and names")
            key = ApiKey(*row)
            if key.active:
                key = ApiKey(key.id, key.name, key.prefix, key.created_at, int(time.time()))
                db.execute("UPDATE api_keys SET revoked_at = ? WHERE id = ?", (key.revoked_at, key.id))
        self._cached = None
        return key

    def _active_digests(self) -> tuple[bytes, ...]:
        """The active keys' hashes, read at most once a second: the gate asks on every request."""
        now = time.monotonic()
        cached = self._cached
        if cached is not None and now - cached[0] < CACHE_SECONDS:
            return cached[1]
        with self._lock:
            with self._connect() as db:
                digests = tuple(row[0] for row in db.execute("SELECT hash FROM api_keys WHERE revoked_at IS NULL"))
            self._cached = (now, digests)
        return digests

    def any_active(self) -> bool:
        return bool(self._active_digests())

    def verify(self, secret: str) -> bool:
        """Whether `secret` is an active key. Every stored hash is compared, each with compare_digest,
        so the time taken says nothing about which key, or how much of one, was right."""
        given = _digest(secret)
        found = False
        for digest in self._active_digests():
            found |= hmac.compare_digest(given, digest)
        return found
