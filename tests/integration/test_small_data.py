"""A tenant with few labels takes the small-data path: cross-validated metrics with intervals, and the gate uses them.

Mechanics, not accuracy: the tiny random base trains in seconds; ``tests/benchmarks/few_labels.py``
measures the recipe on real data.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from cluster import get_settings
from registry import Registry
from train import FinetuneConfig, Predictor, write_jsonl
from train.finetune.driver import finetune


def test_a_sixty_row_tenant_is_cross_validated_and_gated_on_it(ray_session, tiny_base, demo_dir, tmp_path, caplog):
    rows = [json.loads(line) for line in (demo_dir / "john.jsonl").read_text().splitlines()]
    picked: list = []
    for label in ("negative", "neutral", "positive"):
        picked += [r for r in rows if r["label"] == label][:20]
    data = write_jsonl(tmp_path / "few.jsonl", picked)
    settings = get_settings(home=str(tmp_path / "home"), promotion_floor=0.0)
    with caplog.at_level(logging.INFO, logger="attune"):
        summary = finetune(FinetuneConfig(tenant="few", data=str(data), base=str(tiny_base), max_seq_len=24,
                                          out=tmp_path / "model"), settings=settings)  # default recipe flags

    metrics = summary["metrics"]
    shown = caplog.text  # the worker's progress reaches the driver: one line per fit
    assert all(f"fold {k}/5: fitting lp-ft on " in shown for k in range(1, 6))
    assert "fit 6/6: lp-ft on all 60 rows" in shown
    assert metrics["evaluation"] == "cross-validation" and metrics["cv_folds"] == 5 and metrics["cv_rows"] == 60
    assert metrics["cv_macro_f1_ci_low"] <= metrics["cv_macro_f1"] <= metrics["cv_macro_f1_ci_high"]
    assert metrics["cv_macro_f1_ci_high"] - metrics["cv_macro_f1_ci_low"] > 0.05  # 60 rows: a wide interval
    assert metrics["cv_accuracy_ci_low"] <= metrics["cv_accuracy"] <= metrics["cv_accuracy_ci_high"]
    assert metrics["calibration"].startswith(("fitted", "kept T=1"))
    manifest = json.loads((Path(summary["model_dir"]) / "attune.json").read_text())
    assert manifest["metrics"]["recipe"] == "lp-ft"  # below 200 rows and manifest["metrics"]["cv_rows"] == 60

    promotion = summary["promotion"]  # the gate scored the candidate by its out-of-fold macro-F1
    assert promotion["candidate_macro_f1"] == pytest.approx(metrics["cv_macro_f1"], abs=1e-6)
    assert "60 rows" in promotion["reason"] and "5-fold out-of-fold predictions, 95% CI" in promotion["reason"]
    assert summary["model_version"] == "1" and summary["alias"] == "champion"
    version = Registry.from_settings(settings).get_version("few", "1")  # the interval is on the version's tags
    assert version.metrics["cv_macro_f1_ci_low"] == pytest.approx(metrics["cv_macro_f1_ci_low"])
    assert version.metrics["cv_macro_f1_ci_high"] == pytest.approx(metrics["cv_macro_f1_ci_high"])
    scores = Predictor(summary["model_dir"]).predict(["gold is up 150% in after-hours trading"])[0]["scores"]
    assert sum(scores.values()) == pytest.approx(1.0, abs=1e-4)
