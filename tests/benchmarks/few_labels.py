"""Few labels: newsdesk's learning curve (labels -> test macro-F1 with a 95% CI, ECE) for each small-data recipe.

    .venv/bin/python -m tests.benchmarks.few_labels [--labels 50 100 200 500] [--seeds 0 1 2]
        [--recipes probe setfit lp-ft full] [--max-seq-len 48] [--threads 1] [--json PATH]

For each seed, the train split of newsdesk (real tweets, ``train._demo_data.newsdesk_rows``, split by
the project's loader) is shuffled once and its first N rows are the N labels (so the subsamples of a
seed are nested). Each recipe (``train._small_data``) trains on those rows alone, in one process, and
is scored on the same fixed rows: newsdesk's whole test split, never the subsample's folds. A row of
the table gives the test macro-F1 with its 95% percentile-bootstrap interval over the test rows
(``train._bootstrap``), accuracy, and ECE at T = 1 and after calibration. ``probe`` is the linear
probe (a logistic regression on the frozen base's embeddings, no encoder training). "ECE after":
for the head-on-embeddings recipes (probe, setfit), T is chosen by ``train._calibration.calibrate``
on the subsample's 5-fold out-of-fold logits of the head (the encoder fixed, so those logits are
slightly optimistic); lp-ft and full have no held-out rows to fit T on without k more fine-tunes,
and report none.

The named baseline is full-data full fine-tuning, test macro-F1 0.8133 (docs/benchmarks.md,
lora_vs_full, seed 0); the last line gives each recipe's mean at 200 labels as a share of it
(issue 29's goal: at least 90%).
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

FULL_DATA_MACRO_F1 = 0.8133  # newsdesk, full fine-tuning's defaults, seed 0, all 9,602 train rows


def head_oof_temperature(features: np.ndarray, y: np.ndarray, num_classes: int, seed: int):
    """The calibration the head-on-embeddings recipes would ship: ``calibrate`` on 5-fold OOF head logits."""
    from train._calibration import calibrate
    from train._kfold import out_of_fold, stratified_folds
    from train._small_data import fit_linear_head

    def fit_predict(train_rows, held_out):
        w, b = fit_linear_head(features[train_rows], y[train_rows], num_classes)
        return features[held_out] @ w.T + b

    oof = out_of_fold(stratified_folds(y.tolist(), 5, seed), num_classes, fit_predict)
    return calibrate(oof, y)


def score(logits: np.ndarray, y_test: np.ndarray, num_classes: int, calibration) -> dict:
    from registry import softmax
    from train._bootstrap import bootstrap_ci
    from train._metrics import expected_calibration_error, macro_f1

    pred = logits.argmax(1)
    low, high = bootstrap_ci(y_test, pred, num_classes)
    row = {"test_macro_f1": macro_f1(y_test, pred, num_classes), "test_macro_f1_ci95": [low, high],
           "test_accuracy": float((pred == y_test).mean()),
           "ece_before": expected_calibration_error(softmax(logits), y_test), "ece_after": None,
           "temperature": None, "temperature_slope": None, "calibration": None}
    if calibration is not None:
        calibrated = softmax(logits, calibration.temperature, calibration.temperature_slope)
        row.update(ece_after=expected_calibration_error(calibrated, y_test), temperature=calibration.temperature,
                   temperature_slope=calibration.temperature_slope, calibration=calibration.reason)
    return row


def run_cell(recipe_name: str, base_dir, labels, texts, y, test_texts, y_test, args, seed, base_cache) -> dict:
    """One recipe on one subsample: train, then score on the fixed test rows."""
    from train._small_data import Recipe, embed, fit_linear_head, logits_of, train_small

    started = time.monotonic()
    if recipe_name == "probe":  # the frozen base: embeddings computed once per run
        model, tokenizer, x_test = base_cache["model"], base_cache["tokenizer"], base_cache["x_test"]
        features = embed(model, tokenizer, texts, args.max_seq_len)
        w, b = fit_linear_head(features, y, len(labels))
        logits = x_test @ w.T + b
        calibration = head_oof_temperature(features, y, len(labels), seed)
    else:
        recipe = Recipe(name=recipe_name, max_seq_len=args.max_seq_len, seed=seed)
        model, tokenizer = train_small(base_dir, labels, texts, y.tolist(), recipe)
        logits = logits_of(model, tokenizer, test_texts, args.max_seq_len)
        calibration = None
        if recipe_name == "setfit":
            calibration = head_oof_temperature(embed(model, tokenizer, texts, args.max_seq_len), y, len(labels), seed)
    row = score(logits, y_test, len(labels), calibration)
    row["seconds"] = round(time.monotonic() - started, 1)
    return row


def line(row: dict) -> str:
    low, high = row["test_macro_f1_ci95"]
    after = "" if row["ece_after"] is None else f"{row['ece_after']:.3f}"
    return (f"{row['recipe']:<7} {row['labels']:>6} {row['seed']:>4} {row['test_macro_f1']:>8.4f} "
            f"[{low:.3f}, {high:.3f}] {row['test_accuracy']:>8.4f} {row['ece_before']:>10.3f} {after:>9} "
            f"{row['seconds']:>7.0f}")


def summary(rows: list[dict], sizes: list[int], recipes: list[str]) -> list[str]:
    """Mean (min-max over seeds) test macro-F1 per recipe and label count, and the share of full data."""
    out = [f"{'recipe':<7}" + "".join(f" {f'{n} labels':>22}" for n in sizes)]
    for recipe in recipes:
        cells = ""
        for n in sizes:
            scores = [r["test_macro_f1"] for r in rows if r["recipe"] == recipe and r["labels"] == n]
            cells += (f" {np.mean(scores):>8.4f} ({min(scores):.3f}-{max(scores):.3f})" if scores
                      else f" {'-':>22}")
        out.append(f"{recipe:<7}{cells}")
    return out


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--labels", type=int, nargs="+", default=[50, 100, 200, 500])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--recipes", nargs="+", default=["probe", "setfit", "lp-ft", "full"],
                        choices=["probe", "setfit", "lp-ft", "full"])
    parser.add_argument("--max-seq-len", type=int, default=48)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the shared machine is busy)")
    parser.add_argument("--json", type=Path, default=None)
    return parser.parse_args()


def main() -> None:
    import torch

    from train._base import load_tokenizer, resolve_base
    from train._small_data import embed
    from train.finetune.model import build_classifier

    args = parse_args()
    torch.set_num_threads(args.threads)
    data, train_texts, train_y, test_texts, y_test = newsdesk_splits()
    labels = data.labels
    base_dir = resolve_base("minilm")
    print(f"newsdesk splits {data.split_counts()}; labels {labels}; test rows {len(test_texts)}", flush=True)
    base_cache = {"model": build_classifier(base_dir, labels), "tokenizer": load_tokenizer(base_dir)}
    base_cache["x_test"] = embed(base_cache["model"], base_cache["tokenizer"], test_texts, args.max_seq_len)
    rows: list[dict] = []
    print(f"{'recipe':<7} {'labels':>6} {'seed':>4} {'macro-F1':>8} {'95% CI':<14} {'accuracy':>8} "
          f"{'ECE (T=1)':>10} {'ECE after':>9} {'seconds':>7}", flush=True)
    for seed in args.seeds:
        order = np.random.default_rng(seed).permutation(len(train_texts))
        for n in args.labels:
            picked = order[:n]
            texts, y = [train_texts[i] for i in picked], train_y[picked]
            for recipe in args.recipes:
                row = {"recipe": recipe, "labels": n, "seed": seed}
                row.update(run_cell(recipe, base_dir, labels, texts, y, test_texts, y_test, args, seed, base_cache))
                rows.append(row)
                print(line(row), flush=True)
                if args.json:
                    write_json(args, rows, len(test_texts))
    print("\nmean test macro-F1 (min-max over seeds) on the same "
          f"{len(test_texts)} newsdesk test rows; full data, full fine-tuning: {FULL_DATA_MACRO_F1}")
    print("\n".join(summary(rows, args.labels, args.recipes)))
    at = 200 if 200 in args.labels else args.labels[-1]
    shares = []
    for recipe in args.recipes:
        scores = [r["test_macro_f1"] for r in rows if r["recipe"] == recipe and r["labels"] == at]
        shares.append(f"{recipe} {np.mean(scores) / FULL_DATA_MACRO_F1:.1%}")
    print(f"at {at} labels, mean macro-F1 / full-data full fine-tuning ({FULL_DATA_MACRO_F1}): " + ", ".join(shares)
          + " (goal: 90%)")


def newsdesk_splits():
    """newsdesk split by the project's loader: (data, train texts, train label ids, test texts, test label ids)."""
    from tests.benchmarks.domain_adaptation import tenant_data

    with tempfile.TemporaryDirectory(prefix="attune-few-") as workdir:
        data = tenant_data(Path(workdir))[1]
    index = data.label_index()
    train_y = np.array([index[e.label] for e in data.train])
    y_test = np.array([index[e.label] for e in data.test])
    return data, [e.text for e in data.train], train_y, [e.text for e in data.test], y_test


def write_json(args, rows: list[dict], test_rows: int) -> None:
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({
        "benchmark": "few_labels", "data": "newsdesk", "test_rows": test_rows, "max_seq_len": args.max_seq_len,
        "threads": args.threads, "baseline": {"name": "full data, full fine-tuning, seed 0",
                                              "test_macro_f1": FULL_DATA_MACRO_F1},
        "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
