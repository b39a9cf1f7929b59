"""What each trial did, which one won, and how the search is kept in MLflow (through ``registry``).

The search is one parent run in the tenant's experiment; every trial is a nested child run with
its parameters, per-epoch metrics (step = epoch) and outcome. A trial's run opens when the trial
starts and gets each epoch's metrics as Tune receives them (:class:`TrialRuns`, a Tune callback on
the driver); it ends FINISHED when the trial exported its model, KILLED when the scheduler stopped
it, FAILED (with the error) when it crashed, and gets its final metrics when the search concludes.
The best trial's child run carries the exported model and is the source of the registered version.
The parent records the search settings, the best configuration, a table of all trials
(``trials.json``, ``trials.csv``) and a picture of every trial's validation curve with ASHA's
rungs (``figures/validation_curves.png``).
"""
from __future__ import annotations

import csv
import io
import json
import logging
import math
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Optional, Sequence

from ray import tune as ray_tune
from ray.tune.result import AUTO_RESULT_KEYS

from registry import TAG_ERROR, LiveRun, Registry, RunRecord, run_name, tenant_model_name
from train import TenantData, run_record
from tune._figures import render_curves
from tune._job import TuneJob
from tune._trial import FINAL

logger = logging.getLogger("attune.tune")
Status = Literal["completed", "stopped_early", "failed"]
MLFLOW_STATUS = {"completed": "FINISHED", "stopped_early": "KILLED", "failed": "FAILED"}
TAG_TRIAL = "attune.trial_id"
TAG_TRIAL_STATUS = "attune.trial.status"  # set when the trial's outcome is logged (the search concluded)
EPOCH_KEYS = ("train_loss", "val_macro_f1", "train_steps")
# Per-epoch keys (logged as curves) and what Tune adds to every result: not a trial's final metrics.
_NOT_FINAL = {"epoch", FINAL, "done", *EPOCH_KEYS, *AUTO_RESULT_KEYS}


@dataclass
class TrialOutcome:
    """One trial as the search saw it."""

    trial_id: str
    params: dict
    status: Status
    history: list[dict] = field(default_factory=list)  # one row per epoch: epoch, train_loss, val_macro_f1, ...
    final: dict = field(default_factory=dict)  # the completed trial's last result (test metrics, export)
    error: Optional[str] = None
    record: Optional[dict] = None  # what the trial wrote when it finished (tune._trial)

    def score(self, metric: str) -> Optional[float]:
        value = self.final.get(metric)  # only a trial that exported a model has final metrics
        return None if value is None or (isinstance(value, float) and math.isnan(value)) else float(value)

    @property
    def train_steps(self) -> int:
        """Optimizer steps the trial's model took (cumulative across restarts; what the search spent on it)."""
        steps = [row.get("train_steps", 0) for row in self.history] + [self.final.get("train_steps", 0)]
        return int(max(steps))

    def head_warmup_steps(self, fixed: int) -> int:
        """Head-only (LP-FT) micro-batches the trial ran before its optimizer steps: its sampled
        ``head_warmup_steps``, else the job's; none if it never reached a result."""
        ran = self.history or self.final
        return int(self.params.get("head_warmup_steps", fixed)) if ran else 0

    def row(self, metric: str) -> dict:
        """This trial's line in the parent run's table."""
        last = self.history[-1] if self.history else {}
        return {"trial_id": self.trial_id, "status": self.status, metric: self.score(metric),
                "epochs": len(self.history), "last_val_macro_f1": last.get("val_macro_f1"),
                "train_steps": self.train_steps, **{f"param.{k}": v for k, v in sorted(self.params.items())},
                "error": (self.error or "")[:300]}


def collect_outcomes(grid, records: dict[str, dict]) -> list[TrialOutcome]:
    """Trial outcomes from a Tune ResultGrid plus the trials' own finish records."""
    outcomes = []
    for result in grid:
        metrics = dict(result.metrics or {})
        trial_id = metrics["trial_id"]
        record = records.get(trial_id)
        final = metrics if metrics.get(FINAL) else (record or {}).get("result", {})
        status: Status = "failed" if result.error is not None else ("completed" if final else "stopped_early")
        rows = _epoch_rows(result.metrics_dataframe)
        outcomes.append(TrialOutcome(trial_id=trial_id, params=dict(result.config or {}), status=status,
                                     history=_export_history(final, rows) if status == "completed" else rows,
                                     final=final if status == "completed" else {},
                                     error=None if result.error is None else _error_text(result.error),
                                     record=record))
    return sorted(outcomes, key=lambda o: o.trial_id)


def _epoch_rows(frame) -> list[dict]:
    if frame is None or "epoch" not in frame:
        return []
    rows: dict[int, dict] = {}
    for row in frame.to_dict("records"):
        if row.get(FINAL) == 1 or row.get("epoch") is None or math.isnan(row["epoch"]):
            continue
        rows[int(row["epoch"])] = {"epoch": int(row["epoch"]),
                                   **{k: float(row[k]) for k in EPOCH_KEYS if _number(row.get(k))}}
    return [rows[e] for e in sorted(rows)]


def _export_history(final: dict, rows: list[dict]) -> list[dict]:
    """The exported model's per-epoch history (its manifest: every epoch, even across restarts and PBT
    exploits, which Tune's own result files do not keep), with Tune's step counts where it has them."""
    from train import read_manifest

    try:
        history = read_manifest(Path(final["export_checkpoint"]) / "model")["history"]
    except Exception:  # noqa: BLE001 - an export without a readable manifest: use what Tune kept
        return rows
    steps = {row["epoch"]: row["train_steps"] for row in rows if "train_steps" in row}
    return [{"epoch": int(h["epoch"]), **{k: float(h[k]) for k in EPOCH_KEYS if _number(h.get(k))},
             **({"train_steps": float(steps[h["epoch"]])} if h["epoch"] in steps else {})} for h in history]


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and not math.isnan(value)


def _error_text(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[-1] if text else type(error).__name__


def pick_best(outcomes: list[TrialOutcome], metric: str) -> Optional[TrialOutcome]:
    """The completed trial with the highest ``metric`` (ties: the one that trained least)."""
    scored = [o for o in outcomes if o.score(metric) is not None]
    return max(scored, key=lambda o: (o.score(metric), -o.train_steps), default=None)


class SearchTracker:
    """The MLflow side of one search: parent run, child runs and the summary, all via the registry."""

    def __init__(self, registry: Registry, job: TuneJob, dataset: TenantData, parent_run_id: Optional[str] = None):
        self.registry, self.job, self.dataset = registry, job, dataset
        self.experiment = tenant_model_name(job.tenant)
        self.parent_run_id = parent_run_id

    def start(self, run_name: str) -> str:
        job = self.job
        params = {**job.fixed_params(), "trials": job.trials, "scheduler": job.scheduler, "search": job.search,
                  **({"asha.rungs": job.rungs, "asha.reduction_factor": job.reduction_factor}
                     if job.scheduler == "asha" else {}),
                  "metric": job.metric, "max_concurrent": job.max_concurrent, "time_budget_s": job.time_budget_s,
                  **{f"space.{k}": v for k, v in job.space.summary().items()}}
        tags = {**self.record(run_name, {}, {}, []).tags, "attune.search.scheduler": job.scheduler,
                "attune.search.searcher": job.search}
        self.parent_run_id = self.registry.start_run(self.experiment, run_name, tags, params)
        return self.parent_run_id

    def record(self, run_name: str, params: dict, metrics: dict, history: list,
               tags: Optional[dict] = None, figures: Sequence[Path] = ()) -> RunRecord:
        job = self.job
        base = self.registry.pin_base(job.base) if job.base.startswith("models:/") else job.base
        record = run_record("tune", run_name, params, metrics, history, tenant=job.tenant, base=base,
                            method=job.method, data_uri=job.data, dataset=self.dataset, figures=figures)
        return record.model_copy(update={"extra_tags": {k: str(v) for k, v in (tags or {}).items()}})

    def trial_record(self, outcome: TrialOutcome, figures: Sequence[Path] = ()) -> RunRecord:
        """A trial's child run; ``figures``: the exported trial's pictures (``train.render_figures``)."""
        config = self.job.finetune_config(outcome.params).model_dump(mode="json", exclude={"out"})
        metrics = {k: v for k, v in outcome.final.items() if _number(v) and k not in _NOT_FINAL}
        vals = [row["val_macro_f1"] for row in outcome.history if "val_macro_f1" in row]
        if vals:
            metrics.setdefault("best_val_macro_f1", max(vals))
        metrics["train_steps"] = outcome.train_steps
        record = outcome.record or {}
        tags = {TAG_TRIAL: outcome.trial_id, TAG_TRIAL_STATUS: outcome.status,
                "attune.trial.finished_at": record.get("finished_at", ""),
                "attune.trial.started_from": record.get("started_from") or "",
                "attune.trial.exported_after_time_budget": str(bool(record.get("exported_after_time_budget"))).lower(),
                "attune.trial.error": (outcome.error or "")[:1000]}
        live = self.trial_runs().get(outcome.trial_id)
        name = live["run_name"] if live else trial_run_name(self.job, outcome.trial_id)
        return self.record(name, config, metrics, outcome.history, tags, figures).model_copy(
            update={"run_id": live["run_id"] if live else None})

    def trial_runs(self) -> dict[str, dict]:
        """Trial id -> the trial's child run (opened live by :class:`TrialRuns`, or logged at the end)."""
        children = self.registry.runs(self.experiment, parent_run_id=self.parent_run_id)
        return {run["tags"][TAG_TRIAL]: run for run in children if TAG_TRIAL in run["tags"]}

    def logged_trials(self) -> set[str]:
        """Trials whose outcome is logged (a live run still waiting for it is not)."""
        return {trial for trial, run in self.trial_runs().items() if TAG_TRIAL_STATUS in run["tags"]}

    def log_trials(self, outcomes: list[TrialOutcome], skip: str = "") -> None:
        """Each trial's outcome, once: its live run is completed and ended with it, or a run is logged for a
        trial that has none (``skip``: the best trial, whose registration completes its run)."""
        done = self.logged_trials()
        for outcome in outcomes:
            if outcome.trial_id in done or outcome.trial_id == skip:
                continue
            record, status = self.trial_record(outcome), MLFLOW_STATUS[outcome.status]
            if record.run_id is None:
                self.registry.log_run(self.experiment, record, parent_run_id=self.parent_run_id, status=status)
                continue
            if outcome.error:
                record = record.model_copy(update={"extra_tags": {**record.extra_tags, TAG_ERROR: outcome.error}})
            self.registry.finish_run(record.run_id, record, status)

    def finish(self, outcomes: list[TrialOutcome], best: Optional[TrialOutcome], summary: dict) -> None:
        metric = self.job.metric
        counts = {s: sum(o.status == s for o in outcomes) for s in MLFLOW_STATUS}
        metrics = {"trials": len(outcomes), **counts, "train_steps_total": sum(o.train_steps for o in outcomes)}
        params, tags = {}, {}
        if best is not None:
            metrics[f"best_{metric}"] = best.score(metric)
            params = {f"best.{k}": v for k, v in best.params.items()}
            tags = {"attune.best_trial_id": best.trial_id, "attune.best_config": json.dumps(best.params),
                    "attune.model_version": summary.get("model_version", ""),
                    "attune.promotion.promoted": str((summary.get("promotion") or {}).get("promoted", False)).lower()}
        rows = [o.row(metric) for o in outcomes]
        documents = {"trials.json": rows, "trials.csv": _csv(rows),
                     "best_config.json": {"trial_id": best.trial_id, "config": best.params, metric: best.score(metric)}
                     if best else {}}
        rungs = self.job.rungs if self.job.scheduler == "asha" else []
        with tempfile.TemporaryDirectory(prefix="attune-figures-") as folder:
            figures = render_curves(outcomes, rungs, best.trial_id if best else None, Path(folder))
            self.registry.end_run(self.parent_run_id, "FINISHED" if best else "FAILED", metrics=metrics,
                                  params=params, tags=tags, documents=documents, figures=figures)

    def abandon(self, run_id: str) -> None:
        """End an interrupted search's parent run, and its trials' open runs, that a fresh search replaces."""
        try:
            for child in self.registry.runs(self.experiment, parent_run_id=run_id):
                if child["status"] == "RUNNING":
                    self.registry.end_run(child["run_id"], "KILLED", tags={TAG_ERROR: "the search was replaced"})
            self.registry.end_run(run_id, "KILLED", tags={"attune.search.replaced": "true"})
        except Exception as exc:  # noqa: BLE001 - e.g. erased with the tenant; the new search matters more
            logger.warning("could not close the interrupted search's run %s: %s", run_id, exc)


def trial_run_name(job: TuneJob, trial_id: str, when=None) -> str:
    """``tune-<tenant>-<method>-<trial id>-<time>``."""
    return run_name("tune", job.tenant, f"{job.method}-{trial_id}", when)


class TrialRuns(ray_tune.Callback):
    """On the driver: opens each trial's child run when the trial starts, logs every epoch's result as Tune
    receives it (step = epoch, stamped now), and ends the run when the trial ends (FINISHED with its model
    exported, KILLED when stopped early, FAILED with the error). The search's conclusion adds the final
    metrics (:meth:`SearchTracker.log_trials`). Pickled with the Tuner for ``--resume``: it keeps where
    the store is, not a client."""

    def __init__(self, tracker: SearchTracker):
        reg = tracker.registry
        self.store = (reg.tracking_uri, reg.artifact_root, reg.backend_store_uri)
        self.experiment, self.parent_run_id = tracker.experiment, tracker.parent_run_id
        self.job, self.opening = tracker.job, tracker.record("", {}, {}, [])
        self.runs: dict[str, str] = {}
        self.epochs: dict[str, set[int]] = {}  # logged per trial: an epoch redone after a restart is logged once
        self._registry: Optional[Registry] = reg

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_registry": None, "runs": {}, "epochs": {}}

    @property
    def registry(self) -> Registry:
        if self._registry is None:
            self._registry = Registry(*self.store)
        return self._registry

    def on_trial_start(self, iteration, trials, trial, **info):
        self._quietly("open", lambda: self._open(trial))

    def on_trial_result(self, iteration, trials, trial, result, **info):
        run_id, epochs = self.runs.get(trial.trial_id), self.epochs.get(trial.trial_id, set())
        if run_id is None or result.get(FINAL) or not _number(result.get("epoch")) or result["epoch"] in epochs:
            return
        metrics = {k: result[k] for k in EPOCH_KEYS if _number(result.get(k))}
        live = LiveRun(self.registry, run_id, trial.trial_id)
        self._quietly("log", lambda: live.log_metrics(metrics, step=int(result["epoch"]),
                                                      timestamp_ms=int(time.time() * 1000)))
        epochs.add(int(result["epoch"]))

    def on_trial_complete(self, iteration, trials, trial, **info):
        status = "FINISHED" if (trial.last_result or {}).get(FINAL) else "KILLED"
        self._end(trial, status, {})

    def on_trial_error(self, iteration, trials, trial, **info):
        error = trial.get_error()
        self._end(trial, "FAILED", {TAG_ERROR: _error_text(error) if error else "the trial failed"})

    def _open(self, trial) -> None:
        if trial.trial_id in self.runs:
            return
        found = [r for r in self.registry.runs(self.experiment, parent_run_id=self.parent_run_id)
                 if r["tags"].get(TAG_TRIAL) == trial.trial_id]  # a resumed search: the trial's run goes on
        if found:
            self.runs[trial.trial_id] = found[0]["run_id"]
            self.epochs[trial.trial_id] = {step for step, _ in self.registry.metric_history(found[0]["run_id"],
                                                                                         "val_macro_f1")}
            return
        config = self.job.finetune_config(dict(trial.config)).model_dump(mode="json", exclude={"out"})
        record = self.opening.model_copy(update={"run_name": trial_run_name(self.job, trial.trial_id),
                                                 "params": config, "extra_tags": {TAG_TRIAL: trial.trial_id}})
        self.runs[trial.trial_id] = self.registry.open_run(self.experiment, record, self.parent_run_id).run_id
        self.epochs[trial.trial_id] = set()

    def _end(self, trial, status: str, tags: dict) -> None:
        run_id = self.runs.get(trial.trial_id)
        if run_id is not None:
            self._quietly("end", lambda: self.registry.end_run(run_id, status, tags=tags))

    def _quietly(self, what: str, fn) -> None:
        try:
            fn()
        except Exception as exc:  # noqa: BLE001 - tracking never stops a search; the conclusion logs outcomes
            logger.warning("could not %s a trial's MLflow run: %s", what, exc)


def _csv(rows: list[dict]) -> str:
    columns = sorted({key for row in rows for key in row}, key=lambda k: (k != "trial_id", k))
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=columns)
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()
