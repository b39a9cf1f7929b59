"""Live runs: a training run's MLflow run opens when training starts and ends the way training ended.

    with registry.open_run("tenant.john", record) as run:      # RUNNING: params, tags, the dataset input
        run.log_metrics({"val_macro_f1": 0.8}, step=1, timestamp_ms=...)   # as each epoch ends
        registry.register_candidate("john", model_dir, record.model_copy(update={"run_id": run.run_id}))

Leaving the block normally ends the run FINISHED (registration already did); an exception ends it
FAILED, Ctrl-C (``KeyboardInterrupt``) KILLED, with the error as the run's ``attune.error`` tag, and
the exception goes on. A run that something else ended already (a registration) keeps its status
unless the block raises.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Optional

from registry._names import TAG_ERROR
from registry._records import RunRecord

if TYPE_CHECKING:
    from registry._registry import Registry

logger = logging.getLogger("attune.registry")
ERROR_TAG_MAX_CHARS = 5000


class LiveRun:
    """An open run (see the module docstring); ``run_id`` and ``name`` are MLflow's."""

    def __init__(self, registry: Registry, run_id: str, name: str):
        self.registry, self.run_id, self.name = registry, run_id, name

    def __enter__(self) -> LiveRun:
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc is not None:
            self.fail(exc)
        elif self.status() == "RUNNING":
            self.registry._write(lambda: self.registry.client.set_terminated(self.run_id, "FINISHED"), "end run")
        return False

    def status(self) -> str:
        return self.registry.client.get_run(self.run_id).info.status

    def log_metrics(self, metrics: dict, step: int, timestamp_ms: Optional[int] = None) -> None:
        """Numbers of ``metrics`` at ``step`` (an epoch, an optimizer step), stamped when they happened."""
        from mlflow.entities import Metric

        when = int(timestamp_ms if timestamp_ms is not None else time.time() * 1000)
        batch = [Metric(k, float(v), when, int(step)) for k, v in metrics.items() if _number(v)]
        if batch:
            self.registry._write(lambda: self.registry.client.log_batch(self.run_id, metrics=batch), "log metrics")

    def fail(self, error: BaseException) -> None:
        """End the run FAILED (KILLED for Ctrl-C) with ``error`` as its tag; best effort, never raises."""
        end_with_error(self.registry, self.run_id, error)


def open_run(registry: Registry, experiment: str, record: RunRecord, parent_run_id: Optional[str] = None) -> LiveRun:
    """A RUNNING run named ``record.run_name`` (made unique in the experiment), with the record's tags, its
    params and its dataset input."""
    from registry._register import create_run_once

    tags = dict(record.tags)
    if parent_run_id:
        tags["mlflow.parentRunId"] = parent_run_id
    experiment_id = registry.experiment_id(experiment)
    name = unique_run_name(registry, experiment_id, record.run_name)
    run_id = create_run_once(registry, experiment_id, tags, name).info.run_id
    try:
        log_params(registry, run_id, record.params)
        log_dataset(registry, run_id, record)
    except BaseException as exc:
        end_with_error(registry, run_id, exc)
        raise
    logger.info("MLflow run %s (%s) is open in %s", name, run_id, experiment)
    return LiveRun(registry, run_id, name)


def unique_run_name(registry: Registry, experiment_id: str, name: str) -> str:
    """``name``, or ``name-2``, ``name-3``... when the experiment has a run of that name already."""
    from mlflow.entities import ViewType

    taken = {run.info.run_name for run in registry.client.search_runs(
        [experiment_id], f"attributes.run_name LIKE '{name}%'", run_view_type=ViewType.ALL, max_results=1000)}
    candidate, n = name, 1
    while candidate in taken:
        n += 1
        candidate = f"{name}-{n}"
    return candidate


def log_params(registry: Registry, run_id: str, params: dict) -> None:
    """The params the run does not have yet (MLflow keeps a param's first value)."""
    from mlflow.entities import Param

    have = registry.client.get_run(run_id).data.params
    batch = [Param(k, str(v)[:6000]) for k, v in sorted(params.items()) if k not in have]
    for i in range(0, len(batch), 100):  # MLflow's log_batch limit
        registry._write(lambda: registry.client.log_batch(run_id, params=batch[i:i + 100]), "log params")


def log_dataset(registry: Registry, run_id: str, record: RunRecord) -> None:
    """The training data as the run's input (``mlflow.log_input``): the UI's Dataset column."""
    from mlflow.entities import Dataset, DatasetInput, InputTag

    fields = record.lineage.dataset()
    if fields is None:
        return
    entry = DatasetInput(Dataset(**fields), tags=[InputTag("mlflow.data.context", "train")])
    registry._write(lambda: registry.client.log_inputs(run_id, datasets=[entry]), "log dataset")


def complete_run(registry: Registry, run_id: str, record: RunRecord, artifacts: Optional[Path] = None) -> None:
    """What an open run learns at the end: final metrics, history its live metrics missed, new params, the
    final tags (the fitted temperature...), figures and ``artifacts`` (as ``model/``). Its status stays."""
    from mlflow.entities import Metric, RunTag

    now = int(time.time() * 1000)
    metrics = [Metric(k, float(v), now, 0) for k, v in record.metrics.items()] + _missing_history(
        registry, run_id, record.history, now)
    for i in range(0, len(metrics), 1000):
        registry._write(lambda: registry.client.log_batch(run_id, metrics=metrics[i:i + 1000]), "log metrics")
    log_params(registry, run_id, record.params)
    tags = [RunTag(k, v) for k, v in record.tags.items()]
    registry._write(lambda: registry.client.log_batch(run_id, tags=tags), "log tags")
    if artifacts is not None:
        registry.client.log_artifacts(run_id, str(artifacts), "model")
    registry._log_figures(run_id, record.figures)


def _missing_history(registry: Registry, run_id: str, history: list[dict], now: int) -> list:
    """The history rows' points that the live run has no value for (an event lost on the way)."""
    from mlflow.entities import Metric

    logged: dict[str, set[int]] = {}
    points = []
    for row in history:
        step = int(row["step"] if "step" in row else row["epoch"])
        for key, value in row.items():
            if key in ("epoch", "step") or not _number(value):
                continue
            if key not in logged:
                logged[key] = {m.step for m in registry.client.get_metric_history(run_id, key)}
            if step not in logged[key]:
                points.append(Metric(key, float(value), now, step))
    return points


def end_with_error(registry: Registry, run_id: str, error: BaseException) -> None:
    """FAILED (KILLED for Ctrl-C), with ``attune.error``: ``<type>: <message>``. Best effort: the
    error that ended the run matters more than one from the store."""
    status = "KILLED" if isinstance(error, (KeyboardInterrupt, SystemExit)) else "FAILED"
    text = f"{type(error).__name__}: {error}".strip()[:ERROR_TAG_MAX_CHARS]
    try:
        registry._write(lambda: registry.client.set_tag(run_id, TAG_ERROR, text), "tag error")
        registry._write(lambda: registry.client.set_terminated(run_id, status), "end run")
    except Exception as exc:  # noqa: BLE001 - see the docstring
        logger.warning("could not mark MLflow run %s %s (%s); it was: %s", run_id, status, exc, text[:300])


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value == value  # not NaN
