"""Register a finished fine-tune and run the promotion gate.

The gate scores the candidate and the current champion with the same code on the same
test rows of the tenant's *current* data, then moves ``champion`` only when the candidate's
macro-F1 is at least the champion's minus a margin (or, for a tenant's first version, when
it clears a floor). The decision and its reason are recorded on the version.
"""
from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Optional

import numpy as np

from registry import Lineage, Registry, RunRecord, VersionInfo
from train._data import TenantData
from train._export import Predictor, attune_version
from train._metrics import macro_f1

logger = logging.getLogger("attune.train")


def run_record(kind: str, run_name: str, params: dict, metrics: dict, history: list, *, tenant: str,
               base: str, method: str, data_uri: str, dataset: TenantData) -> RunRecord:
    """What MLflow keeps about one training run: params, metrics, per-epoch history, lineage."""
    from registry._store import git_commit

    numeric = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    lineage = Lineage(kind=kind, tenant=tenant, base=base, method=method, data_uri=data_uri,
                      data_hash=dataset.data_hash, split_counts=dataset.split_counts(), labels=dataset.labels,
                      temperature=float(metrics.get("temperature", 1.0)),
                      code_version=git_commit() or f"attune-{attune_version()}", attune_version=attune_version())
    return RunRecord(run_name=run_name, params=params, metrics=numeric,
                     history=[{k: float(v) for k, v in row.items() if isinstance(v, (int, float))}
                              for row in history], lineage=lineage)


def register_and_gate(registry: Registry, tenant: str, model_dir: Path, record: RunRecord, dataset: TenantData,
                      *, promote: bool, margin: float, floor: float, parent_run_id: Optional[str] = None) -> dict:
    """Register ``model_dir`` as the tenant's next version (alias challenger), then gate it."""
    version = registry.register_candidate(tenant, model_dir, record, parent_run_id=parent_run_id)
    if not promote:
        decision = {"promoted": False, "reason": "registered with --no-promote; the gate did not run"}
        registry.record_decision(tenant, version.version, False, decision["reason"])
    else:
        decision = gate(registry, tenant, version, model_dir, dataset, margin=margin, floor=floor)
    alias = "champion" if decision["promoted"] else "challenger"
    return {"model_version": version.version, "alias": alias, "promotion": decision}


def gate(registry: Registry, tenant: str, candidate: VersionInfo, candidate_dir: Path, dataset: TenantData,
         *, margin: float, floor: float) -> dict:
    texts = [e.text for e in dataset.test]
    truth = [e.label for e in dataset.test]
    cand_f1 = score_model(candidate_dir, texts, truth, dataset.labels)
    champion = registry.champion_or_none(tenant)
    rows = f"{len(texts)} test rows of data {dataset.data_hash[:12]}"
    if champion is None:
        promoted = cand_f1 >= floor
        reason = (f"first version: test macro-F1 {cand_f1:.4f} {'>=' if promoted else '<'} floor {floor:.4f} "
                  f"on {rows}")
        champ_f1 = None
    else:
        try:
            with tempfile.TemporaryDirectory(prefix="attune-gate-") as tmp:
                champ_dir, _ = registry.download(tenant, champion.version, Path(tmp) / "champion")
                champ_f1 = score_model(champ_dir, texts, truth, dataset.labels)
        except Exception as exc:  # an unusable champion cannot win, but say so loudly
            logger.warning("champion v%s of %s could not be evaluated: %s", champion.version, tenant, exc)
            return _decide(registry, tenant, candidate, False,
                           f"champion v{champion.version} could not be evaluated ({exc}); candidate kept as "
                           f"challenger; promote it by hand if intended", cand_f1, None, champion.version)
        promoted = cand_f1 >= champ_f1 - margin
        reason = (f"candidate v{candidate.version} macro-F1 {cand_f1:.4f} "
                  f"{'>=' if promoted else '<'} champion v{champion.version} {champ_f1:.4f} - margin {margin:.4f} "
                  f"on the same {rows}")
    return _decide(registry, tenant, candidate, promoted, reason, cand_f1, champ_f1,
                   champion.version if champion else None)


def _decide(registry, tenant, candidate, promoted, reason, cand_f1, champ_f1, champion_version) -> dict:
    if promoted:
        registry.promote(tenant, candidate.version, reason=reason)
    else:
        registry.record_decision(tenant, candidate.version, False, reason)
    logger.info("promotion gate for %s v%s: %s", tenant, candidate.version, reason)
    return {"promoted": promoted, "reason": reason, "candidate_macro_f1": round(cand_f1, 6),
            "champion_macro_f1": None if champ_f1 is None else round(champ_f1, 6),
            "champion_version": champion_version}


def score_model(model_dir: Path, texts: list[str], truth: list[str], labels: list[str]) -> float:
    """Macro-F1 of a model directory on ``texts`` over the tenant's current ``labels``.

    A predicted label the tenant no longer uses counts as wrong.
    """
    predictor = Predictor(model_dir)
    index = {label: i for i, label in enumerate(labels)}
    predicted = [predictor.labels[i] for i in predictor.logits(texts).argmax(axis=1)] if texts else []
    y_pred = np.array([index.get(p, -1) for p in predicted])
    y_true = np.array([index[t] for t in truth])
    return macro_f1(y_true, y_pred, len(labels))
