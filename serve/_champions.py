"""Which version serves a tenant: the registry's ``champion`` alias, cached for ``ATTUNE_SERVE_REFRESH_S``."""
from __future__ import annotations

import logging
import time
from typing import Callable

from serve._errors import ServeError, from_registry_error

logger = logging.getLogger("attune.serve")


class ChampionCache:
    """Resolve ``tenant -> VersionInfo`` with a TTL; definitive answers (404, 409) are cached too.

    When the registry cannot be read (a transient store error), the last known champion keeps
    serving and the failure is logged, rather than failing requests that were being answered.
    """

    def __init__(self, resolve: Callable[[str], object], ttl_s: float, clock: Callable[[], float] = time.monotonic):
        self.resolve = resolve
        self.ttl_s = ttl_s
        self.clock = clock
        self._entries: dict[str, tuple[float, object]] = {}

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
                raise ServeError(f"cannot read the model registry: {exc}") from exc
        entry = (self.clock() + self.ttl_s, value)
        self._entries[tenant] = entry
        return entry
