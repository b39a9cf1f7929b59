"""Classification metrics and temperature-scaling calibration, in plain NumPy/PyTorch."""
from __future__ import annotations

import math
from typing import Callable, Sequence

import numpy as np

from registry import softmax  # the artifact contract's, which serving and the pyfunc use too

ECE_BINS = 15


def per_class_f1(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> list[float]:
    """F1 of each class; a class absent from both truth and prediction scores 0."""
    scores = []
    for c in range(num_classes):
        tp = int(np.sum((y_pred == c) & (y_true == c)))
        fp = int(np.sum((y_pred == c) & (y_true != c)))
        fn = int(np.sum((y_pred != c) & (y_true == c)))
        denom = 2 * tp + fp + fn
        scores.append(2 * tp / denom if denom else 0.0)
    return scores


def macro_f1(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> float:
    """Mean F1 over the classes present in ``y_true`` (as scikit-learn's labels=present)."""
    present = sorted(set(np.asarray(y_true).tolist()))
    if not present:
        return 0.0
    f1 = per_class_f1(np.asarray(y_true), np.asarray(y_pred), num_classes)
    return float(np.mean([f1[c] for c in present]))


def reliability_bins(probs: np.ndarray, y_true: np.ndarray, num_bins: int = ECE_BINS) -> dict:
    """Per equal-width confidence bin ``(lo, hi]``: rows (``count``), their ``accuracy`` and mean
    ``confidence`` (None for an empty bin), and the ``ece`` they add up to (Guo et al., 2017)."""
    probs = np.asarray(probs, dtype=np.float64)
    y_true = np.asarray(y_true)
    bins: dict = {"edges": np.linspace(0.0, 1.0, num_bins + 1).tolist(), "count": [], "accuracy": [],
                  "confidence": [], "ece": 0.0}
    if len(y_true) == 0:
        bins.update(count=[0] * num_bins, accuracy=[None] * num_bins, confidence=[None] * num_bins)
        return bins
    confidence = probs.max(axis=1)
    correct = (probs.argmax(axis=1) == y_true).astype(np.float64)
    ece = 0.0
    for lo, hi in zip(bins["edges"][:-1], bins["edges"][1:]):
        in_bin = (confidence > lo) & (confidence <= hi)
        count = int(in_bin.sum())
        acc = float(correct[in_bin].mean()) if count else None
        conf = float(confidence[in_bin].mean()) if count else None
        if count:
            ece += in_bin.mean() * abs(acc - conf)
        bins["count"].append(count)
        bins["accuracy"].append(acc)
        bins["confidence"].append(conf)
    bins["ece"] = float(ece)
    return bins


def expected_calibration_error(probs: np.ndarray, y_true: np.ndarray, num_bins: int = ECE_BINS) -> float:
    """ECE with ``num_bins`` equal-width confidence bins (Guo et al., 2017)."""
    return reliability_bins(probs, y_true, num_bins)["ece"]


def nll(logits: np.ndarray, y_true: np.ndarray, temperature: float, temperature_slope: float = 0.0) -> float:
    p = softmax(logits, temperature, temperature_slope)[np.arange(len(y_true)), y_true]
    return float(-np.mean(np.log(np.clip(p, 1e-12, None))))


def golden_section(f: Callable[[float], float], lo: float, hi: float, iterations: int = 60) -> float:
    """The ``x`` in ``[lo, hi]`` that minimises the unimodal ``f``."""
    ratio = (math.sqrt(5) - 1) / 2
    a, b = hi - ratio * (hi - lo), lo + ratio * (hi - lo)
    fa, fb = f(a), f(b)
    for _ in range(iterations):
        if fa < fb:
            hi, b, fb = b, a, fa
            a = hi - ratio * (hi - lo)
            fa = f(a)
        else:
            lo, a, fa = a, b, fb
            b = lo + ratio * (hi - lo)
            fb = f(b)
    return (lo + hi) / 2


LOG_T_RANGE = (math.log(0.05), math.log(20.0))


def fit_temperature(logits: np.ndarray, y_true: np.ndarray, temperature_slope: float = 0.0,
                    iterations: int = 60) -> float:
    """The temperature T > 0 that minimises validation NLL of softmax(logits / T) (each row's T times
    ``exp(temperature_slope * margin)``, as ``registry.softmax``).

    NLL is unimodal in log T, so a golden-section search over log T in
    [log 0.05, log 20] finds it without an optimiser's step-size tuning.
    """
    logits = np.asarray(logits, dtype=np.float64)
    y_true = np.asarray(y_true, dtype=np.int64)
    if len(y_true) == 0:
        return 1.0
    log_t = golden_section(lambda x: nll(logits, y_true, math.exp(x), temperature_slope), *LOG_T_RANGE, iterations)
    return float(math.exp(log_t))


def classification_report(logits: np.ndarray, y_true: Sequence[int], labels: list[str],
                          temperature: float, prefix: str = "test", temperature_slope: float = 0.0) -> dict:
    """Accuracy, macro-F1, per-class F1 and ECE before/after calibration (``temperature`` and
    ``temperature_slope``, as ``registry.softmax`` applies them)."""
    logits = np.asarray(logits, dtype=np.float64)
    y_true = np.asarray(y_true, dtype=np.int64)
    y_pred = logits.argmax(axis=1)
    f1 = per_class_f1(y_true, y_pred, len(labels))
    return {
        f"{prefix}_accuracy": float(np.mean(y_pred == y_true)) if len(y_true) else 0.0,
        f"{prefix}_macro_f1": macro_f1(y_true, y_pred, len(labels)),
        f"{prefix}_per_class_f1": {label: float(f1[i]) for i, label in enumerate(labels)},
        "ece_before": expected_calibration_error(softmax(logits), y_true),
        "ece_after": expected_calibration_error(softmax(logits, temperature, temperature_slope), y_true),
        "temperature": float(temperature),
        "temperature_slope": float(temperature_slope),
    }
