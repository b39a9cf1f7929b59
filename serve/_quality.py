"""The champion's live quality on a replica: feedback scored on arrival, the ``live_quality`` of
``GET /v1/tenants/{tenant}``, and the per-tenant gauges (``serve._metrics.QualityMetrics``).

Feedback texts are scored with the model that serves the tenant, in predict's batches, and each row
stores that version's label and top probability (``registry._feedback``). Only the rows the current
champion scored since it became champion count (``registry._quality``), so a promotion or a
rollback starts the measure afresh. A measure is one aggregate query on the feedback store and, once
per tenant and version every ``ttl_s``, one registry read for when the champion became champion.
"""
from __future__ import annotations

import dataclasses
import logging
import threading
import time
from typing import Callable, Optional

from pydantic import BaseModel, ConfigDict, Field

from registry import DriftRule, Feedback, FeedbackStoreError, became_champion_at, champion_since, live_quality
from serve._errors import FeedbackUnavailableError

logger = logging.getLogger("attune.serve")


class DriftVerdict(BaseModel):
    model_config = ConfigDict(extra="forbid")

    flag: bool = Field(description="true when the live accuracy is clearly below test_accuracy - tolerance")
    status: str = Field(description="drift, no_drift, not_enough_rows (n < min_rows) or no_test_accuracy")
    rule: str = Field(description="the test, with its settings")
    n: int
    correct: int
    null_accuracy: Optional[float] = Field(description="test_accuracy - tolerance: the accuracy tested against")
    p_value: Optional[float] = Field(description="P(X <= correct), X ~ Binomial(n, null_accuracy); null when the "
                                                 "test did not run")
    min_rows: int
    alpha: float
    tolerance: float


class LiveQuality(BaseModel):
    """The champion's quality on the feedback it scored since it became champion."""

    model_config = ConfigDict(extra="forbid")

    version: str
    since: Optional[str] = Field(description="when this version last became champion (UTC)")
    rows: int = Field(description="feedback texts this version scored since then")
    correct: int
    accuracy: Optional[float] = Field(description="correct / rows; null without rows")
    ece: Optional[float] = Field(description="expected calibration error over ece_bins equal-width bins of the "
                                             "top probability; null without rows")
    ece_bins: int
    test_accuracy: Optional[float] = Field(description="the version's test_accuracy metric")
    drift: DriftVerdict


def scored_items(items: list[Feedback], version: str, predictions: list[dict]) -> list[Feedback]:
    """``items`` with ``version``'s answer on each text (its label and top probability)."""
    return [dataclasses.replace(item, scored_version=version, scored_label=answer["label"],
                                scored_confidence=max(answer["scores"].values()))
            for item, answer in zip(items, predictions)]


def outcomes(items: list[Feedback], champion: str) -> dict[str, int]:
    """How many items the champion answered right (``correct``), wrong, or did not score (``unscored``)."""
    counts = {"correct": 0, "wrong": 0, "unscored": 0}
    for item in items:
        if item.scored_version != champion:
            counts["unscored"] += 1
        else:
            counts["correct" if item.scored_label == item.label else "wrong"] += 1
    return counts


class QualityWatch:
    """Measures a tenant's live quality on this replica and records it in the gauges."""

    def __init__(self, registry, open_store: Callable[[], object], rule: DriftRule, ttl_s: float, metrics,
                 clock: Callable[[], float] = time.monotonic, max_entries: int = 100_000):
        from cachetools import LRUCache

        self.registry, self.open_store, self.rule, self.ttl_s = registry, open_store, rule, ttl_s
        self.metrics, self.clock = metrics, clock
        self._since = LRUCache(maxsize=max_entries)  # (tenant, version) -> (until, since)
        self._lock = threading.Lock()  # measures run in threads; the LRU is not thread-safe

    def measure(self, tenant: str, info) -> Optional[dict]:
        """The champion ``info``'s live quality (blocking: run it in a thread), or None when the feedback
        store cannot be read (logged by the store)."""
        try:
            quality = live_quality(self.open_store(), tenant, info, self.rule, self.since(tenant, info))
        except (FeedbackStoreError, FeedbackUnavailableError) as exc:
            logger.warning("no live quality for tenant %s: %s", tenant, getattr(exc, "message", exc))
            return None
        self.metrics.measured(tenant, quality)
        return quality

    def since(self, tenant: str, info) -> Optional[str]:
        """When ``info`` became champion, read from the registry at most once per ``ttl_s``; while the
        registry cannot be read, the version's ``attune.promoted_at``."""
        key = (tenant, info.version)
        with self._lock:
            entry = self._since.get(key)
        if entry is not None and entry[0] > self.clock():
            return entry[1]
        try:
            since = champion_since(self.registry, tenant, info)
        except Exception as exc:  # noqa: BLE001 - a registry hiccup: the version's own tag will do meanwhile
            logger.warning("cannot read tenant %s's champion history (%s); measuring since its promoted_at", tenant,
                           exc)
            return became_champion_at({}, info)
        with self._lock:
            self._since[key] = (self.clock() + self.ttl_s, since)
        return since
