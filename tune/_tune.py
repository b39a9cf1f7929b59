"""The driver side of ``attune tune``: validate, search, hand the best trial's model to the registry.

Everything checkable on the driver (job, space, data, base model, whether a trial fits on the
cluster) is checked before the MLflow parent run is opened, so bad input leaves nothing behind.
The Tune experiment lives in ``$ATTUNE_HOME/ray_results/tune-<tenant>`` with ``attune-search.json``
(the parent run id, the job, the data hash), which is what ``--resume`` continues.
"""
from __future__ import annotations

import datetime as _dt
import json
import logging
import os
import shutil
import socket
import tempfile
import time
from pathlib import Path
from typing import Optional

from cluster import Settings, get_settings, init_ray
from train import (
    TenantData,
    copy_export,
    load_tenant_data,
    read_figure_data,
    register_and_gate,
    render_figures,
    resolve_base,
    uses_gpu,
)
from tune._budget import budget_reached, finish_best_so_far
from tune._errors import TuneError, TuneUsageError
from tune._job import TuneJob
from tune._leftovers import live_groups, remove_new_groups
from tune._search import build_tuner, can_restore, experiment_path, max_concurrent_trials
from tune._trial import TRAIN_RUNS_DIR, read_records

logger = logging.getLogger("attune.tune")
STATE_FILE = "attune-search.json"


def tune_tenant(job: TuneJob, *, settings: Optional[Settings] = None, resume: bool = False,
                dataset: Optional[TenantData] = None) -> dict:
    """Run (or, with ``resume``, continue) one tenant's search; returns the ``--json`` summary."""
    settings = settings or get_settings()
    dataset = dataset or load_tenant_data(job.data, endpoint_url=settings.s3_endpoint_url)
    exp_dir = experiment_path(job, settings)
    state = _read_state(exp_dir)
    _not_running_elsewhere(job, state, exp_dir)
    if resume:
        job = _resumable(job, state, exp_dir, dataset)
    _check_inputs(job, dataset)
    init_ray(settings)
    max_concurrent = _concurrency(job)
    from registry import Registry
    from tune._tracking import SearchTracker

    registry = Registry.from_settings(settings)
    if resume:
        tracker = SearchTracker(registry, job, dataset, state["parent_run_id"])
        _write_state(exp_dir, {**state, "driver": _driver()})
        logger.info("resuming the search for %s in %s (parent run %s)", job.tenant, exp_dir, state["parent_run_id"])
    else:
        tracker = _fresh_search(registry, job, dataset, exp_dir, state, max_concurrent)
    started = time.monotonic()
    os.environ.setdefault("TUNE_DISABLE_SIGINT_HANDLER", "1")  # Ctrl-C interrupts; --resume continues
    before = live_groups()
    grid = build_tuner(job, settings, dataset, max_concurrent=max_concurrent, restore=resume).fit()
    fit_seconds = time.monotonic() - started
    remove_new_groups(before)  # what trials cut while starting left reserved (tune._leftovers)
    return _conclude(job, settings, dataset, tracker, grid, exp_dir, fit_seconds,
                     budget_reached(job.time_budget_s, fit_seconds))


def _check_inputs(job: TuneJob, dataset: TenantData) -> None:
    resolve_base(job.base)
    job.finetune_config({})  # the fixed options alone must make a valid fine-tuning config
    for name in ("train", "validation", "test"):
        if not getattr(dataset, name):
            raise TuneUsageError(f"{job.data}: the {name} split is empty; add more rows (splits are 80/10/10)")


def _concurrency(job: TuneJob) -> int:
    import ray

    cluster = ray.cluster_resources()
    use_gpu = uses_gpu(job.use_gpu, job.num_workers, cluster)
    limit = max_concurrent_trials(cluster, job.num_workers, use_gpu, job.max_concurrent, job.trials)
    rungs = f" (rungs at epochs {job.rungs}, top 1/{job.reduction_factor:g} goes on)" if job.scheduler == "asha" else ""
    logger.info("search for %s: %d trial(s), %s%s + %s, up to %d at a time (%d worker(s) each, %g CPUs in the "
                "cluster), metric %s", job.tenant, job.trials, job.scheduler, rungs, job.search, limit,
                job.num_workers, cluster.get("CPU", 0), job.metric)
    return limit


def _resumable(job: TuneJob, state: Optional[dict], exp_dir: Path, dataset: TenantData) -> TuneJob:
    if state is None or not can_restore(exp_dir):
        raise TuneUsageError(f"there is no interrupted search for tenant {job.tenant!r} in {exp_dir} to resume; "
                        f"start one without --resume")
    if state["status"] != "running":
        raise TuneUsageError(f"the search for tenant {job.tenant!r} in {exp_dir} already {state['status']}; "
                        "start a new one without --resume")
    if state["data_hash"] != dataset.data_hash:
        raise TuneUsageError(f"{job.data} changed since the search started (data hash {dataset.data_hash[:12]}, "
                        f"was {state['data_hash'][:12]}); start a new search without --resume")
    recorded = TuneJob(**state["job"])
    if recorded.model_dump(exclude={"data"}) != job.model_dump(exclude={"data"}):
        logger.info("resuming with the search's original settings (flags other than --tenant/--data are ignored)")
    return recorded.model_copy(update={"data": job.data})


def _fresh_search(registry, job: TuneJob, dataset: TenantData, exp_dir: Path, state: Optional[dict],
                  max_concurrent: int):
    from tune._tracking import SearchTracker

    tracker = SearchTracker(registry, job, dataset)
    if state is not None and state.get("status") == "running":
        logger.warning("replacing the interrupted search in %s (pass --resume to continue it instead)", exp_dir)
        tracker.abandon(state["parent_run_id"])
    shutil.rmtree(exp_dir, ignore_errors=True)
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%S")
    tracker.start(f"{job.experiment_name}-{stamp}")
    _write_state(exp_dir, {"status": "running", "tenant": job.tenant, "parent_run_id": tracker.parent_run_id,
                           "data_hash": dataset.data_hash, "max_concurrent": max_concurrent,
                           "job": job.model_dump(mode="json"), "driver": _driver()})
    return tracker


def _conclude(job: TuneJob, settings: Settings, dataset: TenantData, tracker, grid, exp_dir: Path,
              seconds: float, budget_cut: bool) -> dict:
    """Pick the best trial, register its model (the same gate as finetune), log every trial, clean up."""
    from tune._tracking import collect_outcomes, pick_best

    outcomes = collect_outcomes(grid, read_records(exp_dir))
    state = _read_state(exp_dir) or {}
    exported = None
    if budget_cut and not state.get("handoff"):
        checkpoints = {r.metrics["trial_id"]: r.checkpoint.path for r in grid if r.checkpoint and r.metrics}
        try:
            exported = finish_best_so_far(job, settings, dataset, outcomes, checkpoints, exp_dir)
        except TuneError:
            _close_failed(tracker, outcomes, exp_dir, state)
            raise
    best = pick_best(outcomes, job.metric)
    if best is None:
        _close_failed(tracker, outcomes, exp_dir, state)
        failures = "; ".join(f"{o.trial_id}: {o.error}" for o in outcomes if o.error)[:2000]
        raise TuneError(f"no trial of the search for {job.tenant!r} finished training ({len(outcomes)} trial(s): "
                        f"{_counts(outcomes)}){'; errors: ' + failures if failures else ''}. Allow more time "
                        "(--time-budget-s) or check the trial errors above")
    handoff = state.get("handoff") or _handoff(job, settings, dataset, tracker, best, exp_dir)
    _write_state(exp_dir, {**state, "handoff": handoff})
    tracker.log_trials(outcomes, skip=best.trial_id)
    summary = {
        "tenant": job.tenant, "best_config": best.params, "best_metric": best.score(job.metric),
        "trials": len(outcomes), "stopped_early": sum(o.status == "stopped_early" for o in outcomes),
        **handoff, "metric": job.metric, "best_trial_id": best.trial_id,
        "failed": sum(o.status == "failed" for o in outcomes), "completed": sum(o.status == "completed"
                                                                                for o in outcomes),
        "train_steps": sum(o.train_steps for o in outcomes),
        "head_warmup_steps": sum(o.head_warmup_steps(job.head_warmup_steps) for o in outcomes),
        "parent_run_id": tracker.parent_run_id,
        "search_seconds": round(seconds, 2), "scheduler": job.scheduler, "search": job.search,
        "time_budget_reached": budget_cut, "exported_after_time_budget": exported.trial_id if exported else None,
        "trial_results": [o.row(job.metric) for o in outcomes],
    }
    tracker.finish(outcomes, best, summary)
    _write_state(exp_dir, {**state, "handoff": handoff, "status": "finished"})
    shutil.rmtree(exp_dir / TRAIN_RUNS_DIR, ignore_errors=True)  # every trial's checkpoints and exports
    return summary


def _close_failed(tracker, outcomes, exp_dir: Path, state: dict) -> None:
    """The search ends without a model: its trials are logged, its parent run closed, its state failed."""
    tracker.log_trials(outcomes)
    tracker.finish(outcomes, None, {})
    _write_state(exp_dir, {**state, "status": "failed"})


def _handoff(job: TuneJob, settings: Settings, dataset: TenantData, tracker, best, exp_dir: Path) -> dict:
    """Copy the best trial's export out of its Train run and register it as the tenant's next version."""
    export = best.final.get("export_checkpoint")
    if not export or not (Path(export) / "model").is_dir():
        raise TuneError(f"the best trial {best.trial_id} has no exported model at {export!r}; "
                        f"its run folder under {exp_dir / TRAIN_RUNS_DIR} is missing")
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%S")
    out_dir = settings.models_dir / job.tenant / f"tune-{stamp}"
    copy_export(Path(export) / "model", out_dir)
    margin = settings.promotion_margin if job.promotion_margin is None else job.promotion_margin
    floor = settings.promotion_floor if job.promotion_floor is None else job.promotion_floor
    logger.info("best trial %s (%s %.4f); registering %s as %s's next version", best.trial_id, job.metric,
                best.score(job.metric), out_dir, job.tenant)
    with tempfile.TemporaryDirectory(prefix="attune-figures-") as folder:  # the fine-tune's two pictures
        record = tracker.trial_record(best, render_figures(read_figure_data(Path(export)), Path(folder)))
        gated = register_and_gate(tracker.registry, job.tenant, out_dir, record, dataset, promote=job.promote,
                                  margin=margin, floor=floor, parent_run_id=tracker.parent_run_id)
    return {"model_version": gated["model_version"], "alias": gated["alias"], "promotion": gated["promotion"],
            "model_dir": str(out_dir.resolve())}


def _driver() -> dict:
    return {"host": socket.gethostname(), "pid": os.getpid()}


def _not_running_elsewhere(job: TuneJob, state: Optional[dict], exp_dir: Path) -> None:
    """Two drivers on one experiment would corrupt it: refuse while the recorded one is alive here."""
    driver = (state or {}).get("driver") or {}
    if (state or {}).get("status") != "running" or driver.get("host") != socket.gethostname():
        return
    pid = int(driver.get("pid", 0))
    try:
        alive = pid != os.getpid() and " tune " in f" {Path(f'/proc/{pid}/cmdline').read_text().replace(chr(0), ' ')} "
    except OSError:
        alive = False
    if alive:
        raise TuneUsageError(f"a search for tenant {job.tenant!r} is already running in {exp_dir} (pid {pid}); "
                             "wait for it to finish, or stop it and continue it with --resume")


def _counts(outcomes) -> str:
    return ", ".join(f"{sum(o.status == s for o in outcomes)} {s}" for s in ("completed", "stopped_early", "failed"))


def _read_state(exp_dir: Path) -> Optional[dict]:
    path = exp_dir / STATE_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def _write_state(exp_dir: Path, state: dict) -> None:
    exp_dir.mkdir(parents=True, exist_ok=True)
    tmp = exp_dir / f".{STATE_FILE}.tmp"
    tmp.write_text(json.dumps(state, indent=2, default=str))
    tmp.replace(exp_dir / STATE_FILE)
