"""When each tenant was last relocalized, why, and how it ended (``attune relocalize --status``).

One row per relocalization in table ``attune_relocalize`` of the database that holds the API keys
and the feedback (:func:`registry._feedback.database_url`), so the log lives beside the feedback it
consumed, survives the process (a relocalization may run as a job on the cluster) and is erased with
the tenant.
"""
from __future__ import annotations

import datetime as _dt
from typing import Optional

from registry._feedback import database_url
from registry._names import check_tenant_id
from registry._tables import TenantTable, erase_tenant_rows

TABLE = "attune_relocalize"
OUTCOMES = ("running", "promoted", "not promoted", "failed")


class RelocalizeLog(TenantTable):
    """The relocalization log behind a SQLAlchemy URL (created on first use)."""

    what = "relocalization log"

    def __init__(self, url: str):
        import sqlalchemy as sa

        super().__init__(url)
        self.table = sa.Table(
            TABLE, self.metadata,
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
        self.create()

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


def erase_relocalize_log(tenant: str, settings) -> dict:
    """The ``attune.erasers`` entry for the relocalization log: idempotent; vacuums SQLite."""
    return erase_tenant_rows(RelocalizeLog, tenant, database_url(settings),
                             lambda n: f"{n} relocalization record(s)")


def now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="microseconds")
