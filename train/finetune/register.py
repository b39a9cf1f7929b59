"""Register a finished fine-tune as the tenant's next version and put it through the registry's gate.

The gate's policy lives in ``registry``; this module gives it the score: macro-F1 on the test
rows of the tenant's *current* data, computed with the same code for the candidate and the
champion. A predicted label the tenant no longer uses counts as wrong.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from cluster import attune_version, code_version
from registry import Lineage, Registry, RunRecord
from train._data import TenantData
from train._metrics import macro_f1
from train.finetune.predict import Predictor

logger = logging.getLogger("attune.train")


def run_record(kind: str, run_name: str, params: dict, metrics: dict, history: list, *, tenant: str,
               base: str, method: str, data_uri: str, dataset: TenantData, figures: Sequence[Path] = ()) -> RunRecord:
    """What MLflow keeps about one training run: params, metrics, per-epoch history, lineage, and the
    ``figures`` (image files, e.g. from ``train._figures.render_figures``) it shows under ``figures/``."""
    numeric = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    lineage = Lineage(kind=kind, tenant=tenant, base=base, method=method, data_uri=data_uri,
                      data_hash=dataset.data_hash, split_counts=dataset.split_counts(), labels=dataset.labels,
                      temperature=float(metrics.get("temperature", 1.0)), calibration=metrics.get("calibration"),
                      temperature_slope=float(metrics.get("temperature_slope", 0.0)),
                      code_version=code_version(), attune_version=attune_version())
    return RunRecord(run_name=run_name, params=params, metrics=numeric,
                     history=[{k: float(v) for k, v in row.items() if isinstance(v, (int, float))}
                              for row in history], lineage=lineage, figures=list(figures))


def register_and_gate(registry: Registry, tenant: str, model_dir: Path, record: RunRecord, dataset: TenantData,
                      *, promote: bool, margin: float, floor: float, parent_run_id: Optional[str] = None) -> dict:
    """Register ``model_dir`` as the tenant's next version (alias challenger), then gate it on test macro-F1."""
    version = registry.register_candidate(tenant, model_dir, record, parent_run_id=parent_run_id)
    texts = [e.text for e in dataset.test]
    truth = [e.label for e in dataset.test]
    decision = registry.gate(tenant, version.version, model_dir,
                             lambda directory: score_model(directory, texts, truth, dataset.labels),
                             margin=margin, floor=floor, promote=promote,
                             evidence=f"{len(texts)} test rows of data {dataset.data_hash[:12]}")
    alias = "champion" if decision["promoted"] else "challenger"
    return {"model_version": version.version, "alias": alias, "promotion": decision}


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
