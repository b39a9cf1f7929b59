"""The search's building blocks without Ray running: concurrency, schedulers, searchers, best trial."""
import re

import pytest
from ray.tune.schedulers import PopulationBasedTraining, TrialScheduler

from tune import TuneError, TuneJob, default_space
from tune._search import (
    DRIVER_MEMORY_BYTES,
    build_scheduler,
    build_searcher,
    max_concurrent_trials,
    ranking_metric,
    tpe_startup_trials,
    trial_resources,
)
from tune._space import parse_space
from tune._tracking import TrialOutcome, pick_best
from tune._trial import _tune_metrics

GiB = 1024**3


def _job(**overrides) -> TuneJob:
    values = dict(tenant="john", data="john.jsonl", space=default_space("full", max_epochs=4))
    values.update(overrides)
    return TuneJob(**values)


def test_a_trial_holds_its_workers_cpus_and_its_drivers_memory():
    assert trial_resources(2, use_gpu=False) == {"CPU": 2.0, "memory": float(DRIVER_MEMORY_BYTES)}
    assert trial_resources(2, use_gpu=True)["GPU"] == 2.0


@pytest.mark.parametrize("cpus, workers, requested, trials, expected", [
    (2, 2, None, 8, 1),   # the 2-core machine: one 2-worker trial at a time
    (2, 1, None, 8, 2),
    (16, 2, None, 8, 8),
    (16, 2, 3, 8, 3),     # --max-concurrent caps it
    (16, 2, None, 2, 2),  # never more than there are trials
    (16, 2, 50, 8, 8),
])
def test_concurrency_never_oversubscribes(cpus, workers, requested, trials, expected):
    cluster = {"CPU": float(cpus), "memory": 8.0 * GiB}
    limit = max_concurrent_trials(cluster, workers, False, requested, trials)
    assert limit == expected
    assert limit * trial_resources(workers, False)["CPU"] <= cpus


def test_gpus_and_memory_limit_concurrency_too():
    cluster = {"CPU": 64.0, "GPU": 4.0, "memory": 64.0 * GiB}
    assert max_concurrent_trials(cluster, 2, True, None, 10) == 2
    starved = {"CPU": 64.0, "memory": 3.5 * DRIVER_MEMORY_BYTES}
    assert max_concurrent_trials(starved, 1, False, None, 10) == 3


def test_a_trial_that_cannot_fit_is_an_error_naming_the_flag():
    with pytest.raises(TuneError, match=r"--workers 4.*CPU 2"):
        max_concurrent_trials({"CPU": 2.0, "memory": 8.0 * GiB}, 4, False, None, 8)


@pytest.mark.parametrize("overrides, message", [
    (dict(grace_period=4), "--grace-period 4 is not below the trials' largest epoch count (4)"),
    (dict(grace_period=0), "greater than or equal to 1"),
    (dict(reduction_factor=1.0), "greater than or equal to 1.5"),
    (dict(scheduler="fifo", grace_period=2), "--scheduler fifo has none"),
    (dict(scheduler="pbt", search="random", reduction_factor=3.0), "--scheduler pbt has none"),
])
def test_bad_asha_settings_are_refused(overrides, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        _job(**overrides)


class _Trial:
    def __init__(self, trial_id: str, epochs: int):
        self.trial_id, self.config = trial_id, {"epochs": epochs}


def test_pbt_perturbs_only_what_can_change_mid_training_and_never_at_the_last_epoch():
    pbt = build_scheduler(_job(scheduler="pbt", search="random"))
    assert isinstance(pbt, PopulationBasedTraining)
    assert pbt._time_attr == "epoch" and pbt._perturbation_interval == 1
    assert set(pbt._hyperparam_mutations) == {"lr", "weight_decay"}
    pbt.set_search_properties("val_macro_f1", "max")
    last = _Trial("last", 2)  # at its last epoch PBT leaves it alone (before even looking it up)
    assert pbt.on_trial_result(None, last, {"epoch": 2, "val_macro_f1": 0.1}) == TrialScheduler.CONTINUE
    assert pbt.on_trial_result(None, last, {"epoch": 1, "val_macro_f1": 0.1, "final": 1}) == TrialScheduler.CONTINUE
    with pytest.raises(KeyError):  # before its last epoch it is PBT's to decide (and this one was never added)
        pbt.on_trial_result(None, last, {"epoch": 1, "val_macro_f1": 0.1})
    assert type(build_scheduler(_job(scheduler="fifo"))).__name__ == "FIFOScheduler"


def test_searchers_are_seeded_and_limited_to_the_concurrency():
    optuna = build_searcher(_job(search="optuna", seed=7), max_concurrent=2)
    assert type(optuna).__name__ == "ConcurrencyLimiter" and optuna.max_concurrent == 2
    assert type(optuna.searcher).__name__ == "RungOptunaSearch" and optuna.searcher.rung == 1  # asha
    assert type(build_searcher(_job(search="optuna", scheduler="fifo"), 2).searcher).__name__ == "OptunaSearch"
    assert optuna.searcher._sampler._n_startup_trials == 3  # 8 trials: TPE models the results from the 4th on
    assert [tpe_startup_trials(n) for n in (1, 8, 20, 40, 1000)] == [3, 3, 5, 10, 10]
    random = build_searcher(_job(search="random"), max_concurrent=3)
    assert type(random).__name__ == "BasicVariantGenerator" and random.max_concurrent == 3


def test_under_asha_tpe_learns_every_trial_at_the_first_rung_before_it_ends(tmp_path, caplog):
    """The strong trial is still running, yet TPE already holds its rung score; a stopped trial is
    told once; a trial that fails before the rung is told it failed; all this survives save/restore."""
    from optuna.trial import TrialState

    job = _job(search="optuna", seed=3, space=default_space("full", max_epochs=8), grace_period=2)
    searcher = build_searcher(job, max_concurrent=4).searcher
    searcher.set_search_properties(ranking_metric("asha"), "max", job.space.param_space())
    for trial_id in ("strong", "weak", "broken"):
        assert searcher.suggest(trial_id)["lr"] > 0

    def result(epoch, score, **extra):
        return {"epoch": epoch, "training_iteration": epoch, "best_val_macro_f1": score, **extra}
    searcher.on_trial_result("strong", result(1, 0.55))
    searcher.on_trial_result("weak", result(1, 0.30))
    assert all(t.state == TrialState.RUNNING for t in searcher._ot_study.trials)  # epoch 1 < the rung
    searcher.on_trial_result("strong", result(2, 0.61))
    searcher.on_trial_result("weak", result(2, 0.32))
    told = {t.number: (t.state, t.value) for t in searcher._ot_study.trials}
    assert told == {0: (TrialState.COMPLETE, 0.61), 1: (TrialState.COMPLETE, 0.32), 2: (TrialState.RUNNING, None)}
    searcher.on_trial_complete("weak", result(2, 0.32))  # ASHA stopped it at the rung: nothing new
    searcher.on_trial_result("strong", result(3, 0.66))  # later epochs are ASHA's, not TPE's
    searcher.on_trial_complete("broken", None, error=True)
    searcher.save(str(tmp_path / "searcher.pkl"))
    restored = build_searcher(job, max_concurrent=4).searcher
    restored.restore(str(tmp_path / "searcher.pkl"))
    restored.on_trial_complete("strong", result(8, 0.70, final=1))
    states = [(t.state, t.value) for t in restored._ot_study.trials]
    assert states == [(TrialState.COMPLETE, 0.61), (TrialState.COMPLETE, 0.32), (TrialState.FAIL, None)]
    assert restored.rung == 2 and "already finished" not in caplog.text  # no Ray warnings about re-telling


def _outcome(trial_id, status, val=None, test=None, steps=10) -> TrialOutcome:
    final = {"val_macro_f1": val, "test_macro_f1": test, "train_steps": steps} if status == "completed" else {}
    return TrialOutcome(trial_id=trial_id, params={"lr": 1e-4}, status=status, final=final,
                        history=[{"epoch": 1, "val_macro_f1": 0.99, "train_steps": steps}])


def test_best_trial_is_a_completed_one_by_the_chosen_metric():
    outcomes = [_outcome("a", "completed", val=0.70, test=0.80), _outcome("b", "completed", val=0.75, test=0.60),
                _outcome("c", "stopped_early"), _outcome("d", "failed")]
    assert pick_best(outcomes, "val_macro_f1").trial_id == "b"
    assert pick_best(outcomes, "test_macro_f1").trial_id == "a"
    tie = [_outcome("x", "completed", val=0.7, steps=30), _outcome("y", "completed", val=0.7, steps=20)]
    assert pick_best(tie, "val_macro_f1").trial_id == "y"  # the cheaper of equals
    assert pick_best(outcomes[2:], "val_macro_f1") is None


def test_a_trials_final_result_scores_its_exported_best_epoch():
    item = {"metrics": {"test_macro_f1": 0.6, "best_val_macro_f1": 0.7, "epochs_run": 3}, "final": True,
            "checkpoint": "/runs/t1/checkpoint_2"}
    final = _tune_metrics(item)
    assert final["val_macro_f1"] == 0.7 and final["epoch"] == 3 and final["final"] == 1
    assert final["export_checkpoint"] == "/runs/t1/checkpoint_2"
    epoch = {"metrics": {"epoch": 1, "val_macro_f1": 0.5}, "final": False, "checkpoint": "/c"}
    assert _tune_metrics(epoch) == {"epoch": 1, "val_macro_f1": 0.5}


def test_pbt_space_without_lr_or_decay_is_refused():
    space = parse_space({"batch_size": {"choice": [8, 16]}}, "s.yaml")
    with pytest.raises(ValueError, match="perturbs lr or weight_decay"):
        _job(scheduler="pbt", search="random", space=space)
