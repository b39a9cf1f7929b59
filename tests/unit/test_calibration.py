"""Temperature scaling that never hurts: ``train._calibration.calibrate`` on synthetic logits (no Ray)."""
from __future__ import annotations

import numpy as np
import pytest

from tests.conftest import write_jsonl
from tests.registry_helpers import fake_model_dir, sqlite_registry
from train._calibration import MIN_CALIBRATION_ROWS, calibrate, equal_mass_ece
from train._data import load_tenant_data
from train._metrics import expected_calibration_error, softmax
from train.finetune.register import run_record


def _overconfident(rows: int, scale: float = 3.0, seed: int = 0):
    """Labels drawn from softmax(true logits); the model's logits are ``scale`` times too large."""
    rng = np.random.default_rng(seed)
    true_logits = rng.normal(size=(rows, 3)) * 2.0
    labels = np.array([rng.choice(3, p=p) for p in softmax(true_logits)])
    return true_logits * scale, labels


def _confident_mistakes(rows: int = 300):
    """97% of rows right at confidence 0.971 (calibrated), 3% wrong at confidence ~1: the NLL minimum
    is a large T (it pays for the mistakes) that blurs the right rows and raises ECE."""
    wrong = rows * 3 // 100
    logits = np.array([[3.5, 0.0]] * (rows - wrong) + [[12.0, 0.0]] * wrong)
    labels = np.array([0] * (rows - wrong) + [1] * wrong)
    return logits, labels


def _margin_overconfident(rows: int, temperature: float = 4.0, slope: float = -0.2, seed: int = 0):
    """Logits whose true temperature falls with the margin (an overfit fine-tune's shape: its
    low-margin rows are far more overconfident than its high-margin ones); labels drawn from the truth."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(rows, 3)) * 4.0
    labels = np.array([rng.choice(3, p=p) for p in softmax(logits, temperature, slope)])
    return logits, labels


def test_an_overconfident_model_gets_t_above_1_and_a_lower_ece():
    logits, labels = _overconfident(2000)
    result = calibrate(logits, labels)
    assert result.temperature == pytest.approx(3.0, rel=0.15) and result.temperature == result.fitted_temperature
    assert result.val_ece_at_fitted < result.val_ece_at_t1 / 2
    assert result.val_mass_ece_at_fitted < result.val_mass_ece_at_t1
    assert result.reason.startswith("fitted: validation ECE") and "2000 rows" in result.reason
    fresh_logits, fresh_labels = _overconfident(2000, seed=1)  # and it carries over to unseen rows
    assert expected_calibration_error(softmax(fresh_logits, result.temperature), fresh_labels) < \
        expected_calibration_error(softmax(fresh_logits), fresh_labels)


def test_a_model_overconfident_most_at_small_margins_gets_a_temperature_slope():
    logits, labels = _margin_overconfident(2000)
    result = calibrate(logits, labels)
    assert result.temperature_slope == pytest.approx(-0.2, abs=0.06)
    assert result.temperature == pytest.approx(4, rel=0.25)
    assert result.reason.startswith("fitted with a margin slope: validation ECE") and "2000 rows" in result.reason
    assert result.metrics()["temperature_slope"] == result.temperature_slope
    fresh_logits, fresh_labels = _margin_overconfident(2000, seed=1)  # on unseen rows it beats one temperature
    sloped_probs = softmax(fresh_logits, result.temperature, result.temperature_slope)
    sloped = expected_calibration_error(sloped_probs, fresh_labels)
    assert sloped < expected_calibration_error(softmax(fresh_logits, result.fitted_temperature), fresh_labels) / 1.5


def test_a_slope_is_shipped_only_when_the_rows_need_it():
    for logits, labels in (_overconfident(2000), _confident_mistakes(), _margin_overconfident(2000, slope=-0.01)):
        assert calibrate(logits, labels).temperature_slope == 0.0  # one temperature is enough: no slope
    result = calibrate(*_margin_overconfident(60))  # too few rows to tell a slope from noise
    assert result.temperature_slope == 0.0 and not result.reason.startswith("fitted with a margin slope")
    positive = calibrate(*_margin_overconfident(2000, temperature=0.5, slope=0.3))  # never a rising temperature
    assert positive.temperature_slope == 0.0


def test_the_slope_scales_each_row_by_its_own_margin():
    logits = np.array([[2.0, 0.0, 0.0], [6.0, 1.0, 0.0]])
    sloped = softmax(logits, 1.5, -0.1)
    for row, margin in zip(range(2), (2.0, 5.0)):
        assert sloped[row] == pytest.approx(softmax(logits[row], 1.5 * np.exp(-0.1 * margin)), abs=1e-12)
    assert softmax(logits, 1.5, 0.0) == pytest.approx(softmax(logits, 1.5), abs=0)


def test_a_fitted_t_that_raises_validation_ece_is_not_kept():
    logits, labels = _confident_mistakes()
    result = calibrate(logits, labels)
    assert result.fitted_temperature > 1.5  # what plain NLL fitting would have shipped
    assert result.val_ece_at_fitted > result.val_ece_at_t1
    assert result.temperature == 1.0
    assert result.reason.startswith(f"kept T=1: validation ECE {result.val_ece_at_fitted:.4f} "
                                    f"at T={result.fitted_temperature:.3f} vs {result.val_ece_at_t1:.4f} at T=1")


def test_too_few_validation_rows_keep_t_1_even_when_overconfident():
    logits, labels = _overconfident(MIN_CALIBRATION_ROWS - 1)
    result = calibrate(logits, labels)
    assert result.temperature == result.fitted_temperature == 1.0
    assert result.reason.startswith(f"kept T=1: {MIN_CALIBRATION_ROWS - 1} validation rows, fewer than "
                                    f"{MIN_CALIBRATION_ROWS}")
    at_minimum = calibrate(*_overconfident(MIN_CALIBRATION_ROWS, seed=1))  # from the minimum on, it fits
    assert at_minimum.fitted_temperature > 1.5 and at_minimum.temperature == at_minimum.fitted_temperature
    assert calibrate(np.zeros((0, 3)), np.zeros(0, dtype=int)).temperature == 1.0


def test_metrics_carry_the_temperature_used_and_the_reason():
    result = calibrate(*_confident_mistakes())
    metrics = result.metrics()
    assert metrics["temperature"] == 1.0 and metrics["fitted_temperature"] == result.fitted_temperature
    assert metrics["calibration"] == result.reason and metrics["calibration_val_rows"] == 300
    assert metrics["val_ece_at_t1"] == result.val_ece_at_t1


def test_equal_mass_ece_by_hand():
    # four rows sorted by confidence, two bins: (0.6, 0.7) with 1 of 2 right, (0.8, 0.9) with 2 of 2 right
    probs = np.array([[0.6, 0.4], [0.7, 0.3], [0.8, 0.2], [0.9, 0.1]])
    labels = np.array([0, 1, 0, 0])
    assert equal_mass_ece(probs, labels, num_bins=2) == pytest.approx(0.5 * abs(0.5 - 0.65) + 0.5 * abs(1 - 0.85))
    assert equal_mass_ece(probs[:0], labels[:0]) == 0.0


def test_the_reason_reaches_the_run_and_the_registered_version(tmp_path):
    rows = [{"text": f"headline {i}", "label": "up" if i % 2 else "down"} for i in range(40)]
    dataset = load_tenant_data(str(write_jsonl(tmp_path / "t.jsonl", rows)))
    result = calibrate(*_confident_mistakes())
    metrics = {"test_macro_f1": 0.9, **result.metrics()}
    record = run_record("finetune", "finetune-t", {}, metrics, [], tenant="t", base="minilm", method="full",
                        data_uri=dataset.source, dataset=dataset)
    assert record.tags["attune.calibration"] == result.reason
    assert record.version_tags["attune.calibration"] == result.reason
    assert record.version_tags["attune.temperature"] == "1.0"
    assert record.metrics["fitted_temperature"] == result.fitted_temperature  # numbers as metrics, reason as a tag
    assert "calibration" not in record.metrics
    version = sqlite_registry(tmp_path / "store").register_candidate("t", fake_model_dir(tmp_path / "m"), record)
    assert version.tags["attune.calibration"] == result.reason and version.temperature == 1.0
    assert version.as_dict()["lineage"]["calibration"] == result.reason  # what `attune registry show` prints
    untuned = run_record("finetune", "finetune-t", {}, {"test_macro_f1": 0.9}, [], tenant="t", base="minilm",
                         method="full", data_uri=dataset.source, dataset=dataset)
    assert "attune.calibration" not in untuned.tags  # a record without a calibration step has no tag
    assert "attune.temperature_slope" not in record.version_tags and version.temperature_slope == 0.0

    sloped = calibrate(*_margin_overconfident(2000))  # a slope reaches the version, its tag and its scores' readers
    record = run_record("finetune", "finetune-t", {}, {"test_macro_f1": 0.9, **sloped.metrics()}, [], tenant="t",
                        base="minilm", method="full", data_uri=dataset.source, dataset=dataset)
    version = sqlite_registry(tmp_path / "store").register_candidate("t", fake_model_dir(tmp_path / "m2"), record)
    assert version.temperature_slope == sloped.temperature_slope < 0 and version.temperature == sloped.temperature
    assert version.as_dict()["temperature_slope"] == sloped.temperature_slope


def test_an_imported_export_keeps_the_reason_from_its_manifest(tmp_path):
    from registry._import import _record

    reason = calibrate(*_confident_mistakes()).reason
    manifest = {"base": "minilm", "method": "full", "data_hash": "x", "labels": ["a", "b"], "temperature": 1.0,
                "attune_version": "0", "metrics": {"test_macro_f1": 0.9, "calibration": reason}}
    record = _record("t", tmp_path, manifest)
    assert record.version_tags["attune.calibration"] == reason and "calibration" not in record.metrics
    assert record.lineage.temperature_slope == 0.0  # an export from before slopes has none
    record = _record("t", tmp_path, {**manifest, "temperature": 6.17, "temperature_slope": -0.207})
    assert record.version_tags["attune.temperature_slope"] == "-0.207"
