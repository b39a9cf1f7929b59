"""The small-data path of ``attune finetune``: k-fold cross-validation, the few-label recipe, and its gate.

A tenant whose test split would hold fewer than ``train._kfold.MIN_TEST_ROWS`` rows, fine-tuned with
the default recipe flags, takes this path automatically (:func:`small_data_recipe`):

1. all of its rows (train, validation and test splits together) are dealt into
   ``NUM_FOLDS`` stratified folds; for each fold the small-data recipe (``train._small_data``,
   :func:`recipe_for`) trains on the other folds and predicts the held-out one, so every row
   gets exactly one out-of-fold prediction;
2. the out-of-fold predictions give the version's metrics (``cv_*``), each with a 95% bootstrap
   confidence interval, and the temperature (``train._calibration.calibrate`` on the out-of-fold logits);
3. the shipped model is the recipe trained on all rows (one Ray Train worker), exported as usual;
4. the promotion gate compares the candidate's out-of-fold macro-F1 with the champion's macro-F1 on
   the same rows (:func:`register_and_gate_cv`).
"""
from __future__ import annotations

import itertools
import logging
import shutil
import tempfile
import time
from pathlib import Path
from typing import Optional

import numpy as np

from train._kfold import NUM_FOLDS, out_of_fold, stratified_folds, uses_cross_validation
from train._worker import logging_config

logger = logging.getLogger("attune.train")

# The recipe by the tenant's row count, from newsdesk's learning curve (tests/benchmarks/few_labels.py,
# docs/benchmarks.md#few_labels): below 200 rows LP-FT (a random head collapsed to one class at 50 labels),
# from 200 rows full fine-tuning from a random head (tied with LP-FT at 200, ahead at 500, better calibrated).
LP_FT_BELOW_ROWS = 200
# Flags that choose a training recipe, at the values ``attune finetune`` gets without them. A run that sets any
# other value asked for that recipe, and keeps the Ray Train + DeepSpeed path (with its test split).
DEFAULT_RECIPE_FLAGS = {"method": "full", "epochs": 5, "lr": 1e-4, "head_warmup_steps": 0, "max_train_rows": None}


def small_data_recipe(config, num_rows: int) -> Optional[str]:
    """The small-data recipe for a run of ``config`` on ``num_rows`` rows, or None for the usual path."""
    if not uses_cross_validation(num_rows, config.split_fractions[2]):
        return None
    changed = [name for name, value in DEFAULT_RECIPE_FLAGS.items() if getattr(config, name) != value]
    if changed:
        logger.info("%d rows would leave fewer than 100 test rows, but --%s chose the recipe: no cross-validation",
                    num_rows, ", --".join(n.replace("_", "-") for n in changed))
        return None
    if not _mean_pooled(config.base):
        logger.info("%d rows would leave fewer than 100 test rows, but the small-data recipe needs a base that "
                    "attune's classifier mean-pools (BERT, MPNet); %s is not one: no cross-validation",
                    num_rows, config.base)
        return None
    return recipe_for(num_rows)


def recipe_for(num_rows: int) -> str:
    """The small-data recipe (``train._small_data``) for a tenant with ``num_rows`` rows in all."""
    return "lp-ft" if num_rows < LP_FT_BELOW_ROWS else "full"


def _mean_pooled(base: str) -> bool:
    """Whether attune's classifier mean-pools ``base`` (a name or directory; the driver passes a registered
    base as its directory): ``train._small_data`` fits its head on mean-pooled embeddings."""
    from registry import is_mean_pooled
    from train._base import resolve_base

    try:
        return is_mean_pooled(resolve_base(base))
    except Exception:  # noqa: BLE001 - an unresolvable base fails later, with the driver's own message
        return False


def all_rows(dataset) -> list:
    """Every row of the tenant's data: the train, validation and test splits in that order."""
    return list(dataset.train) + list(dataset.validation) + list(dataset.test)


def run_small_data(config, settings, dataset, *, run_name: str, progress_file: Optional[Path] = None):
    """``run_training``'s counterpart on the small-data path: one Ray Train worker runs the folds and the
    final fit (:func:`small_data_loop_per_worker`); returns the Ray Train result."""
    from train._errors import TrainError
    from train._run import failure_hint, torch_trainer

    index = dataset.label_index()
    recipe = recipe_for(len(all_rows(dataset)))
    loop_config = {"finetune": config.model_dump(mode="json"), "recipe": recipe,
                   "data": {"labels": dataset.labels, "rows": [(e.text, index[e.label]) for e in all_rows(dataset)],
                            "data_hash": dataset.data_hash, "split_counts": dataset.split_counts()},
                   **logging_config(settings, progress_file)}  # the worker's lines (one per fit) reach the driver
    storage = Path(settings.ray_storage_dir)
    trainer = torch_trainer(small_data_loop_per_worker, loop_config, num_workers=1, use_gpu=False, run_name=run_name,
                            storage_path=storage, max_failures=config.max_failures)
    logger.info("tenant %s has %d rows: %d-fold cross-validation of the %s recipe, then a fit on all rows",
                config.tenant, len(loop_config["data"]["rows"]), NUM_FOLDS, recipe)
    try:
        result = trainer.fit()
        error = result.error
    except Exception as exc:  # noqa: BLE001 - Ray wraps worker errors; surface the cause plainly
        result, error = None, exc
    if error is not None:
        shutil.rmtree(storage / run_name, ignore_errors=True)
        raise TrainError(f"training tenant {config.tenant!r} (small-data path) failed: {error}{failure_hint()}")
    return result


def small_data_loop_per_worker(loop_config: dict) -> dict:
    """The Ray Train worker: out-of-fold logits, calibration, the final fit, the export, one report."""
    import ray.train
    import torch
    from ray.train import Checkpoint

    from train._base import resolve_base
    from train._calibration import calibrate
    from train._figures import figure_data, write_figure_data
    from train._small_data import Recipe, logits_of, train_small
    from train._worker import setup_logging
    from train.finetune.config import FinetuneConfig

    setup_logging(0, loop_config)
    cfg = FinetuneConfig(**loop_config["finetune"])
    data = loop_config["data"]
    torch.manual_seed(cfg.seed)
    texts = [text for text, _ in data["rows"]]
    y = np.array([label for _, label in data["rows"]], dtype=np.int64)
    labels, base_dir = data["labels"], resolve_base(cfg.base)
    recipe = Recipe(name=loop_config["recipe"], max_seq_len=cfg.max_seq_len, batch_size=cfg.batch_size, seed=cfg.seed)

    fold_of = stratified_folds(y.tolist(), min(NUM_FOLDS, len(y)), cfg.seed)
    folds, started, fitted = len(set(fold_of)), time.monotonic(), itertools.count(1)

    def fit_predict(train_rows, held_out):
        logger.info("fold %d/%d: fitting %s on %d rows (%.0fs so far)", next(fitted), folds, recipe.name,
                    len(train_rows), time.monotonic() - started)
        model, tokenizer = train_small(base_dir, labels, [texts[i] for i in train_rows], y[train_rows].tolist(), recipe)
        return logits_of(model, tokenizer, [texts[i] for i in held_out], recipe.max_seq_len)

    oof = out_of_fold(fold_of, len(labels), fit_predict)
    calibration = calibrate(oof, y)
    metrics = cv_metrics(oof, y, labels, calibration, folds=folds)
    logger.info("fit %d/%d: %s on all %d rows (cross-validated macro-F1 %.4f, %.0fs so far)", folds + 1, folds + 1,
                recipe.name, len(texts), metrics["cv_macro_f1"], time.monotonic() - started)
    model, tokenizer = train_small(base_dir, labels, texts, y.tolist(), recipe)
    export_dir = Path(tempfile.mkdtemp(prefix="attune-export-")) / "model"
    _export(cfg, model, tokenizer, export_dir, data, metrics, loop_config["recipe"])
    figures = figure_data(oof, y, labels, calibration.temperature, calibration.temperature_slope)
    write_figure_data(export_dir.parent, figures)
    try:
        ray.train.report({"done": True}, checkpoint=Checkpoint.from_directory(str(export_dir.parent)))
    finally:
        shutil.rmtree(export_dir.parent, ignore_errors=True)
    return {"metrics": metrics, "history": []}


def cv_metrics(oof_logits: np.ndarray, y: np.ndarray, labels: list[str], calibration, *, folds: int) -> dict:
    """The version's metrics from out-of-fold logits: ``classification_report``'s keys (``test_*`` are the
    out-of-fold figures, so every reader of a version finds them), the same as ``cv_*``, 95% bootstrap
    intervals (``cv_macro_f1_ci_low`` / ``_high``, ``cv_accuracy_ci_low`` / ``_high``), and how they were made."""
    from train._bootstrap import LEVEL, bootstrap_ci
    from train._metrics import classification_report

    metrics = classification_report(oof_logits, y, labels, calibration.temperature,
                                    temperature_slope=calibration.temperature_slope)
    metrics.update(calibration.metrics())
    pred = np.asarray(oof_logits).argmax(1)
    f1_low, f1_high = bootstrap_ci(y, pred, len(labels))
    acc_low, acc_high = bootstrap_ci(y, pred, len(labels), metric="accuracy")
    metrics.update(evaluation="cross-validation", cv_folds=folds, cv_rows=int(len(y)), cv_ci_level=LEVEL,
                   cv_macro_f1=metrics["test_macro_f1"], cv_accuracy=metrics["test_accuracy"],
                   cv_macro_f1_ci_low=f1_low, cv_macro_f1_ci_high=f1_high,
                   cv_accuracy_ci_low=acc_low, cv_accuracy_ci_high=acc_high)
    return metrics


def _export(cfg, model, tokenizer, export_dir: Path, data: dict, metrics: dict, recipe: str) -> None:
    from train.finetune.export import build_manifest, export_model

    manifest = build_manifest(tenant=cfg.tenant, labels=data["labels"], base=cfg.base, method=cfg.method,
                              data_hash=data["data_hash"], metrics={**metrics, "recipe": recipe},
                              temperature=metrics["temperature"], temperature_slope=metrics["temperature_slope"],
                              max_seq_len=cfg.max_seq_len,
                              split_counts=data["split_counts"], history=[],
                              params=cfg.model_dump(mode="json", exclude={"data", "out"}))
    export_model(model, tokenizer, export_dir, manifest)


def register_and_gate_cv(registry, tenant: str, model_dir: Path, record, dataset, *, promote: bool, margin: float,
                         floor: float, parent_run_id: Optional[str] = None) -> dict:
    """``register_and_gate`` on the small-data path: the candidate's score is its out-of-fold macro-F1
    (``record.metrics["cv_macro_f1"]``); the champion's is its macro-F1 on the same rows, all of them."""
    from train.finetune.register import score_model

    version = registry.register_candidate(tenant, model_dir, record, parent_run_id=parent_run_id)
    rows = all_rows(dataset)
    texts, truth = [e.text for e in rows], [e.label for e in rows]
    metrics = record.metrics
    candidate = Path(model_dir).resolve()

    def score(directory: Path) -> float:
        if Path(directory).resolve() == candidate:
            return float(metrics["cv_macro_f1"])
        return score_model(directory, texts, truth, dataset.labels)

    evidence = (f"{len(texts)} rows of data {dataset.data_hash[:12]} (candidate: {int(metrics['cv_folds'])}-fold "
                f"out-of-fold predictions, 95% CI {metrics['cv_macro_f1_ci_low']:.4f}-"
                f"{metrics['cv_macro_f1_ci_high']:.4f}; a champion is scored on all of them)")
    decision = registry.gate(tenant, version.version, model_dir, score, margin=margin, floor=floor, promote=promote,
                             evidence=evidence)
    alias = "champion" if decision["promoted"] else "challenger"
    return {"model_version": version.version, "alias": alias, "promotion": decision}
