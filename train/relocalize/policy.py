"""When a tenant is due for relocalization, and ``attune relocalize --auto`` / ``--status``.

A tenant with a champion is due when either holds:

- **new labels**: at least ``ATTUNE_RELOCALIZE_MIN_NEW_LABELS`` (default 20) feedback texts arrived
  after the later of its last relocalization and its champion's promotion;
- **drift** (when ``ATTUNE_RELOCALIZE_ON_DRIFT``, default on): the champion's live accuracy on its
  feedback is flagged as below its test accuracy (``registry``'s drift rule), and some feedback
  arrived since the last relocalization.
"""
from __future__ import annotations

import logging
from typing import Callable, Optional

from cluster import Settings
from registry import Registry, RelocalizeLog, champion_quality, champion_since
from train.relocalize.driver import feedback_since, parse_time, relocalize

logger = logging.getLogger("attune.train")


def status(tenant: str, settings: Settings, registry: Optional[Registry] = None) -> dict:
    """``--status``: the last runs, the new feedback since, and whether (and why) the tenant is due."""
    registry = registry or Registry.from_settings(settings)
    log = RelocalizeLog.from_settings(settings)
    runs = log.runs(tenant, limit=5)
    champion = registry.champion_or_none(tenant)
    if champion is None and not runs:
        registry.versions(tenant)  # TenantNotFoundError names the tenant and what to run
    due, why, new = _due(tenant, settings, champion, log, registry)
    return {"tenant": tenant, "due": due, "why": why, "new_feedback": new,
            "champion_version": champion.version if champion else None,
            "last": runs[0] if runs else None, "runs": runs,
            "policy": {"min_new_labels": settings.relocalize_min_new_labels,
                       "on_drift": settings.relocalize_on_drift}}


def run_due(settings: Settings) -> dict:
    """``--auto``: relocalize each tenant the policy says is due, one after the other; failures are reported
    per tenant and do not stop the others."""
    registry = Registry.from_settings(settings)
    log = RelocalizeLog.from_settings(settings)
    results = []
    for row in registry.list_tenants():
        tenant = row["tenant"]
        champion = registry.champion_or_none(tenant)
        if champion is None:
            continue
        due, why, _ = _due(tenant, settings, champion, log, registry)
        if not due:
            results.append({"tenant": tenant, "action": "skipped", "why": why})
            continue
        try:
            done = relocalize(tenant, settings=settings, trigger=f"policy: {why}")
        except Exception as exc:  # noqa: BLE001 - one tenant's failure is its own; the log has it
            logger.error("relocalizing %s failed: %s", tenant, exc)
            results.append({"tenant": tenant, "action": "failed", "why": why, "error": str(exc)})
            continue
        results.append({"tenant": tenant, "action": "promoted" if done["promotion"]["promoted"] else "not promoted",
                        "why": why, "model_version": done["model_version"]})
    return {"tenants": results}


def _due(tenant: str, settings: Settings, champion, log: RelocalizeLog, registry: Optional[Registry]) -> tuple[
        bool, str, int]:
    if champion is None:
        return False, "no champion to relocalize", 0
    became = champion_since(registry, tenant, champion) if registry else champion.tags.get("attune.promoted_at")
    return due_by_policy(tenant, settings, log, became, lambda: _drift(registry, settings, tenant))


def due_by_policy(tenant: str, settings: Settings, log: RelocalizeLog, became_champion: Optional[str],
                  drift: Callable[[], Optional[str]]) -> tuple[bool, str, int]:
    """``(due, why, new feedback texts)`` for a tenant whose champion became champion at ``became_champion``;
    ``drift()`` is asked only when the new feedback alone does not make it due."""
    last = log.last_success(tenant)
    marks = [t for t in (became_champion, last["started_at"] if last else None) if t]
    cut = max(marks, key=parse_time) if marks else None
    new = [item for item in feedback_since(tenant, settings, None)
           if cut is None or parse_time(item["received_at"]) > parse_time(cut)]
    since = f"since {cut}" if cut else "in all"
    need = settings.relocalize_min_new_labels
    if len(new) >= need:
        return True, f"{len(new)} new feedback texts {since} (policy: {need})", len(new)
    flagged = drift() if settings.relocalize_on_drift and new else None
    if flagged:
        return True, f"drift: {flagged}", len(new)
    return False, (f"{len(new)} new feedback texts {since}, policy needs {need}"
                   + ("" if settings.relocalize_on_drift else "; drift not considered")), len(new)


def _drift(registry: Optional[Registry], settings: Settings, tenant: str) -> Optional[str]:
    """A sentence when the champion's live accuracy is flagged as drift (``registry``'s rule), else None."""
    quality = champion_quality(registry, settings, tenant) if registry else None
    drift = (quality or {}).get("drift") or {}
    if not drift.get("flag"):
        return None
    return (f"accuracy {quality['accuracy']:.3f} on {quality['rows']} feedback texts the champion scored, against "
            f"test accuracy {quality['test_accuracy']:.3f} (p = {drift['p_value']:.2g}; {drift['rule']})")
