"""A champion that fails to load: the replica answers with the tenant's previous version instead of 503.

Each replica remembers, per tenant, the last version it served (an LRU of ``(version, checksum)``).
When the champion's model cannot be acquired because its load failed, backs off or timed out
(:class:`ModelUnavailableError`), the request is served by that version, and the answer says so in
``x-attune-fallback``. A replica that never served the tenant (new, or restarted) takes the version
before the champion in the registry's champion history, so every replica of a fleet falls back
alike. Without an earlier version, or when it fails to load too, the champion's 503 stands.

The fallback version's details are read from the registry (one read per tenant per ``ttl_s``, on the
failure path only): a version that is gone, or whose checksum is not the one this replica served (an
erased tenant id given to a new customer), is never used. ``keep(champions)`` tells the model
cache which versions to keep besides the champions until the new champion has served once.
"""
from __future__ import annotations

import asyncio
import logging
import re
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable, Optional

from serve._errors import ModelUnavailableError

logger = logging.getLogger("attune.serve")
CHECKSUM_TAG = "attune.checksum"
MAX_REASON_CHARS = 120
_REASON = re.compile(r"^model \S+ failed to load \(.*?\): (.*?)(; next attempt in [\d.]+s)?$", re.S)


@dataclass
class Served:
    """The model a request runs on, the ``VersionInfo`` it belongs to, and the fallback note (or None)."""

    model: object
    info: object
    note: Optional[str] = None


def short_reason(exc: ModelUnavailableError) -> str:
    """The cause of a failed load, without the model key and back-off wording, as printable ASCII."""
    match = _REASON.match(exc.message)
    reason = (match.group(1) if match else exc.message).strip()
    reason = "".join(c if " " <= c <= "~" else "?" for c in reason)
    return reason if len(reason) <= MAX_REASON_CHARS else reason[:MAX_REASON_CHARS - 3] + "..."


def fallback_note(champion: str, served: str, exc: ModelUnavailableError) -> str:
    """The ``x-attune-fallback`` header: which champion failed, why, and which version answered."""
    return f"champion v{champion} failed to load ({short_reason(exc)}); served v{served}"


class LastGood:
    """Acquires a tenant's champion model, or its previous version when the champion fails to load."""

    def __init__(self, models, registry, ttl_s: float, max_tenants: int = 100_000,
                 clock: Callable[[], float] = time.monotonic):
        from cachetools import LRUCache

        self.models, self.registry, self.ttl_s, self.clock = models, registry, ttl_s, clock
        self.max_tenants = max_tenants
        self.served: OrderedDict[str, tuple] = OrderedDict()  # tenant -> (version, checksum) last served here
        self._decided = LRUCache(maxsize=max_tenants)  # tenant -> (champion key, until, VersionInfo or None)
        self._deciding: dict[tuple, asyncio.Future] = {}
        self._logged_until = LRUCache(maxsize=max_tenants)  # (tenant, champion, what) -> when to log it again

    async def acquire(self, tenant: str, info) -> Served:
        """The pinned model of the champion ``info``, or of the previous version (see the module doc);
        release it with ``models.release``. Raises the champion's error when there is no fallback."""
        try:
            return Served(await self.models.acquire(tenant, info.version, _checksum(info)), info)
        except ModelUnavailableError as exc:
            previous = await self._previous(tenant, info)
            if previous is None:
                raise
            try:
                model = await self.models.acquire(tenant, previous.version, _checksum(previous))
            except ModelUnavailableError as second:
                self._warn_once((tenant, info.version, "both"), second.retry_after_s,
                                "tenant %s: champion v%s failed to load and v%s failed too (%s)", tenant,
                                info.version, previous.version, second.message)
                raise exc from None
            self._warn_once((tenant, info.version, "fallback"), exc.retry_after_s,
                            "tenant %s: champion v%s failed to load (%s); serving v%s until it loads", tenant,
                            info.version, exc.message, previous.version)
            return Served(model, previous, fallback_note(info.version, previous.version, exc))

    def succeeded(self, tenant: str, info) -> None:
        """Record that ``info``'s version answered a request on this replica."""
        self.served[tenant] = (info.version, _checksum(info))
        self.served.move_to_end(tenant)
        if len(self.served) > self.max_tenants:
            self.served.popitem(last=False)  # the tenant served least recently

    def keep(self, champions: dict[str, str]) -> dict[str, str]:
        """tenant -> the version to keep besides its champion in ``champions``: the last one served, until
        the champion itself has served. Forgets the tenants that have no champion any more."""
        for tenant in [t for t in self.served if t not in champions]:
            del self.served[tenant]
        return {tenant: version for tenant, (version, _) in self.served.items() if champions[tenant] != version}

    async def _previous(self, tenant: str, champion) -> Optional[object]:
        """The ``VersionInfo`` to serve instead of ``champion`` (None: no fallback), decided once per ttl."""
        key = (tenant, champion.version, _checksum(champion))
        decided = self._decided.get(tenant)
        if decided is not None and decided[0] == key and decided[1] > self.clock():
            return decided[2]
        future = self._deciding.get(key)
        if future is None:  # one registry read however many requests fail at once
            future = asyncio.ensure_future(asyncio.to_thread(self._decide, tenant, champion.version,
                                                             self.served.get(tenant)))
            self._deciding[key] = future
            future.add_done_callback(lambda _f: self._deciding.pop(key, None))
        previous = await asyncio.shield(future)
        self._decided[tenant] = (key, self.clock() + self.ttl_s, previous)
        return previous

    def _decide(self, tenant: str, champion: str, remembered: Optional[tuple]) -> Optional[object]:
        """Runs in a worker thread: the registry's details of the version to fall back to, or None."""
        try:
            if remembered is not None and remembered[0] != champion:
                info = self.registry.get_version(tenant, remembered[0])
                if _checksum(info) == remembered[1]:
                    return info
                logger.warning("tenant %s: v%s is not the model this replica served (checksum changed); no "
                               "fallback", tenant, remembered[0])
                return None
            earlier = _before(self.registry.show(tenant)["champion_history"], champion)
            return self.registry.get_version(tenant, earlier) if earlier else None
        except Exception as exc:  # noqa: BLE001 - no fallback; the champion's 503 stands
            logger.warning("tenant %s: cannot read the previous champion from the registry (%s: %s); no "
                           "fallback", tenant, type(exc).__name__, exc)
            return None

    def _warn_once(self, key: tuple, wait_s: Optional[float], message: str, *args) -> None:
        """Log once per back-off window (``wait_s``, the error's Retry-After), not once per request."""
        now = self.clock()
        if self._logged_until.get(key, 0.0) > now:
            return
        self._logged_until[key] = now + max(1.0, wait_s or 0.0)
        logger.warning(message, *args)


def _before(history: list[str], champion: str) -> Optional[str]:
    """The champion before ``champion`` in the registry's history (oldest first); a promotion that never
    took effect may sit above the champion, so only what precedes its last entry counts."""
    if champion in history:
        history = history[:len(history) - 1 - history[::-1].index(champion)]
    earlier = [v for v in history if v != champion]
    return earlier[-1] if earlier else None


def _checksum(info) -> Optional[str]:
    return info.tags.get(CHECKSUM_TAG)
