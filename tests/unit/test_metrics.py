import numpy as np
import pytest

from train._metrics import (
    classification_report,
    expected_calibration_error,
    fit_temperature,
    macro_f1,
    per_class_f1,
    softmax,
)


def test_per_class_and_macro_f1_match_hand_computation():
    y_true = np.array([0, 0, 1, 1, 2, 2])
    y_pred = np.array([0, 1, 1, 1, 2, 0])
    # class 0: tp1 fp1 fn1 -> 0.5 ; class 1: tp2 fp1 fn0 -> 0.8 ; class 2: tp1 fp0 fn1 -> 2/3
    assert per_class_f1(y_true, y_pred, 3) == pytest.approx([0.5, 0.8, 2 / 3])
    assert macro_f1(y_true, y_pred, 3) == pytest.approx((0.5 + 0.8 + 2 / 3) / 3)


def test_macro_f1_averages_only_classes_present_in_truth():
    assert macro_f1(np.array([0, 0]), np.array([0, 0]), 3) == pytest.approx(1.0)


def test_ece_of_perfectly_calibrated_bins_is_zero_and_overconfidence_is_measured():
    probs = np.array([[0.75, 0.25]] * 4)
    assert expected_calibration_error(probs, np.array([0, 0, 0, 1])) == pytest.approx(0.0)
    assert expected_calibration_error(probs, np.array([1, 1, 1, 1])) == pytest.approx(0.75)


def test_fit_temperature_recovers_the_temperature_that_generated_the_labels():
    rng = np.random.default_rng(0)
    true_logits = rng.normal(size=(4000, 3)) * 2.0
    labels = np.array([rng.choice(3, p=p) for p in softmax(true_logits)])
    overconfident = true_logits * 3.0  # a model whose logits are 3x too large
    temperature = fit_temperature(overconfident, labels)
    assert temperature == pytest.approx(3.0, rel=0.1)
    before = expected_calibration_error(softmax(overconfident), labels)
    after = expected_calibration_error(softmax(overconfident, temperature), labels)
    assert after < before / 2


def test_classification_report_keys_and_values():
    logits = np.array([[2.0, 0.0], [0.0, 2.0], [2.0, 0.0]])
    report = classification_report(logits, [0, 1, 1], ["neg", "pos"], temperature=1.0)
    assert report["test_accuracy"] == pytest.approx(2 / 3)
    assert set(report["test_per_class_f1"]) == {"neg", "pos"}
    assert report["temperature"] == 1.0
    assert report["ece_before"] == report["ece_after"]
