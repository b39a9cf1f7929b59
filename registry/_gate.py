"""The promotion gate: when a new version of a tenant becomes its champion.

The caller supplies ``score``, a function from a model directory to one number (higher is
better), computed the same way for the candidate and for the current champion on the same
evidence, e.g. macro-F1 on the test rows of the tenant's *current* data. The candidate becomes
``champion`` only when its score is at least the champion's minus ``margin``; a tenant's first
version needs ``floor``. A champion whose stored artifacts cannot be downloaded or scored never
silently loses or wins: the candidate stays challenger and the reason says why. Nor does a
candidate whose own stored copy fails its checksum (see ``registry._promote``). The decision and
its reason are recorded on the version.
"""
from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Optional

from registry._errors import ArtifactIntegrityError

if TYPE_CHECKING:
    from registry._registry import Registry

logger = logging.getLogger("attune.registry")

Score = Callable[[Path], float]


def gate(registry: Registry, tenant: str, version: str, candidate_dir: Path, score: Score, *, margin: float,
         floor: float, evidence: str, metric: str = "macro_f1", metric_label: str = "macro-F1") -> dict:
    """Score ``candidate_dir`` (the files of ``version``) and the champion with ``score``; promote or not.

    ``evidence`` says what was scored (``"120 test rows of data 3f2a..."``) and goes into the reason.
    Returns ``{"promoted", "reason", "candidate_<metric>", "champion_<metric>", "champion_version"}``.
    """
    candidate_score = float(score(Path(candidate_dir)))
    champion = registry.champion_or_none(tenant)
    if champion is None:
        promoted = candidate_score >= floor
        reason = (f"first version: test {metric_label} {candidate_score:.4f} {'>=' if promoted else '<'} floor "
                  f"{floor:.4f} on {evidence}")
        return _decide(registry, tenant, version, promoted, reason, metric, candidate_score, None, None)
    try:
        with tempfile.TemporaryDirectory(prefix="attune-gate-") as tmp:
            champion_dir, _ = registry.download(tenant, champion.version, Path(tmp) / "champion")
            champion_score = float(score(champion_dir))
    except Exception as exc:  # noqa: BLE001 - an unusable champion cannot win, but say so loudly
        logger.warning("champion v%s of %s could not be evaluated: %s", champion.version, tenant, exc)
        reason = (f"champion v{champion.version} could not be evaluated ({exc}); candidate kept as challenger; "
                  "promote it by hand if intended")
        return _decide(registry, tenant, version, False, reason, metric, candidate_score, None, champion.version)
    promoted = candidate_score >= champion_score - margin
    reason = (f"candidate v{version} {metric_label} {candidate_score:.4f} {'>=' if promoted else '<'} champion "
              f"v{champion.version} {champion_score:.4f} - margin {margin:.4f} on the same {evidence}")
    return _decide(registry, tenant, version, promoted, reason, metric, candidate_score, champion_score,
                   champion.version)


def skip_gate(registry: Registry, tenant: str, version: str) -> dict:
    """Record that ``version`` was registered without gating (``--no-promote``)."""
    reason = "registered with --no-promote; the gate did not run"
    registry.record_decision(tenant, version, False, reason)
    return {"promoted": False, "reason": reason}


def _decide(registry: Registry, tenant: str, version: str, promoted: bool, reason: str, metric: str,
            candidate_score: float, champion_score: Optional[float], champion_version: Optional[str]) -> dict:
    if promoted:
        try:
            registry.promote(tenant, version, reason=reason)
        except ArtifactIntegrityError as exc:  # its stored copy is damaged: it must not be served
            logger.warning("gate passed %s v%s, but %s", tenant, version, exc)
            promoted, reason = False, f"{reason}; but not promoted: {exc}"
    if not promoted:
        registry.record_decision(tenant, version, False, reason)
    logger.info("promotion gate for %s v%s: %s", tenant, version, reason)
    return {"promoted": promoted, "reason": reason, f"candidate_{metric}": round(candidate_score, 6),
            f"champion_{metric}": None if champion_score is None else round(champion_score, 6),
            "champion_version": champion_version}
