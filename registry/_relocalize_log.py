"""When each tenant was last relocalized, why, and how it ended (``attune relocalize --status``).

One row per relocalization in table ``attune_relocalize`` of the database that holds the API keys
and the feedback (:func:`registry._feedback.database_url`), so the log lives beside the feedback it
consumed, survives the process (a relocalization may run as a job on the cluster) and is erased with
the tenant.
"""
from __future__ import annotations

import datetime as _dt
import logging
from pathlib import Path
from typing import Optional

from registry._feedback import FeedbackStoreError, database_url
from registry._names import check_tenant_id
from registry._store import erase_rows, redact

logger = logging.getLogger("attune.registry")
TABLE = "attune_relocalize"
OUTCOMES = ("running", "promoted", "not promoted", "failed")


class RelocalizeLog:
    """The relocalization log behind a SQLAlchemy URL (created on first use)."""

    def __init__(self, url: str):
        import sqlalchemy as sa

        if url.startswith("sqlite:///"):
            Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        self.url = url
        self.engine = sa.create_engine(url, pool_pre_ping=True)
        meta = sa.MetaData()
        self.table = sa.Table(
            TABLE, meta,
            sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
            sa.Column("tenant", sa.String(64), nullable=False, index=True),
            sa.Column("started_at", sa.String(40), nullable=False),
            sa.Column("finished_at", sa.String(40), nullable=True),
            sa.Column("trigger", sa.Text, nullable=False),
            sa.Column("outcome", sa.String(20), nullable=False),
            sa.Column("version", sa.String(16), nullable=True),
            sa.Column("feedback_rows", sa.Integer, nullable=True),
            sa.Column("message", sa.Text, nullable=True),
        )
        self._guard(lambda: meta.create_all(self.engine, checkfirst=True), "open")

    @classmethod
    def from_settings(cls, settings) -> RelocalizeLog:
        return cls(database_url(settings))

    def start(self, tenant: str, trigger: str) -> int:
        """A new row with outcome ``running``; its id."""
        check_tenant_id(tenant)
        row = {"tenant": tenant, "started_at": now(), "trigger": trigger[:2000], "outcome": "running"}

        def insert() -> int:
            with self.engine.begin() as conn:
                return int(conn.execute(self.table.insert(), row).inserted_primary_key[0])

        return self._guard(insert, "write to")

    def finish(self, row_id: int, outcome: str, *, version: Optional[str] = None,
               feedback_rows: Optional[int] = None, message: str = "") -> None:
        if outcome not in OUTCOMES[1:]:
            raise ValueError(f"outcome must be one of {OUTCOMES[1:]}, got {outcome!r}")
        values = {"finished_at": now(), "outcome": outcome, "version": version, "feedback_rows": feedback_rows,
                  "message": message[:5000]}

        def update() -> None:
            with self.engine.begin() as conn:
                conn.execute(self.table.update().where(self.table.c.id == row_id).values(**values))

        self._guard(update, "write to")

    def runs(self, tenant: str, limit: int = 10) -> list[dict]:
        """The tenant's relocalizations, newest first."""
        import sqlalchemy as sa

        query = (sa.select(self.table).where(self.table.c.tenant == check_tenant_id(tenant))
                 .order_by(self.table.c.started_at.desc(), self.table.c.id.desc()).limit(limit))

        def read() -> list[dict]:
            with self.engine.connect() as conn:
                return [dict(row) for row in conn.execute(query).mappings()]

        return self._guard(read, "read")

    def last_success(self, tenant: str) -> Optional[dict]:
        """The newest relocalization that ended (promoted or not), or None."""
        return next((r for r in self.runs(tenant, limit=50) if r["outcome"] in ("promoted", "not promoted")), None)

    def delete_tenant(self, tenant: str) -> int:
        check_tenant_id(tenant)

        def delete() -> int:
            with self.engine.begin() as conn:
                return conn.execute(self.table.delete().where(self.table.c.tenant == tenant)).rowcount

        return self._guard(delete, "delete from")

    def _guard(self, fn, action: str):
        import sqlalchemy as sa

        try:
            return fn()
        except sa.exc.SQLAlchemyError as exc:
            logger.error("cannot %s the relocalization log at %s: %s", action, redact(self.url), exc)
            raise FeedbackStoreError(f"cannot {action} the relocalization log at {redact(self.url)}: "
                                     f"{str(exc).splitlines()[0][:300]}; check ATTUNE_KEYS_DB_URL or the "
                                     "registry's database") from None


def erase_relocalize_log(tenant: str, settings) -> dict:
    """The ``attune.erasers`` entry for the relocalization log: idempotent; vacuums SQLite."""
    check_tenant_id(tenant)
    url = database_url(settings)

    def delete() -> list[str]:
        count = RelocalizeLog(url).delete_tenant(tenant)
        return [f"{count} relocalization record(s)"] if count else []

    return erase_rows(url, redact(url), delete)


def now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="microseconds")
