"""A champion's live quality: its accuracy and ECE on the feedback it scored since it became champion,
and a drift flag when that accuracy falls clearly below its test accuracy.

When feedback arrives, the serving replica scores each text with the tenant's champion and stores the
champion's label and top probability with the row (``registry._feedback``). Only rows scored by the
current champion, after the time it last became champion (its newest promotion to it, or rollback to
it, in the ``attune.champion_event.*`` log), count: rows its predecessors scored, or that it scored in
an earlier reign, do not.

The drift rule, a one-sided exact binomial test: with ``n`` such rows of which ``k`` are correct, the
version's ``test_accuracy`` ``a`` and the tolerance ``t`` (``ATTUNE_DRIFT_TOLERANCE_FRACTION``),

    p_value = P(X <= k),  X ~ Binomial(n, a - t)

is the chance of ``k`` or fewer correct answers if the champion were still at least ``a - t`` accurate.
Drift when ``n >= ATTUNE_DRIFT_MIN_ROWS`` and ``p_value < ATTUNE_DRIFT_ALPHA``: a false alarm has
probability at most ``alpha`` for a champion that holds ``a - t``.
"""
from __future__ import annotations

import datetime as _dt
import json
import logging
import math
from pathlib import Path
from typing import Optional

from pydantic import BaseModel, ConfigDict, Field

from registry._feedback import ECE_BINS
from registry._names import TAG_PROMOTED_AT

logger = logging.getLogger("attune.registry")
EVENT_PREFIX = "attune.champion_event."  # registry._promote's champion history log
STATUSES = ("drift", "no_drift", "not_enough_rows", "no_test_accuracy")


class DriftRule(BaseModel):
    """The drift test's settings (``ATTUNE_DRIFT_*``); serving carries it in its ``AppSpec``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    min_rows: int = Field(default=30, ge=1, description="ATTUNE_DRIFT_MIN_ROWS: rows before the test runs")
    alpha: float = Field(default=0.01, gt=0, lt=0.5, description="ATTUNE_DRIFT_ALPHA: the test's level")
    tolerance: float = Field(default=0.05, ge=0, lt=1, description="ATTUNE_DRIFT_TOLERANCE_FRACTION: accuracy "
                                                                   "the champion may lose against its test accuracy")

    @classmethod
    def from_settings(cls, settings) -> DriftRule:
        return cls(min_rows=settings.drift_min_rows, alpha=settings.drift_alpha,
                   tolerance=settings.drift_tolerance_fraction)

    def describe(self) -> str:
        return (f"one-sided exact binomial test: drift when n >= {self.min_rows} and P(X <= correct) < {self.alpha:g} "
                f"for X ~ Binomial(n, test_accuracy - {self.tolerance:g})")


def binomial_lower_tail(k: int, n: int, p: float) -> float:
    """``P(X <= k)`` for ``X ~ Binomial(n, p)``, summed exactly from the tail's far end inwards (in
    floating point; terms below 1e-17 of the sum are dropped), so it stays accurate when tiny."""
    if k < 0:
        return 0.0
    if k >= n or p <= 0.0:
        return 1.0
    if p >= 1.0:
        return 0.0
    if k < int((n + 1) * p):  # below the mode: the terms shrink as i goes down from k
        return min(1.0, _tail(k, n, p, -1))
    return max(0.0, 1.0 - _tail(k + 1, n, p, +1))  # at or above it: 1 - P(X > k), whose terms shrink upwards


def _tail(start: int, n: int, p: float, step: int) -> float:
    log_pmf = (math.lgamma(n + 1) - math.lgamma(start + 1) - math.lgamma(n - start + 1)
               + start * math.log(p) + (n - start) * math.log1p(-p))
    term, total, i = math.exp(log_pmf), 0.0, start
    while 0 <= i <= n and term > 0.0:
        total += term
        if term < total * 1e-17:
            break
        term *= i * (1 - p) / ((n - i + 1) * p) if step < 0 else (n - i) * p / ((i + 1) * (1 - p))
        i += step
    return total


def drift_test(correct: int, rows: int, test_accuracy: Optional[float], rule: DriftRule) -> dict:
    """The drift verdict: ``flag``, ``status`` (one of ``STATUSES``), the rule, ``n``, ``correct``,
    ``null_accuracy`` (test accuracy minus tolerance) and ``p_value`` (None when the test did not run)."""
    verdict = {"flag": False, "rule": rule.describe(), "n": rows, "correct": correct, "null_accuracy": None,
               "p_value": None, "min_rows": rule.min_rows, "alpha": rule.alpha, "tolerance": rule.tolerance}
    if test_accuracy is None:
        return {**verdict, "status": "no_test_accuracy"}
    null = max(0.0, test_accuracy - rule.tolerance)
    verdict["null_accuracy"] = null
    if rows < rule.min_rows:
        return {**verdict, "status": "not_enough_rows"}
    p_value = binomial_lower_tail(correct, rows, null)
    flag = p_value < rule.alpha
    return {**verdict, "flag": flag, "status": "drift" if flag else "no_drift", "p_value": p_value}


def expected_calibration_error(bins: list[dict]) -> Optional[float]:
    """ECE over the store's confidence bins (each ``rows``, ``correct``, ``confidence`` summed):
    sum over bins of |correct - confidence| / all rows; None without rows."""
    rows = sum(b["rows"] for b in bins)
    return sum(abs(b["correct"] - b["confidence"]) for b in bins) / rows if rows else None


def assess(bins: list[dict], version: str, since: Optional[str], test_accuracy: Optional[float],
           rule: DriftRule) -> dict:
    """The live quality of ``version`` from its confidence bins (``FeedbackStore.tally``)."""
    rows = sum(b["rows"] for b in bins)
    correct = sum(b["correct"] for b in bins)
    return {"version": version, "since": since, "rows": rows, "correct": correct,
            "accuracy": correct / rows if rows else None, "ece": expected_calibration_error(bins),
            "ece_bins": ECE_BINS, "test_accuracy": test_accuracy,
            "drift": drift_test(correct, rows, test_accuracy, rule)}


def champion_since(registry, tenant: str, info) -> Optional[str]:
    """When ``tenant``'s version ``info`` last became champion (one registry read; see :func:`became_champion_at`)."""
    return became_champion_at(registry._model(tenant).tags or {}, info)


def became_champion_at(model_tags: dict, info) -> Optional[str]:
    """When version ``info`` last became champion: the newest champion event that made it so (a
    promotion to it or a rollback to it), else its ``attune.promoted_at`` tag, else None. ISO 8601 in
    UTC with microseconds, like the feedback rows' ``scored_at``."""
    newest = None
    for key in sorted(k for k in model_tags if k.startswith(EVENT_PREFIX)):
        try:
            event = json.loads(model_tags[key])
        except ValueError:
            continue
        if (event.get("op"), event.get("version", event.get("to"))) in (("promote", info.version),
                                                                        ("rollback", info.version)):
            newest = (key, event)
    if newest is not None:
        return _event_time(*newest)
    return _utc(info.tags.get(TAG_PROMOTED_AT))


def _event_time(key: str, event: dict) -> Optional[str]:
    """An event's time: its key's nanoseconds (``<time_ns>-<random>``), else its ``at``."""
    stamp = key[len(EVENT_PREFIX):].split("-", 1)[0]
    if stamp.isdigit() and int(stamp) > 0:
        return _dt.datetime.fromtimestamp(int(stamp) / 1e9, _dt.timezone.utc).isoformat(timespec="microseconds")
    return _utc(event.get("at"))


def _utc(value: Optional[str]) -> Optional[str]:
    if not value:
        return None
    try:
        moment = _dt.datetime.fromisoformat(value)
    except ValueError:
        logger.warning("ignoring the unreadable promotion time %r", value)
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=_dt.timezone.utc)
    return moment.astimezone(_dt.timezone.utc).isoformat(timespec="microseconds")


def live_quality(store, tenant: str, info, rule: DriftRule, since: Optional[str]) -> dict:
    """The live quality of ``tenant``'s champion ``info`` on the rows of ``store`` (a ``FeedbackStore``)
    that it scored at or after ``since`` (:func:`champion_since`)."""
    bins = store.tally(tenant, info.version, since)
    return assess(bins, info.version, since, info.metrics.get("test_accuracy"), rule)


def champion_quality(registry, settings, tenant: str) -> Optional[dict]:
    """The live quality of ``tenant``'s champion, for ``attune registry show`` (None without a champion).
    A feedback store that was never created means no feedback: it is not created here."""
    from registry._feedback import FeedbackStore, database_url

    info = registry.champion_or_none(tenant)
    if info is None:
        return None
    url = database_url(settings)
    rule = DriftRule.from_settings(settings)
    since = champion_since(registry, tenant, info)
    if url.startswith("sqlite:///") and not Path(url.removeprefix("sqlite:///")).exists():
        return assess([], info.version, since, info.metrics.get("test_accuracy"), rule)
    return live_quality(FeedbackStore(url), tenant, info, rule, since)
