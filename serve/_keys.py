"""API keys: created once, stored only as salted hashes, revocable.

A secret is 256 random bits, so a salted HMAC-SHA256 is enough to store it: nothing can be guessed
faster than by trying 2^256 secrets, and checking a wrong secret costs one hash (a slow, stretched
hash such as PBKDF2 would only let a flood of wrong secrets burn the replica's CPU). Keys stored
with PBKDF2 by earlier versions still verify, and are rehashed the first time they are used.

The store is a SQLAlchemy URL: by default SQLite at ``$ATTUNE_HOME/keys.db``; with a PostgreSQL
registry (``ATTUNE_MLFLOW_TRACKING_URI`` or ``ATTUNE_MLFLOW_BACKEND_STORE_URI``) the keys live in
that same database (table ``attune_api_keys``); ``ATTUNE_KEYS_DB_URL`` overrides both.

A key reads ``atn_<key_id>_<secret>``: the id finds the row, the secret is checked against the hash.
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import hmac
import logging
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from cluster import UsageError
from registry import database_url
from serve._errors import ServeError

logger = logging.getLogger("attune.serve")
TABLE = "attune_api_keys"
PREFIX = "atn"
SCHEME = "sha256"  # sha256$<salt hex>$<HMAC-SHA256(salt, secret) hex>
LEGACY_SCHEME = "pbkdf2_sha256"  # pbkdf2_sha256$<iterations>$<salt hex>$<digest hex>: keys stored by earlier versions
KEY_ID_HEX = 12


@dataclass(frozen=True)
class Principal:
    """Who a valid key belongs to."""

    key_id: str
    tenant: Optional[str]
    admin: bool

    def may_call(self, tenant: str) -> bool:
        return self.admin or self.tenant == tenant


@dataclass(frozen=True)
class KeyRow:
    """A stored key, without its secret: what checking a presented secret needs."""

    key_id: str
    tenant: Optional[str]
    admin: bool
    secret_hash: str
    revoked: bool

    def principal(self, secret: str) -> Optional[Principal]:
        """The key's principal if it is not revoked and ``secret`` is its secret (one hash); else None."""
        if self.revoked or not verify_secret(secret, self.secret_hash):
            return None
        return Principal(key_id=self.key_id, tenant=self.tenant, admin=self.admin)


class KeyStoreError(ServeError):
    """The key store cannot be reached or read (exit status 1)."""

    code = "key_store"


class KeyStoreUnavailableError(KeyStoreError):
    """The endpoint could not read the key store: 503 with ``Retry-After``, and a message without the
    database's own error (which may name its host or user); the replica's log has that."""

    http_status = 503
    code = "key_store_unavailable"
    retry_after_s = 5.0


class KeyUsageError(KeyStoreError, UsageError):
    """A key request that cannot work: no such key id, or a key for both a tenant and everyone."""


def keys_url(settings) -> str:
    """Where keys live: ``ATTUNE_KEYS_DB_URL``, else the registry's PostgreSQL, else SQLite in ATTUNE_HOME
    (the database that also holds the tenants' feedback: ``registry.database_url``)."""
    return database_url(settings)


def hash_secret(secret: str, salt: Optional[bytes] = None) -> str:
    salt = salt if salt is not None else secrets.token_bytes(16)
    return f"{SCHEME}${salt.hex()}${hmac.new(salt, secret.encode(), 'sha256').hexdigest()}"


def verify_secret(secret: str, stored: str) -> bool:
    """Whether ``secret`` matches ``stored`` (either scheme); malformed hashes never match."""
    parts = stored.split("$")
    try:
        if len(parts) == 3 and parts[0] == SCHEME:
            candidate = hmac.new(bytes.fromhex(parts[1]), secret.encode(), "sha256").hexdigest()
        elif len(parts) == 4 and parts[0] == LEGACY_SCHEME:
            candidate = hashlib.pbkdf2_hmac("sha256", secret.encode(), bytes.fromhex(parts[2]), int(parts[1])).hex()
        else:
            return False
    except ValueError:
        return False
    return hmac.compare_digest(candidate, parts[-1])


def is_legacy_hash(stored: str) -> bool:
    return stored.startswith(LEGACY_SCHEME + "$")


def split_key(key: str) -> Optional[tuple[str, str]]:
    """``(key_id, secret)`` of a well-formed key, else None."""
    parts = key.split("_", 2)
    if len(parts) != 3 or parts[0] != PREFIX or len(parts[1]) != KEY_ID_HEX or not parts[2]:
        return None
    return parts[1], parts[2]


class KeyStore:
    """The key table behind a SQLAlchemy URL (created on first use)."""

    def __init__(self, url: str):
        import sqlalchemy as sa

        if url.startswith("sqlite:///"):
            Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        self.url = url
        self.engine = sa.create_engine(url, pool_pre_ping=True)
        meta = sa.MetaData()
        self.table = sa.Table(
            TABLE, meta,
            sa.Column("key_id", sa.String(32), primary_key=True),
            sa.Column("tenant", sa.String(64), nullable=True),
            sa.Column("admin", sa.Boolean, nullable=False, default=False),
            sa.Column("secret_hash", sa.String(256), nullable=False),
            sa.Column("created_at", sa.String(40), nullable=False),
            sa.Column("revoked_at", sa.String(40), nullable=True),
        )
        try:
            meta.create_all(self.engine, checkfirst=True)
        except sa.exc.SQLAlchemyError as exc:
            raise KeyStoreError(f"cannot open the key store at {_redact(url)}: {exc}; check ATTUNE_KEYS_DB_URL") \
                from None

    def create(self, tenant: Optional[str], admin: bool = False) -> dict:
        """A new key; the plaintext is returned here and never stored."""
        if admin == (tenant is not None):
            raise KeyUsageError("a key is either for one tenant (--tenant T) or an admin key (--admin)")
        key_id, secret = secrets.token_hex(KEY_ID_HEX // 2), secrets.token_urlsafe(32)
        with self.engine.begin() as conn:
            conn.execute(self.table.insert().values(key_id=key_id, tenant=tenant, admin=admin,
                                                    secret_hash=hash_secret(secret), created_at=_now()))
        return {"tenant": tenant, "key_id": key_id, "key": f"{PREFIX}_{key_id}_{secret}", "admin": admin}

    def revoke(self, key_id: str) -> dict:
        with self.engine.begin() as conn:
            row = conn.execute(self.table.select().where(self.table.c.key_id == key_id)).mappings().first()
            if row is None:
                raise KeyUsageError(f"no key with id {key_id!r}; see `attune keys list`")
            revoked_at = row["revoked_at"] or _now()
            conn.execute(self.table.update().where(self.table.c.key_id == key_id).values(revoked_at=revoked_at))
        return {"key_id": key_id, "tenant": row["tenant"], "admin": bool(row["admin"]), "revoked_at": revoked_at}

    def delete_tenant(self, tenant: str) -> list[str]:
        """Delete every key of ``tenant``, revoked ones too (erasure); the ids deleted."""
        with self.engine.begin() as conn:
            ids = [row[0] for row in conn.execute(self.table.select().with_only_columns(self.table.c.key_id)
                                                  .where(self.table.c.tenant == tenant))]
            conn.execute(self.table.delete().where(self.table.c.tenant == tenant))
        return ids

    def list(self) -> list[dict]:
        cols = [c for c in self.table.c if c.name != "secret_hash"]
        import sqlalchemy as sa

        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(*cols).order_by(self.table.c.created_at)).mappings().all()
        return [{**row, "admin": bool(row["admin"])} for row in rows]

    def count_active(self) -> int:
        return sum(1 for row in self.list() if row["revoked_at"] is None)

    def row(self, key_id: str) -> Optional[KeyRow]:
        """The stored key ``key_id``, or None; :class:`KeyStoreUnavailableError` when the store cannot be read."""
        import sqlalchemy as sa

        try:
            with self.engine.connect() as conn:
                row = conn.execute(self.table.select().where(self.table.c.key_id == key_id)).mappings().first()
        except sa.exc.SQLAlchemyError as exc:
            logger.error("cannot read the key store at %s: %s", _redact(self.url), exc)
            raise KeyStoreUnavailableError("cannot check the API key: the key store is unavailable; retry after "
                                           "Retry-After seconds") from None
        if row is None:
            return None
        return KeyRow(key_id=key_id, tenant=row["tenant"], admin=bool(row["admin"]),
                      secret_hash=row["secret_hash"], revoked=row["revoked_at"] is not None)

    def rehash(self, row: KeyRow, secret: str) -> KeyRow:
        """Store a legacy (PBKDF2) key's verified secret with the current scheme; the updated row."""
        new_hash = hash_secret(secret)
        with self.engine.begin() as conn:  # only if no one rehashed or revoked it meanwhile
            conn.execute(self.table.update().where((self.table.c.key_id == row.key_id)
                                                   & (self.table.c.secret_hash == row.secret_hash))
                         .values(secret_hash=new_hash))
        return KeyRow(row.key_id, row.tenant, row.admin, new_hash, row.revoked)

    def verify(self, key: str) -> Optional[Principal]:
        """The key's principal when it exists, is not revoked and its secret matches; else None."""
        parts = split_key(key)
        if parts is None:
            return None
        key_id, secret = parts
        row = self.row(key_id)
        return self.check(row, secret)[0] if row is not None else None

    def check(self, row: KeyRow, secret: str) -> tuple[Optional[Principal], KeyRow]:
        """The principal when ``secret`` is ``row``'s (else None), and the row as stored afterwards: a
        legacy (PBKDF2) key whose secret matched is rehashed with the current scheme."""
        principal = row.principal(secret)
        if principal is not None and is_legacy_hash(row.secret_hash):
            row = self.rehash(row, secret)
        return principal, row


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _redact(url: str) -> str:
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        return f"{scheme}://***@{rest.split('@', 1)[1]}"
    return url
