"""Bootstrap confidence intervals for classification metrics (percentile method, Efron & Tibshirani, 1993).

The rows are resampled with replacement ``resamples`` times; the interval is the
``(1 - level) / 2`` and ``(1 + level) / 2`` quantiles of the metric over the resamples. Few rows
give a wide interval: that is the point, a 40-row evaluation's macro-F1 is not one number.
"""
from __future__ import annotations

import numpy as np

RESAMPLES = 1000
LEVEL = 0.95


def macro_f1_rows(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> np.ndarray:
    """Macro-F1 of each row of the (resamples, n) arrays, over the classes present in that row's
    truth (as ``train._metrics.macro_f1``)."""
    y_true, y_pred = np.atleast_2d(y_true), np.atleast_2d(y_pred)
    scores = np.zeros(y_true.shape[0])
    present_count = np.zeros(y_true.shape[0])
    for c in range(num_classes):
        truth, pred = y_true == c, y_pred == c
        tp = (truth & pred).sum(1)
        denom = truth.sum(1) + pred.sum(1)
        present = truth.any(1)
        f1 = np.divide(2 * tp, denom, out=np.zeros(len(tp)), where=denom > 0)
        scores += np.where(present, f1, 0.0)
        present_count += present
    return np.divide(scores, present_count, out=np.zeros(len(scores)), where=present_count > 0)


def bootstrap_ci(y_true, y_pred, num_classes: int, *, metric: str = "macro_f1", resamples: int = RESAMPLES,
                 level: float = LEVEL, seed: int = 0) -> tuple[float, float]:
    """The ``level`` percentile-bootstrap interval of ``metric`` ("macro_f1" or "accuracy") over the rows."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    if metric not in ("macro_f1", "accuracy"):
        raise ValueError(f"bootstrap_ci: unknown metric {metric!r}; use 'macro_f1' or 'accuracy'")
    if len(y_true) == 0:
        return 0.0, 0.0
    rows = np.random.default_rng(seed).integers(0, len(y_true), size=(resamples, len(y_true)))
    truth, pred = y_true[rows], y_pred[rows]
    values = (truth == pred).mean(1) if metric == "accuracy" else macro_f1_rows(truth, pred, num_classes)
    low, high = np.quantile(values, [(1 - level) / 2, (1 + level) / 2])
    return float(low), float(high)
