"""Bearer-key authentication with a short TTL cache of key rows, so a revoked key stops working within the TTL."""
from __future__ import annotations

import threading
import time
from typing import Callable, Optional

from serve._errors import ForbiddenError, UnauthorizedError
from serve._keys import KeyRow, KeyStore, Principal, is_legacy_hash, split_key

MAX_CACHED = 10_000


class Authenticator:
    """Checks ``Authorization: Bearer <key>`` against the key store.

    The store's row for each key id is cached for ``ttl_s`` (known ids and unknown ids in separate
    caches), and the presented secret is checked against the cached row's hash. So a flood of wrong
    secrets for a known key id costs one hash each and no store query, a flood of made-up key ids
    costs one store query per id and TTL, and neither evicts the valid keys' rows. A revocation is
    seen at the latest ``ttl_s`` later.
    """

    def __init__(self, store: Optional[KeyStore], ttl_s: float, *, insecure_no_auth: bool = False,
                 clock: Callable[[], float] = time.monotonic):
        from cachetools import TTLCache

        self.store = store
        self.ttl_s = ttl_s
        self.insecure_no_auth = insecure_no_auth
        self._rows: TTLCache = TTLCache(maxsize=MAX_CACHED, ttl=ttl_s, timer=clock)
        self._unknown: TTLCache = TTLCache(maxsize=MAX_CACHED, ttl=ttl_s, timer=clock)
        self._lock = threading.Lock()

    def authenticate(self, authorization: Optional[str]) -> Principal:
        """The caller's principal, or :class:`UnauthorizedError` (401)."""
        if self.insecure_no_auth:
            return Principal(key_id="insecure-no-auth", tenant=None, admin=True)
        parts = split_key(_bearer(authorization))
        row = self._row(parts[0]) if parts is not None else None
        principal = None
        if row is not None:  # a row comes only from the store
            principal, checked = self.store.check(row, parts[1])
            if checked is not row:
                with self._lock:
                    self._rows[row.key_id] = checked
        if principal is None:
            raise UnauthorizedError("the API key is invalid or revoked; create one with "
                                    "`attune keys create --tenant T`")
        return principal

    def needs_store(self, authorization: Optional[str]) -> bool:
        """Whether :meth:`authenticate` would query the store or check a slow legacy hash (the caller
        then runs it in a thread)."""
        if self.insecure_no_auth or not authorization:
            return False
        parts = split_key(authorization.partition(" ")[2].strip())
        if parts is None:
            return False
        with self._lock:
            row = self._rows.get(parts[0])
            if row is not None:
                return is_legacy_hash(row.secret_hash)
            return parts[0] not in self._unknown

    def _row(self, key_id: str) -> Optional[KeyRow]:
        with self._lock:
            row = self._rows.get(key_id)
            if row is not None or key_id in self._unknown:
                return row
        row = self.store.row(key_id) if self.store is not None else None
        with self._lock:
            if row is None:
                self._unknown[key_id] = True
            else:
                self._rows[key_id] = row
        return row


def authorize(principal: Principal, tenant: str) -> None:
    """:class:`ForbiddenError` (403) unless the key is the tenant's own or an admin key."""
    if not principal.may_call(tenant):
        raise ForbiddenError(f"this API key (id {principal.key_id}) belongs to another tenant and may not "
                             f"call tenant {tenant!r}")


def _bearer(authorization: Optional[str]) -> str:
    if not authorization:
        raise UnauthorizedError("missing API key; send the header 'Authorization: Bearer <key>'")
    scheme, _, key = authorization.partition(" ")
    if scheme.lower() != "bearer" or not key.strip():
        raise UnauthorizedError("malformed Authorization header; send 'Authorization: Bearer <key>'")
    return key.strip()
