"""The small-data path's parts: stratified k-fold, out-of-fold predictions, bootstrap intervals, its choice."""
from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from train._bootstrap import bootstrap_ci, macro_f1_rows
from train._kfold import fold_indices, out_of_fold, stratified_folds, uses_cross_validation
from train._metrics import macro_f1
from train._small_data import contrastive_pairs, fit_linear_head
from train.finetune.config import FinetuneConfig
from train.finetune.crossval import cv_metrics, recipe_for, small_data_recipe


def test_folds_are_stratified_and_balanced():
    labels = ["neutral"] * 60 + ["bullish"] * 25 + ["bearish"] * 15
    fold_of = stratified_folds(labels, 5, seed=3)
    assert sorted(Counter(fold_of).values()) == [20] * 5  # sizes differ by at most one (here exactly equal)
    for label, total in Counter(labels).items():
        per_fold = Counter(f for f, lab in zip(fold_of, labels) if lab == label)
        assert set(per_fold) == set(range(5)) and max(per_fold.values()) - min(per_fold.values()) <= 1
        assert sum(per_fold.values()) == total


def test_small_classes_are_spread_over_distinct_folds():
    labels = ["a"] * 12 + ["b"] * 2 + ["c"]  # b has fewer rows than folds, c a single row
    fold_of = stratified_folds(labels, 5, seed=0)
    assert len({fold_of[12], fold_of[13]}) == 2  # b's two rows are held out in different folds
    assert max(Counter(fold_of).values()) - min(Counter(fold_of).values()) <= 1
    assert stratified_folds(labels, 5, seed=0) == fold_of != stratified_folds(labels, 5, seed=1)


def test_every_row_is_predicted_out_of_fold_exactly_once():
    labels = [i % 3 for i in range(23)]
    fold_of = stratified_folds(labels, 4, seed=0)
    seen: list[int] = []

    def fit_predict(train_rows, held_out):
        assert not set(train_rows) & set(held_out)  # the model never saw the rows it predicts
        assert len(train_rows) + len(held_out) == 23
        seen.extend(held_out.tolist())
        return np.tile(np.asarray(held_out, dtype=float)[:, None], (1, 3))  # each row's logits name the row

    logits = out_of_fold(fold_of, 3, fit_predict)
    assert sorted(seen) == list(range(23))
    assert logits[:, 0].tolist() == [float(i) for i in range(23)]
    train_rows, held_out = fold_indices(fold_of, 0)
    assert sorted(train_rows.tolist() + held_out.tolist()) == list(range(23))


def test_folds_refuse_too_few_rows():
    with pytest.raises(ValueError, match="3 rows cannot fill 5 folds"):
        stratified_folds(["a", "b", "a"], 5)
    with pytest.raises(ValueError, match="at least 2 folds"):
        stratified_folds(["a", "b"], 1)


def test_bootstrap_interval_of_a_known_case():
    # 1,000 rows, half right: the accuracy's sampling sd is sqrt(0.25 / 1000) = 0.0158, so the 95% interval
    # is about 0.5 +- 0.031
    y_true = np.zeros(1000, dtype=int)
    y_pred = np.array([0, 1] * 500)
    low, high = bootstrap_ci(y_true, y_pred, 2, metric="accuracy", resamples=2000)
    assert low == pytest.approx(0.469, abs=0.006) and high == pytest.approx(0.531, abs=0.006)
    assert bootstrap_ci(y_true, y_true, 2) == (1.0, 1.0)  # no variation, no width
    small = bootstrap_ci(y_true[:40], y_pred[:40], 2, metric="accuracy")
    assert small[1] - small[0] > 4 * (high - low)  # 40 rows: about 5x wider (sqrt(1000 / 40))


def test_bootstrap_macro_f1_matches_the_metric_and_brackets_it():
    rng = np.random.default_rng(0)
    y_true, y_pred = rng.integers(0, 3, 300), rng.integers(0, 3, 300)
    y_pred[:150] = y_true[:150]
    rows = np.stack([y_true, y_true[::-1]]), np.stack([y_pred, y_pred[::-1]])
    assert macro_f1_rows(*rows, 3).tolist() == pytest.approx([macro_f1(y_true, y_pred, 3)] * 2)
    low, high = bootstrap_ci(y_true, y_pred, 3)
    assert low < macro_f1(y_true, y_pred, 3) < high and high - low < 0.2
    with pytest.raises(ValueError, match="unknown metric 'auc'"):
        bootstrap_ci(y_true, y_pred, 3, metric="auc")


def _config(**values) -> FinetuneConfig:
    return FinetuneConfig(tenant="t", data="d.jsonl", **values)


def test_the_small_data_path_is_chosen_by_the_data_size_with_default_flags():
    assert uses_cross_validation(999, 0.1) and not uses_cross_validation(1000, 0.1)
    assert small_data_recipe(_config(), 999) == "full"
    assert small_data_recipe(_config(), 1000) is None  # 100 test rows: the usual test split
    assert small_data_recipe(_config(split_fractions=(0.6, 0.2, 0.2)), 499) == "full"
    assert small_data_recipe(_config(split_fractions=(0.6, 0.2, 0.2)), 500) is None
    assert small_data_recipe(_config(), 199) == "lp-ft"  # few rows: the probe's head first
    assert [recipe_for(n) for n in (10, 199, 200, 999)] == ["lp-ft", "lp-ft", "full", "full"]


@pytest.mark.parametrize("flags", [dict(epochs=3), dict(lr=5e-5), dict(method="lora"), dict(head_warmup_steps=8),
                                   dict(max_train_rows=64)])
def test_a_flag_that_chooses_the_recipe_keeps_the_usual_path(flags):
    assert small_data_recipe(_config(**flags), 200) is None


def test_a_base_the_classifier_does_not_mean_pool_keeps_the_usual_path(tmp_path):
    (tmp_path / "config.json").write_text('{"model_type": "distilbert"}')
    assert small_data_recipe(_config(base=str(tmp_path)), 200) is None
    assert small_data_recipe(_config(base="minilm"), 200) == "full"


def test_cv_metrics_report_the_out_of_fold_scores_with_intervals():
    from train._calibration import calibrate

    rng = np.random.default_rng(1)
    y = rng.integers(0, 3, 120)
    logits = rng.normal(size=(120, 3))
    logits[np.arange(100), y[:100]] += 3.0  # 100 of 120 rows clearly right
    metrics = cv_metrics(logits, y, ["a", "b", "c"], calibrate(logits, y), folds=5)
    assert metrics["evaluation"] == "cross-validation" and metrics["cv_folds"] == 5 and metrics["cv_rows"] == 120
    assert metrics["cv_macro_f1"] == metrics["test_macro_f1"] == macro_f1(y, logits.argmax(1), 3)
    assert metrics["cv_macro_f1_ci_low"] < metrics["cv_macro_f1"] < metrics["cv_macro_f1_ci_high"]
    assert metrics["cv_accuracy_ci_low"] < metrics["cv_accuracy"] < metrics["cv_accuracy_ci_high"]
    assert metrics["calibration"].startswith(("fitted", "kept T=1"))


def test_contrastive_pairs_pair_same_labels_as_positives():
    labels = [0, 0, 0, 1, 1, 2]
    pairs = contrastive_pairs(labels, pairs_per_row=4, max_pairs=1000, seed=0)
    assert all((labels[i] == labels[j]) == (target == 1.0) and i != j for i, j, target in pairs)
    assert sum(t for *_, t in pairs) == 10 and len(pairs) == 22  # row 5 (label 2) has no positive partner
    assert len(contrastive_pairs(labels, 4, 7, 0)) == 7


def test_linear_head_in_raw_feature_space_separates_separable_data():
    rng = np.random.default_rng(0)
    y = np.repeat([0, 1, 2], 20)
    x = rng.normal(size=(60, 8)) * 0.1 + 50.0  # far from standardised, as mean-pooled states are
    x[np.arange(60), y] += 1.0
    weight, bias = fit_linear_head(x, y, 3)
    assert weight.shape == (3, 8) and bias.shape == (3,)
    assert ((x @ weight.T + bias).argmax(1) == y).all()
