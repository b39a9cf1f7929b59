"""Labelled feedback on a tenant's predictions, stored for relocalization (``POST .../feedback``).

Serving writes it, training reads it; both reach it here, below them. One row per (tenant, text):
the text's SHA-256 is the key, so sending a text again replaces its label (the newest label wins).
Rows live in table ``attune_feedback`` of the database that holds the API keys
(:func:`database_url`): SQLite at ``$ATTUNE_HOME/keys.db`` by default, the registry's PostgreSQL
when the registry is on PostgreSQL, ``ATTUNE_KEYS_DB_URL`` when set.

A prediction id reads ``<version>.<16 hex digits>``: the version that answered, then random bits.
It is not signed; feedback that names one records that version as the client's claim.

Each row also records how the tenant's champion answered its text when the feedback arrived
(``scored_version``, ``scored_label``, ``scored_confidence``: the top calibrated probability,
``scored_at``), which the live quality (``registry._quality``) is measured on. A table created
before these columns existed gets them, empty, when the store opens.
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import re
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional

from registry._names import check_tenant_id
from registry._tables import FeedbackStoreError, TenantTable, erase_tenant_rows  # noqa: F401 - its error, re-exported

TABLE = "attune_feedback"
PREDICTION_ID_PATTERN = r"^[1-9][0-9]{0,9}\.[0-9a-f]{16}$"
_PREDICTION_ID = re.compile(PREDICTION_ID_PATTERN)
UPSERT_DIALECTS = ("sqlite", "postgresql")  # INSERT ... ON CONFLICT DO UPDATE; others delete, then insert
ECE_BINS = 15  # equal-width confidence bins of the live ECE, as training's ECE (train._metrics.ECE_BINS)
SCORE_COLUMNS = ("scored_version", "scored_label", "scored_confidence", "scored_at")


@dataclass(frozen=True)
class Feedback:
    """One labelled text; ``version`` is the version that answered ``prediction_id`` (None without one).
    ``scored_*``: the label and top probability that version ``scored_version`` gave the text on arrival."""

    text: str
    label: str
    prediction_id: Optional[str] = None
    scored_version: Optional[str] = None
    scored_label: Optional[str] = None
    scored_confidence: Optional[float] = None

    @property
    def text_sha256(self) -> str:
        return text_sha256(self.text)

    @property
    def version(self) -> Optional[str]:
        return prediction_version(self.prediction_id) if self.prediction_id else None


def database_url(settings) -> str:
    """attune's own tables (API keys, feedback): ``ATTUNE_KEYS_DB_URL``, else the registry's PostgreSQL,
    else SQLite at ``$ATTUNE_HOME/keys.db``."""
    explicit = getattr(settings, "keys_db_url", None)
    if explicit:
        return explicit
    for uri in (settings.mlflow_tracking_uri, settings.mlflow_backend_store_uri):
        if uri and uri.startswith("postgresql"):
            return uri
    return f"sqlite:///{(Path(settings.home) / 'keys.db').resolve()}"


def new_prediction_id(version: str) -> str:
    """A fresh id for a prediction that ``version`` answered."""
    return f"{version}.{secrets.token_hex(8)}"


def prediction_version(prediction_id: str) -> str:
    """The version inside a prediction id; ValueError naming the format when it is not one."""
    if not isinstance(prediction_id, str) or not _PREDICTION_ID.fullmatch(prediction_id):
        raise ValueError(f"{str(prediction_id)[:60]!r} is not a prediction id (<version>.<16 hex digits>, as "
                         "predict answers it)")
    return prediction_id.split(".", 1)[0]


def text_sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def newest_per_text(items: Iterable[Feedback]) -> list[Feedback]:
    """One item per distinct text, in first-seen order, each with its last label (the newest wins)."""
    latest: dict[str, Feedback] = {}
    for item in items:
        latest[item.text_sha256] = item
    return list(latest.values())


class FeedbackStore(TenantTable):
    """The feedback table behind a SQLAlchemy URL (created on first use)."""

    what = "feedback store"

    def __init__(self, url: str):
        import sqlalchemy as sa

        super().__init__(url)
        self.table = sa.Table(
            TABLE, self.metadata,
            sa.Column("tenant", sa.String(64), primary_key=True),
            sa.Column("text_sha256", sa.String(64), primary_key=True),
            sa.Column("text", sa.Text, nullable=False),
            sa.Column("label", sa.Text, nullable=False),
            sa.Column("prediction_id", sa.String(40), nullable=True),
            sa.Column("version", sa.String(16), nullable=True),
            sa.Column("received_at", sa.String(40), nullable=False),
            sa.Column("scored_version", sa.String(16), nullable=True),
            sa.Column("scored_label", sa.Text, nullable=True),
            sa.Column("scored_confidence", sa.Float, nullable=True),
            sa.Column("scored_at", sa.String(40), nullable=True),
        )
        self.create()
        self._guard(self._add_score_columns, "upgrade")

    def _add_score_columns(self) -> None:
        """Add the ``scored_*`` columns to a table made before them (nullable, so old rows are unscored);
        a replica racing this one to it is fine."""
        import sqlalchemy as sa

        for attempt in range(2):
            present = {c["name"] for c in sa.inspect(self.engine).get_columns(TABLE)}
            missing = [name for name in SCORE_COLUMNS if name not in present]
            if not missing:
                return
            try:
                with self.engine.begin() as conn:
                    for name in missing:
                        kind = self.table.c[name].type.compile(dialect=self.engine.dialect)
                        conn.execute(sa.text(f"ALTER TABLE {TABLE} ADD COLUMN {name} {kind}"))
                return
            except sa.exc.SQLAlchemyError:
                if attempt:
                    raise

    def record(self, tenant: str, items: Iterable[Feedback]) -> list[dict]:
        """Store each item, replacing an earlier label of the same text; the rows stored, without texts."""
        check_tenant_id(tenant)
        now = _now()
        rows = [{"tenant": tenant, "text_sha256": item.text_sha256, "text": item.text, "label": item.label,
                 "prediction_id": item.prediction_id, "version": item.version, "received_at": now,
                 "scored_version": item.scored_version, "scored_label": item.scored_label,
                 "scored_confidence": item.scored_confidence, "scored_at": now if item.scored_version else None}
                for item in newest_per_text(items)]
        if rows:
            self._guard(lambda: self._upsert(rows), "write to")
        return [{key: row[key] for key in ("text_sha256", "label", "prediction_id", "version")} for row in rows]

    def _upsert(self, rows: list[dict]) -> None:
        import importlib

        dialect = self.engine.dialect.name
        with self.engine.begin() as conn:
            if dialect in UPSERT_DIALECTS:
                insert = importlib.import_module(f"sqlalchemy.dialects.{dialect}").insert(self.table)
                replaced = {c: insert.excluded[c] for c in ("text", "label", "prediction_id", "version",
                                                            "received_at", *SCORE_COLUMNS)}
                conn.execute(insert.on_conflict_do_update(index_elements=["tenant", "text_sha256"], set_=replaced),
                             rows)
                return
            for row in rows:
                conn.execute(self.table.delete().where((self.table.c.tenant == row["tenant"])
                                                       & (self.table.c.text_sha256 == row["text_sha256"])))
            conn.execute(self.table.insert(), rows)

    def items(self, tenant: str) -> list[dict]:
        """The tenant's feedback, oldest first: text, label, prediction_id, version, received_at."""
        import sqlalchemy as sa

        table = self.table
        query = (sa.select(table.c.text, table.c.label, table.c.prediction_id, table.c.version, table.c.received_at)
                 .where(table.c.tenant == check_tenant_id(tenant)).order_by(table.c.received_at, table.c.text_sha256))

        def read():
            with self.engine.connect() as conn:
                return [dict(row) for row in conn.execute(query).mappings()]

        return self._guard(read, "read")

    def tally(self, tenant: str, version: str, since: Optional[str] = None) -> list[dict]:
        """The rows that ``version`` scored (at or after ``since``, an ISO time in UTC), grouped into
        ``ECE_BINS`` equal-width bins of its confidence: per non-empty bin ``bin``, ``rows``, ``correct``
        (its label is the row's label) and ``confidence`` (summed). One aggregate query."""
        import sqlalchemy as sa

        table = self.table
        confidence = table.c.scored_confidence
        # literal edges, so that the SELECT and GROUP BY expressions are the same SQL text (PostgreSQL)
        edges = [(confidence < sa.literal_column(repr((i + 1) / ECE_BINS)), sa.literal_column(str(i)))
                 for i in range(ECE_BINS - 1)]
        bin_ = sa.case(*edges, else_=sa.literal_column(str(ECE_BINS - 1)))
        correct = sa.case((table.c.scored_label == table.c.label, sa.literal_column("1")),
                          else_=sa.literal_column("0"))
        where = [table.c.tenant == check_tenant_id(tenant), table.c.scored_version == str(version),
                 confidence.is_not(None)]
        if since is not None:
            where.append(table.c.scored_at >= since)
        query = (sa.select(bin_.label("bin"), sa.func.count().label("rows"), sa.func.sum(correct).label("correct"),
                           sa.func.sum(confidence).label("confidence"))
                 .where(*where).group_by(bin_).order_by(bin_))

        def read():
            with self.engine.connect() as conn:
                return [{"bin": int(row["bin"]), "rows": int(row["rows"]), "correct": int(row["correct"]),
                         "confidence": float(row["confidence"])} for row in conn.execute(query).mappings()]

        return self._guard(read, "read")


def erase_feedback(tenant: str, settings) -> dict:
    """The ``attune.erasers`` entry for feedback (see ``cluster._erasure``): idempotent; vacuums SQLite."""
    return erase_tenant_rows(FeedbackStore, tenant, database_url(settings), lambda n: f"feedback on {n} text(s)")


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="microseconds")
