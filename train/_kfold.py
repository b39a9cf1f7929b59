"""Stratified k-fold assignment and the rule that sends a tenant down the small-data path.

A tenant whose test split would hold fewer than :data:`MIN_TEST_ROWS` rows is evaluated by
stratified k-fold cross-validation instead: every row is predicted exactly once by a model that
did not train on it (out-of-fold), so all of the tenant's rows are evidence, not a 10-row split.
"""
from __future__ import annotations

import random
from typing import Sequence

import numpy as np

MIN_TEST_ROWS = 100  # below this many test rows a test split's macro-F1 is noise (issue 29)
NUM_FOLDS = 5


def stratified_folds(labels: Sequence, num_folds: int = NUM_FOLDS, seed: int = 0) -> list[int]:
    """The fold (0 .. num_folds - 1) of each row: each label's rows, shuffled by ``seed``, are dealt to
    the folds in turn, continuing where the previous label stopped, so every fold gets each label's
    share (within one row) and the folds' sizes differ by at most one. A label with fewer rows than
    folds lands in as many folds as it has rows."""
    if num_folds < 2:
        raise ValueError(f"cross-validation needs at least 2 folds, got {num_folds}")
    if len(labels) < num_folds:
        raise ValueError(f"{len(labels)} rows cannot fill {num_folds} folds; add rows or use fewer folds")
    rng = random.Random(seed)
    by_label: dict = {}
    for i, label in enumerate(labels):
        by_label.setdefault(label, []).append(i)
    fold_of = [0] * len(labels)
    turn = 0
    for label in sorted(by_label, key=str):
        rows = by_label[label]
        rng.shuffle(rows)
        for row in rows:
            fold_of[row] = turn % num_folds
            turn += 1
    return fold_of


def fold_indices(fold_of: Sequence[int], fold: int) -> tuple[np.ndarray, np.ndarray]:
    """``(train rows, held-out rows)`` of ``fold``."""
    fold_of = np.asarray(fold_of)
    return np.flatnonzero(fold_of != fold), np.flatnonzero(fold_of == fold)


def out_of_fold(fold_of: Sequence[int], num_classes: int, fit_predict) -> np.ndarray:
    """Out-of-fold logits: ``fit_predict(train_rows, held_out_rows)`` returns the held-out rows' logits
    from a model fitted on the train rows; each row's logits come from the fold that held it out."""
    folds = sorted(set(fold_of))
    logits = np.zeros((len(fold_of), num_classes))
    for fold in folds:
        train_rows, held_out = fold_indices(fold_of, fold)
        logits[held_out] = fit_predict(train_rows, held_out)
    return logits


def uses_cross_validation(num_rows: int, test_fraction: float, min_test_rows: int = MIN_TEST_ROWS) -> bool:
    """Whether a tenant with ``num_rows`` rows takes the small-data path: its test split (``test_fraction``
    of the rows) would hold fewer than ``min_test_rows`` rows."""
    return num_rows * test_fraction < min_test_rows
