"""Which version serves a tenant: the registry's ``champion`` alias, followed within ``ATTUNE_SERVE_REFRESH_S``."""
from __future__ import annotations

import asyncio
import logging
import time
from typing import Callable, Optional

from serve._errors import RegistryUnavailableError, ServeError, from_registry_error

logger = logging.getLogger("attune.serve")


def registry_unreadable(what: str, exc: BaseException, ttl_s: float) -> RegistryUnavailableError:
    """The 503 for a registry that could not be read: the store's error (which may name its host or
    user) goes to the log, the client gets a generic message and ``Retry-After``."""
    logger.error("cannot read the model registry for %s: %s: %s", what, type(exc).__name__, exc)
    return RegistryUnavailableError("cannot read the model registry right now; retry after Retry-After seconds",
                                    retry_after_s=min(ttl_s, 5.0))


class ChampionCache:
    """Resolve ``tenant -> VersionInfo`` with a TTL; definitive answers (404, 409) are cached too.

    When the registry cannot be read (a transient store error), the last known champion keeps
    serving and the failure is logged, rather than failing requests that were being answered.
    """

    def __init__(self, resolve: Callable[[str], object], ttl_s: float, clock: Callable[[], float] = time.monotonic,
                 max_entries: int = 100_000):
        from cachetools import LRUCache

        self.resolve = resolve
        self.ttl_s = ttl_s
        self.clock = clock
        # bounded: a caller naming made-up tenants (each a cached 404) cannot grow it without end
        self._entries: LRUCache = LRUCache(maxsize=max_entries)

    def fresh(self, tenant: str) -> bool:
        entry = self._entries.get(tenant)
        return entry is not None and entry[0] > self.clock()

    def get(self, tenant: str):
        """The champion's ``VersionInfo``, or the :class:`ServeError` the registry's answer maps to."""
        entry = self._entries.get(tenant)
        if entry is None or entry[0] <= self.clock():
            entry = self._refresh(tenant, entry)
        value = entry[1]
        if isinstance(value, ServeError):
            raise value
        return value

    def _refresh(self, tenant: str, previous):
        try:
            value = self.resolve(tenant)
        except Exception as exc:  # registry errors carry http_status; anything else is transient
            if getattr(exc, "http_status", 500) in (404, 409, 422):
                value = from_registry_error(exc)
            elif previous is not None and not isinstance(previous[1], ServeError):
                logger.warning("registry unreadable for tenant %s (%s); serving version %s a while longer",
                               tenant, exc, getattr(previous[1], "version", "?"))
                value = previous[1]
            else:
                raise registry_unreadable(f"tenant {tenant}", exc, self.ttl_s) from exc
        entry = (self.clock() + self.ttl_s, value)
        self._entries[tenant] = entry
        return entry


class ChampionDirectory:
    """Which version serves each tenant, for a fleet: one registry query for every tenant's champion
    every ``ttl_s`` (in the background; requests never wait for it once it has run once), and each
    version's details fetched once. Looking up thousands of tenants one by one, each every ``ttl_s``,
    would cost the replica more than its models do.

    A tenant the last snapshot does not hold (a new one, or one without a champion, or unknown) is
    resolved on its own through :class:`ChampionCache`, which also caches the 404 and 409 answers.
    When the registry cannot be read, the last snapshot keeps serving and the failure is logged.
    ``on_snapshot(versions)`` runs after each snapshot: the replica drops the models no champion
    needs any more (an erased tenant's within ``ttl_s``).
    """

    def __init__(self, registry, ttl_s: float, clock: Callable[[], float] = time.monotonic,
                 max_versions: int = 100_000, on_snapshot: Optional[Callable[[dict], None]] = None):
        from cachetools import LRUCache

        self.registry, self.ttl_s, self.clock = registry, ttl_s, clock
        self.versions: dict[str, str] = {}
        self.taken_at: Optional[float] = None
        self.infos = LRUCache(maxsize=max_versions)  # (tenant, version) -> VersionInfo; a version never changes
        self.fallback = ChampionCache(registry.champion, ttl_s, clock)
        self._refresh: Optional[asyncio.Future] = None
        self.on_snapshot = on_snapshot  # (tenant -> champion version) -> None, after each snapshot

    async def get(self, tenant: str):
        """The champion's ``VersionInfo``, or the :class:`ServeError` the registry's answer maps to."""
        stale = self.taken_at is None or self.clock() - self.taken_at >= self.ttl_s
        if stale and self._refresh is None:
            self._refresh = asyncio.ensure_future(self._refreshed())
        if self.taken_at is None:  # the first snapshot: wait for it (every other one runs in the background)
            await asyncio.shield(self._refresh)
        version = self.versions.get(tenant)
        if version is None:
            return self.fallback.get(tenant) if self.fallback.fresh(tenant) else \
                await asyncio.to_thread(self.fallback.get, tenant)
        info = self.infos.get((tenant, version))
        if info is None:
            info = await asyncio.to_thread(self.registry.get_version, tenant, version)
            self.infos[(tenant, version)] = info
        return info

    async def _refreshed(self) -> None:
        try:
            self.versions = await asyncio.to_thread(self.registry.champion_versions)
            self.taken_at = self.clock()
            for key in [k for k in self.infos if self.versions.get(k[0]) != k[1]]:
                del self.infos[key]  # an erased tenant's, or a superseded champion's: a re-created
                # tenant's version 1 is not its predecessor's version 1
            if self.on_snapshot is not None:
                self.on_snapshot(self.versions)
        except Exception as exc:  # noqa: BLE001 - the last snapshot serves on
            if self.taken_at is None:
                raise registry_unreadable("the champions", exc, self.ttl_s) from exc
            logger.warning("registry unreadable (%s); serving the champions of %.0fs ago a while longer", exc,
                           self.clock() - self.taken_at)
            self.taken_at = self.clock()
        finally:
            self._refresh = None
