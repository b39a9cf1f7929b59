"""The pictures a run logs: a fine-tune's reliability diagram and confusion matrix (``train._figures``),
a search's validation curves with ASHA's rungs (``tune._figures``), and how the registry stores them."""
from __future__ import annotations

import logging
import math
import struct

import numpy as np
import pytest

from registry import RunRecord
from tests.registry_helpers import record, sqlite_registry
from train._figures import (
    CONFUSION_PNG,
    RELIABILITY_PNG,
    confusion_figure,
    figure_data,
    read_figure_data,
    reliability_figure,
    render_figures,
    write_figure_data,
)
from train._metrics import ECE_BINS, classification_report
from tune._figures import CURVES_PNG, RUNG_GID, curve, curves_figure, render_curves
from tune._tracking import TrialOutcome

LABELS = ["negative", "neutral", "positive"]


@pytest.fixture(scope="module")
def test_split():
    """Overconfident logits for 200 test rows, about 60% of them right, and the report's metrics."""
    rng = np.random.default_rng(3)
    y_true = rng.integers(0, 3, 200)
    logits = rng.normal(size=(200, 3)) * 4
    right = rng.random(200) < 0.6
    logits[right, y_true[right]] += 6
    temperature = 2.3
    return logits, y_true, temperature, classification_report(logits, y_true, LABELS, temperature)


def _png_size(path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"  # the PNG signature, then its header
    return struct.unpack(">II", data[16:24])


def test_figure_data_bins_every_test_row_and_adds_up_to_the_logged_ece(test_split):
    logits, y_true, temperature, metrics = test_split
    data = figure_data(logits, y_true, LABELS, temperature)
    assert data["test_rows"] == 200 and data["temperature"] == temperature and data["labels"] == LABELS
    for key, ece in (("before", metrics["ece_before"]), ("after", metrics["ece_after"])):
        bins = data[key]
        assert len(bins["count"]) == ECE_BINS and sum(bins["count"]) == 200
        assert bins["ece"] == ece  # the same number the run logs as ece_before / ece_after
        assert bins["ece"] == pytest.approx(sum(n / 200 * abs(a - c) for n, a, c in
                                                zip(bins["count"], bins["accuracy"], bins["confidence"]) if n))
        assert all((a is None) == (n == 0) for n, a in zip(bins["count"], bins["accuracy"]))
    assert data["after"]["ece"] < data["before"]["ece"]  # scaling these overconfident logits helps


def test_confusion_counts_are_the_test_predictions(test_split):
    logits, y_true, temperature, metrics = test_split
    confusion = np.array(figure_data(logits, y_true, LABELS, temperature)["confusion"])
    predicted = logits.argmax(axis=1)
    assert confusion.sum() == 200
    assert confusion.sum(axis=1).tolist() == np.bincount(y_true, minlength=3).tolist()  # rows: true labels
    assert confusion.sum(axis=0).tolist() == np.bincount(predicted, minlength=3).tolist()  # columns: predicted
    assert np.trace(confusion) / 200 == pytest.approx(metrics["test_accuracy"])
    assert confusion[0, 2] == int(np.sum((y_true == 0) & (predicted == 2)))


def test_reliability_legend_carries_each_ece_and_bars_are_the_bin_accuracies(test_split):
    logits, y_true, temperature, metrics = test_split
    data = figure_data(logits, y_true, LABELS, temperature)
    axes = reliability_figure(data).axes[0]
    legend = [t.get_text() for t in axes.get_legend().get_texts()]
    assert legend[1] == f"before scaling (T=1): ECE {metrics['ece_before']:.4f}"
    assert legend[2] == f"after scaling (T={temperature:.3g}): ECE {metrics['ece_after']:.4f}"
    before, after = axes.containers
    assert [bar.get_height() for bar in before] == [a or 0.0 for a in data["before"]["accuracy"]]
    assert [bar.get_height() for bar in after] == [a or 0.0 for a in data["after"]["accuracy"]]


def test_confusion_figure_shows_the_counts_and_the_label_names(test_split):
    logits, y_true, temperature, _ = test_split
    data = figure_data(logits, y_true, LABELS, temperature)
    axes = confusion_figure(data).axes[0]
    assert axes.images[0].get_array().tolist() == data["confusion"]
    assert [t.get_text() for t in axes.get_xticklabels()] == LABELS
    assert sorted(int(t.get_text()) for t in axes.texts) == sorted(np.ravel(data["confusion"]).tolist())
    long_names = [f"label-{i}-" + "x" * 90 for i in range(60)]
    thirty = dict(data, labels=long_names[:30], confusion=np.eye(30, dtype=int).tolist())
    named = [t.get_text() for t in confusion_figure(thirty).axes[0].get_yticklabels()]
    assert named[0] == long_names[0][:23] + "…" and not confusion_figure(thirty).axes[0].texts  # 900 cells: blank
    sixty = confusion_figure(dict(data, labels=long_names, confusion=np.eye(60, dtype=int).tolist())).axes[0]
    assert not any("label-" in t.get_text() for t in sixty.get_xticklabels())  # too many names to write


def test_both_pngs_are_drawn_from_the_checkpoint_data(tmp_path, test_split):
    logits, y_true, temperature, _ = test_split
    write_figure_data(tmp_path, figure_data(logits, y_true, LABELS, temperature))
    paths = render_figures(read_figure_data(tmp_path), tmp_path / "figures")
    assert [p.name for p in paths] == [RELIABILITY_PNG, CONFUSION_PNG]
    assert _png_size(paths[0]) == (550, 500)  # figsize x dpi
    width, height = _png_size(paths[1])
    assert width > height > 300


def test_without_data_or_when_drawing_fails_the_run_goes_on_without_figures(tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="attune.train")
    assert read_figure_data(tmp_path) is None and render_figures(None, tmp_path) == []
    assert "no figure data beside the exported model" in caplog.text
    broken = {"labels": ["a"], "test_rows": 1, "temperature": 1.0, "before": {}, "after": {}, "confusion": [[1]]}
    assert [p.name for p in render_figures(broken, tmp_path)] == [CONFUSION_PNG]
    assert f"could not draw {RELIABILITY_PNG} (KeyError" in caplog.text


def test_the_registry_logs_a_records_figures_under_figures(tmp_path, test_split):
    reg = sqlite_registry(tmp_path / "store")
    logits, y_true, temperature, _ = test_split
    paths = render_figures(figure_data(logits, y_true, LABELS, temperature), tmp_path / "drawn")
    run_id = reg.log_run("tenant.john", record().model_copy(update={"figures": paths}))
    listed = reg.client.list_artifacts(run_id, "figures")
    assert sorted(f.path for f in listed) == [f"figures/{CONFUSION_PNG}", f"figures/{RELIABILITY_PNG}"]
    assert {f.path: f.file_size for f in listed} == {f"figures/{p.name}": p.stat().st_size for p in paths}
    parent = reg.start_run("tenant.john", "search", {}, {})
    reg.end_run(parent, figures=paths[:1])
    assert [f.path for f in reg.client.list_artifacts(parent, "figures")] == [f"figures/{RELIABILITY_PNG}"]


def test_a_record_refuses_figures_that_are_missing_or_share_a_name(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    for folder in ("a", "b"):
        (tmp_path / folder / "x.png").write_bytes(b"png")
    fields = record().model_dump()
    with pytest.raises(ValueError, match=r"figure files not found: .*nope\.png.*draw them"):
        RunRecord(**{**fields, "figures": [tmp_path / "nope.png"]})
    with pytest.raises(ValueError, match=r"share the file names \['x.png'\]"):
        RunRecord(**{**fields, "figures": [tmp_path / "a" / "x.png", tmp_path / "b" / "x.png"]})


def _outcome(trial_id: str, status: str, *vals: float) -> TrialOutcome:
    history = [{"epoch": i + 1, "val_macro_f1": v, "train_loss": 1.0} for i, v in enumerate(vals)]
    return TrialOutcome(trial_id, {}, status, history)


SEARCH = [_outcome("a", "completed", 0.4, 0.6, 0.7, 0.75), _outcome("b", "stopped_early", 0.2),
          _outcome("c", "stopped_early", 0.3, 0.35), _outcome("d", "completed", 0.5, 0.55, 0.5, 0.6),
          _outcome("e", "failed")]


def test_curves_draw_each_trials_validation_curve_and_the_rungs(tmp_path):
    axes = curves_figure(SEARCH, [1, 2], best_trial_id="a").axes[0]
    lines = {line.get_label(): line for line in axes.lines if not line.get_label().startswith("_")}
    assert set(lines) == {"completed (1)", "stopped early (2)", "best: trial a", "ASHA rung"}  # e: no epoch
    assert list(lines["best: trial a"].get_xdata()) == [1, 2, 3, 4]
    assert list(lines["best: trial a"].get_ydata()) == [0.4, 0.6, 0.7, 0.75]
    stopped = list(zip(lines["stopped early (2)"].get_xdata(), lines["stopped early (2)"].get_ydata()))
    assert [p for p in stopped if not math.isnan(p[0])] == [(1, 0.2), (1, 0.3), (2, 0.35)]  # b, then c
    rungs = [line for line in axes.lines if line.get_gid() == RUNG_GID]
    assert [list(line.get_xdata()) for line in rungs] == [[1, 1], [2, 2]]  # vertical, at each rung's epoch
    assert "ASHA rungs at epochs [1, 2]" in axes.get_title()
    assert curve(SEARCH[4]) == ([], [])  # a trial that failed before its first epoch has no curve
    [path] = render_curves(SEARCH, [1, 2], "a", tmp_path)
    assert path.name == CURVES_PNG and _png_size(path) == (700, 450)


def test_a_search_without_rungs_draws_none():
    axes = curves_figure(SEARCH[:1], [], best_trial_id=None).axes[0]
    assert [line.get_label() for line in axes.lines] == ["completed (1)"]
    assert "rung" not in axes.get_title()
