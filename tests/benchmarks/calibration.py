"""Calibration: attune's rule (a temperature slope where the rows need one) against one temperature, on newsdesk.

    .venv/bin/python -m tests.benchmarks.calibration MODEL_DIR [MODEL_DIR ...] [--draws 200] [--json PATH]

Each MODEL_DIR is an export of ``attune finetune --tenant newsdesk`` on the demo's newsdesk file
(``attune data demo``; full or LoRA, any base). The script splits newsdesk with the project's loader,
as the fine-tune did (so the validation rows are the ones its temperature was fitted on), computes
each model's validation and test logits, and calibrates them twice with ``train._calibration.calibrate``
on the validation rows: with one temperature (rules 1-3, the named baseline) and with attune's whole
rule (rules 1-4, which may add a temperature slope). It scores both on the test rows.

"ECE floor" is what a perfectly calibrated model would measure: the mean test ECE (15 equal-width
bins) over ``--draws`` label sets drawn from the calibrated confidences themselves, on as many rows.
An ECE at the floor is as low as the test split can tell.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np


def ece_floor(probs: np.ndarray, draws: int, seed: int = 0) -> float:
    """Mean ECE of labels drawn from ``probs`` themselves (a perfectly calibrated model), over ``draws`` draws."""
    from train._metrics import expected_calibration_error

    rng = np.random.default_rng(seed)
    cumulative = probs.cumsum(axis=1)
    total = 0.0
    for _ in range(draws):
        labels = (rng.random((len(probs), 1)) > cumulative).sum(axis=1).clip(max=probs.shape[1] - 1)
        total += expected_calibration_error(probs, labels)
    return total / draws


def measure(model_dir: Path, data, draws: int) -> dict:
    from registry import read_manifest, softmax
    from train import Predictor
    from train._calibration import calibrate
    from train._metrics import expected_calibration_error

    index = data.label_index()
    val_y = np.array([index[e.label] for e in data.validation])
    test_y = np.array([index[e.label] for e in data.test])
    predictor = Predictor(model_dir)
    if predictor.labels != sorted(index, key=index.get):
        raise SystemExit(f"{model_dir}: labels {predictor.labels} are not newsdesk's {sorted(index, key=index.get)}")
    val = predictor.logits([e.text for e in data.validation])
    test = predictor.logits([e.text for e in data.test])
    manifest = read_manifest(model_dir)
    row = {"model_dir": str(model_dir), "method": manifest["method"], "base": manifest["base"],
           "validation_rows": int(len(val_y)), "test_rows": int(len(test_y)),
           "test_accuracy": float((test.argmax(1) == test_y).mean()),
           "test_ece_t1": expected_calibration_error(softmax(test), test_y)}
    for name, rule in (("single", calibrate(val, val_y, margin_rule=False)), ("attune", calibrate(val, val_y))):
        probs = softmax(test, rule.temperature, rule.temperature_slope)
        row[name] = {"temperature": rule.temperature, "temperature_slope": rule.temperature_slope,
                     "reason": rule.reason, "test_ece": expected_calibration_error(probs, test_y),
                     "test_ece_floor": ece_floor(probs, draws)}
    row["ratio"] = row["attune"]["test_ece"] / row["single"]["test_ece"]
    return row


def print_table(rows: list[dict]) -> None:
    print(f"{'model':<58} {'method':<6} {'acc':>6} {'ECE T=1':>8} {'one T':>7} {'ECE':>7} "
          f"{'attune T, slope':>16} {'ECE':>7} {'floor':>6} {'attune/one':>10}")
    for r in rows:
        one, ours = r["single"], r["attune"]
        print(f"{r['model_dir'][-58:]:<58} {r['method']:<6} {r['test_accuracy']:>6.4f} {r['test_ece_t1']:>8.4f} "
              f"{one['temperature']:>7.3f} {one['test_ece']:>7.4f} "
              f"{ours['temperature']:>8.3f}, {ours['temperature_slope']:>6.3f} {ours['test_ece']:>7.4f} "
              f"{ours['test_ece_floor']:>6.4f} {r['ratio']:>9.3f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model_dirs", nargs="+", type=Path)
    parser.add_argument("--draws", type=int, default=200, help="label draws for the ECE floor")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    from tests.benchmarks.few_labels import newsdesk_splits

    data = newsdesk_splits()[0]
    rows = []
    for model_dir in args.model_dirs:
        rows.append(measure(model_dir, data, args.draws))
        print(f"measured {model_dir}", flush=True)
    print_table(rows)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"benchmark": "calibration", "data": "newsdesk",
                                         "baseline": "one temperature (rules 1-3)", "draws": args.draws,
                                         "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
