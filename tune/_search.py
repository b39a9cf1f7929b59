"""Building the Ray Tune search: resources and concurrency, scheduler, searcher, the Tuner itself."""
from __future__ import annotations

import functools
import logging
import math
from pathlib import Path
from typing import Optional

from ray import tune as ray_tune
from ray.tune.schedulers import PopulationBasedTraining, TrialScheduler
from ray.tune.search.optuna import OptunaSearch

from cluster import ProgressView
from tune._asha import PromotionASHA, RungRecords
from tune._errors import TuneUsageError
from tune._job import TuneJob

logger = logging.getLogger("attune.tune")

TUNE_METRIC = "best_val_macro_f1"  # what ASHA and the searchers rank trials by (see ranking_metric)
TIME_ATTR = "epoch"
# A trial's function only drives its Ray Train run (like Train V2's own controller, which Ray
# schedules with 0 CPUs): it needs memory, not a CPU. The training workers take the CPUs.
DRIVER_MEMORY_BYTES = 256 * 1024**2


def ranking_metric(scheduler: str) -> str:
    """What the scheduler and the searcher compare trials by, every epoch.

    A trial exports its best epoch's weights, so ASHA (and FIFO's searcher) rank what a trial has
    reached so far: its best validation macro-F1 to date. Ranking the latest epoch instead stops a
    trial whose score dipped for one epoch after its best, and throws that best model away. PBT
    copies a trial's current weights, so it ranks the latest epoch's ``val_macro_f1``.
    """
    return "val_macro_f1" if scheduler == "pbt" else TUNE_METRIC


def trial_resources(num_workers: int, use_gpu: bool) -> dict[str, float]:
    """What one running trial holds: its workers (1 CPU each, plus 1 GPU each on GPUs) and its driver."""
    needs = {"CPU": float(num_workers), "memory": float(DRIVER_MEMORY_BYTES)}
    if use_gpu:
        needs["GPU"] = float(num_workers)
    return needs


def max_concurrent_trials(cluster: dict[str, float], num_workers: int, use_gpu: bool,
                          requested: Optional[int], trials: int) -> int:
    """How many trials may run at once without oversubscribing the cluster (never more than asked)."""
    needs = trial_resources(num_workers, use_gpu)
    fits = min(math.floor(cluster.get(name, 0.0) / amount + 1e-9) for name, amount in needs.items() if amount)
    if fits < 1:
        have = ", ".join(f"{name} {cluster.get(name, 0):g}" for name in needs)
        want = ", ".join(f"{name} {amount:g}" for name, amount in needs.items())
        raise TuneUsageError(f"one trial needs {want} (--workers {num_workers}) but the cluster has {have}; "
                        "lower --workers or add nodes")
    return max(1, min(fits, requested or fits, trials))


class EpochPBT(PopulationBasedTraining):
    """PBT every epoch, except at a trial's own last epoch or final result: exploiting then would
    only replace a finished model with a copy of another, and pausing it would restart a run
    whose training is over."""

    def __init__(self, *, default_epochs: int, **kwargs):
        super().__init__(**kwargs)
        self._default_epochs = default_epochs

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        if _at_its_end(trial, result, self._default_epochs):
            return TrialScheduler.CONTINUE
        return super().on_trial_result(tune_controller, trial, result)


def _at_its_end(trial, result: dict, default_epochs: int) -> bool:
    """The trial's last epoch or its final result (the trial's ``epochs``, else the job's)."""
    return bool(result.get("final")) or result.get(TIME_ATTR, 0) >= int(trial.config.get("epochs", default_epochs))


def build_scheduler(job: TuneJob):
    """ASHA (promotion form, see ``tune._asha``), PBT or FIFO."""
    from ray.tune.schedulers import FIFOScheduler

    if job.scheduler == "asha":
        return PromotionASHA(rungs=job.rungs, reduction_factor=job.reduction_factor,
                             metric=ranking_metric(job.scheduler), time_attr=TIME_ATTR,
                             at_its_end=functools.partial(_at_its_end, default_epochs=job.max_epochs))
    if job.scheduler == "pbt":
        return EpochPBT(default_epochs=job.max_epochs, time_attr=TIME_ATTR, perturbation_interval=1,
                        hyperparam_mutations=job.space.mutations(), quantile_fraction=0.5,
                        resample_probability=0.25, log_config=False)
    return FIFOScheduler()


def tpe_startup_trials(trials: int) -> int:
    """How many of a search's trials TPE samples at random before it models the results.

    Optuna's default is 10 whatever the budget, so a search of 10 trials or fewer (attune's
    default is 8) would never use TPE at all. A quarter of the trials, at least 3 and at most
    Optuna's 10, leaves TPE most of a small search and keeps Optuna's behaviour for large ones.
    """
    return max(3, min(10, trials // 4))


def build_searcher(job: TuneJob, max_concurrent: int):
    """Optuna's TPE or seeded random sampling, at most ``max_concurrent`` live trials. Under ASHA,
    TPE learns every trial's score at the first rung (see :class:`RungOptunaSearch`)."""
    from ray.tune.search import BasicVariantGenerator, ConcurrencyLimiter

    if job.search == "optuna":
        from optuna.samplers import TPESampler

        sampler = TPESampler(seed=job.seed, n_startup_trials=tpe_startup_trials(job.trials))
        searcher = (RungOptunaSearch(rung=job.grace_period, sampler=sampler) if job.scheduler == "asha"
                    else OptunaSearch(sampler=sampler))
        return ConcurrencyLimiter(searcher, max_concurrent=max_concurrent)
    # a generator, not a Searcher: Tune ignores TuneConfig.max_concurrent_trials for it, so limit it here
    return BasicVariantGenerator(random_state=job.seed, max_concurrent=max_concurrent)


class RungOptunaSearch(OptunaSearch):
    """Ray's OptunaSearch, told each trial's score once the trial reaches epoch ``rung`` (ASHA's
    first rung), not when it ends.

    Under ASHA the trials that end first are the ones it stopped, and the strong ones run on for
    many epochs, so plain OptunaSearch models mostly the losers (at the rung where they stopped)
    and learns of a winner only when it finishes. Told at the first rung, TPE sees every trial at
    the same budget, strong ones included, as soon as that budget is spent (BOHB's model on its
    smallest budget). Later epochs are still ASHA's to judge. A trial that ends before the rung
    (a short trial, or one that failed) is told when it ends, as usual.
    """

    def __init__(self, *, rung: int, **kwargs):
        super().__init__(**kwargs)
        self.rung = rung

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if trial_id in self._completed_trials:
            return  # told at the rung already
        super().on_trial_result(trial_id, result)
        if not result.get("final") and result.get(TIME_ATTR, 0) >= self.rung:
            super().on_trial_complete(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: Optional[dict] = None, error: bool = False) -> None:
        if trial_id not in self._completed_trials:
            super().on_trial_complete(trial_id, result, error)


def build_tuner(job: TuneJob, settings, dataset, *, max_concurrent: int, restore: bool):
    """A new Tuner for ``job``, or (``restore``) the interrupted one in the tenant's experiment dir."""
    from tune._trial import trainable as trial_trainable

    experiment_dir = experiment_path(job, settings)
    metric = ranking_metric(job.scheduler)
    trainable = ray_tune.with_resources(
        trial_trainable(job=job.model_dump(mode="json"), dataset=dataset, settings=settings.model_dump(mode="json"),
                        experiment_dir=str(experiment_dir)),
        {"CPU": 0, "memory": DRIVER_MEMORY_BYTES})
    if restore:
        return ray_tune.Tuner.restore(str(experiment_dir), trainable=trainable, resume_unfinished=True,
                                      resume_errored=False, restart_errored=False)
    scheduler = build_scheduler(job)
    # ASHA's rung records are checkpointed with Tune's experiment state, for --resume
    kept = [RungRecords(scheduler)] if isinstance(scheduler, PromotionASHA) else []
    return ray_tune.Tuner(
        trainable,
        param_space=job.space.param_space(),
        tune_config=ray_tune.TuneConfig(
            metric=metric, mode="max", search_alg=build_searcher(job, max_concurrent),
            scheduler=scheduler, num_samples=job.trials, time_budget_s=job.time_budget_s),
        run_config=ray_tune.RunConfig(
            name=job.experiment_name, storage_path=str(settings.ray_storage_dir), verbose=0,
            failure_config=ray_tune.FailureConfig(max_failures=0, fail_fast=False),
            checkpoint_config=ray_tune.CheckpointConfig(num_to_keep=4 if job.scheduler == "pbt" else 1),
            callbacks=[SearchProgress(job.trials, settings.progress_interval_s, metric, job.tenant), *kept,
                       *trial_runs(job, settings, dataset, experiment_dir)]),
    )


def trial_runs(job: TuneJob, settings, dataset, experiment_dir: Path) -> list:
    """The callback that keeps each trial's MLflow run live (``tune._tracking.TrialRuns``), under the
    search's parent run, whose id the driver wrote in the experiment's state file before the search."""
    import json

    from registry import Registry
    from tune._tracking import SearchTracker, TrialRuns
    from tune._tune import STATE_FILE

    path = Path(experiment_dir) / STATE_FILE
    parent = json.loads(path.read_text()).get("parent_run_id") if path.is_file() else None
    if parent is None:
        return []
    return [TrialRuns(SearchTracker(Registry.from_settings(settings), job, dataset, parent))]


def experiment_path(job: TuneJob, settings) -> Path:
    return Path(settings.ray_storage_dir) / job.experiment_name


def can_restore(path: Path) -> bool:
    return path.is_dir() and ray_tune.Tuner.can_restore(str(path))


class SearchProgress(ray_tune.Callback):
    """The search as the user sees it (on the driver): one line per trial result and per ended trial,
    and the count of ended trials, as a bar on a terminal or a status line at least every interval."""

    def __init__(self, total: int, interval_s: float = 10.0, metric: str = TUNE_METRIC, tenant: str = ""):
        self.total, self.metric = total, metric
        self.view = ProgressView(f"search {tenant}".strip(), "trials ended", logger, interval_s)
        self.best: Optional[tuple[float, str]] = None

    def on_trial_result(self, iteration, trials, trial, result, **info):
        score = result.get(self.metric)
        if score is None:
            return
        if self.best is None or score > self.best[0]:
            self.best = (score, trial.trial_id)
        what = "final (best epoch)" if result.get("final") else f"epoch {result.get(TIME_ATTR)}"
        best, best_trial = self.best
        self.view.line(f"trial {trial.trial_id} {what}: val_macro_f1 {result.get('val_macro_f1', score):.4f}, "
                       f"ranked by {self.metric} {score:.4f}  (search best {best:.4f}, trial {best_trial})")

    def on_trial_complete(self, iteration, trials, trial, **info):
        self.view.line(f"trial {trial.trial_id} ended ({_config_text(trial.config)}); {self._status(trials)}")
        self._show(trials)

    def on_trial_error(self, iteration, trials, trial, **info):
        self.view.line(f"trial {trial.trial_id} FAILED ({_config_text(trial.config)}); the search goes on; "
                       f"{self._status(trials)}", logging.WARNING)
        self._show(trials)

    def on_step_end(self, iteration, trials, **info):
        self._show(trials)

    def on_experiment_end(self, trials, **info):
        self.view.close()

    def _show(self, trials) -> None:
        counts = self._counts(trials)
        ended = counts.pop("TERMINATED", 0) + counts.pop("ERROR", 0)
        rest = ", ".join(f"{n} {s.lower()}" for s, n in sorted(counts.items()))
        best = f"best {self.best[0]:.4f} ({self.best[1]})" if self.best else ""
        self.view.step(ended, self.total, text="  ".join(t for t in (rest, best) if t), postfix=best)

    def _status(self, trials) -> str:
        counts = self._counts(trials)
        done = counts.get("TERMINATED", 0) + counts.get("ERROR", 0)
        parts = [f"{done}/{self.total} trials ended"] + [f"{n} {s.lower()}" for s, n in sorted(counts.items())]
        return ", ".join(parts)

    @staticmethod
    def _counts(trials) -> dict[str, int]:
        counts: dict[str, int] = {}
        for trial in trials:
            counts[trial.status] = counts.get(trial.status, 0) + 1
        return counts


def _config_text(config: dict) -> str:
    return " ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in sorted(config.items()))
