"""Bearer-key authentication with a short TTL cache, so a revoked key stops working within the TTL."""
from __future__ import annotations

import hashlib
import threading
import time
from collections import OrderedDict
from typing import Callable, Optional

from serve._errors import ForbiddenError, UnauthorizedError
from serve._keys import KeyStore, Principal

MAX_CACHED = 10_000


class Authenticator:
    """Checks ``Authorization: Bearer <key>`` against the key store, caching answers for ``ttl_s``.

    Both valid and invalid keys are cached (by a SHA-256 of the key), so a flood of bad keys costs
    one hash each per TTL, and a revocation is seen at the latest ``ttl_s`` later.
    """

    def __init__(self, store: Optional[KeyStore], ttl_s: float, *, insecure_no_auth: bool = False,
                 clock: Callable[[], float] = time.monotonic):
        self.store = store
        self.ttl_s = ttl_s
        self.insecure_no_auth = insecure_no_auth
        self.clock = clock
        self._cache: OrderedDict[str, tuple[float, Optional[Principal]]] = OrderedDict()
        self._lock = threading.Lock()

    def authenticate(self, authorization: Optional[str]) -> Principal:
        """The caller's principal, or :class:`UnauthorizedError` (401)."""
        if self.insecure_no_auth:
            return Principal(key_id="insecure-no-auth", tenant=None, admin=True)
        key = _bearer(authorization)
        digest = hashlib.sha256(key.encode()).hexdigest()
        now = self.clock()
        hit = self._cache.get(digest)
        if hit is not None and hit[0] > now:
            principal = hit[1]
        else:
            principal = self.store.verify(key) if self.store is not None else None
            with self._lock:
                self._cache[digest] = (now + self.ttl_s, principal)
                self._cache.move_to_end(digest)
                while len(self._cache) > MAX_CACHED:
                    self._cache.popitem(last=False)
        if principal is None:
            raise UnauthorizedError("the API key is invalid or revoked; create one with "
                                    "`attune keys create --tenant T`")
        return principal

    def needs_store(self, authorization: Optional[str]) -> bool:
        """Whether :meth:`authenticate` would query the store (the caller may then run it in a thread)."""
        if self.insecure_no_auth or not authorization:
            return False
        key = authorization.partition(" ")[2].strip()
        hit = self._cache.get(hashlib.sha256(key.encode()).hexdigest())
        return hit is None or hit[0] <= self.clock()


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
