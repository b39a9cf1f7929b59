"""attune's own per-tenant tables beside the API keys (feedback, relocalizations): one engine set-up,
one error translation and one erasure for all of them.

A table lives in the database :func:`registry._feedback.database_url` names: SQLite at
``$ATTUNE_HOME/keys.db`` by default, the registry's PostgreSQL in production.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable

from registry._errors import RegistryUnavailableError
from registry._names import check_tenant_id
from registry._store import erase_rows, redact

logger = logging.getLogger("attune.registry")


class FeedbackStoreError(RegistryUnavailableError):
    """One of these tables cannot be opened, read or written (503 when serving; exit status 1)."""

    code = "feedback_store_unavailable"


class TenantTable:
    """A SQLAlchemy engine on ``url`` for a table with a ``tenant`` column (``self.table``, which a
    subclass defines and creates with :meth:`create`)."""

    what = "table"  # how messages name it

    def __init__(self, url: str):
        import sqlalchemy as sa

        if url.startswith("sqlite:///"):
            Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        self.url = url
        self.engine = sa.create_engine(url, pool_pre_ping=True)
        self.metadata = sa.MetaData()

    def create(self) -> None:
        self._guard(lambda: self.metadata.create_all(self.engine, checkfirst=True), "open")

    def delete_tenant(self, tenant: str) -> int:
        """Delete every row of ``tenant`` (erasure); how many there were."""
        check_tenant_id(tenant)

        def delete() -> int:
            with self.engine.begin() as conn:
                return conn.execute(self.table.delete().where(self.table.c.tenant == tenant)).rowcount

        return self._guard(delete, "delete from")

    def _guard(self, fn: Callable, action: str):
        import sqlalchemy as sa

        try:
            return fn()
        except sa.exc.SQLAlchemyError as exc:
            logger.error("cannot %s the %s at %s: %s", action, self.what, redact(self.url), exc)
            raise FeedbackStoreError(f"cannot {action} the {self.what} at {redact(self.url)}: "
                                     f"{str(exc).splitlines()[0][:300]}; check ATTUNE_KEYS_DB_URL or the "
                                     "registry's database") from None


def erase_tenant_rows(table_class: type[TenantTable], tenant: str, url: str, what: Callable[[int], str]) -> dict:
    """An ``attune.erasers`` entry's work on one of these tables: idempotent; a SQLite file is vacuumed.
    ``what(count)`` names what was removed."""
    check_tenant_id(tenant)

    def delete() -> list[str]:
        count = table_class(url).delete_tenant(tenant)
        return [what(count)] if count else []

    return erase_rows(url, redact(url), delete)
