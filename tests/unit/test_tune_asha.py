"""ASHA's promotion form (tune._asha) driven without Ray: who waits, who resumes, who is stopped."""

import pytest
from ray.tune.experiment import Trial
from ray.tune.schedulers import TrialScheduler
from ray.tune.search import ConcurrencyLimiter, Searcher

from tune import TuneJob, default_space
from tune._asha import PromotionASHA, RungRecords
from tune._search import build_scheduler

GO, WAIT = TrialScheduler.CONTINUE, TrialScheduler.PAUSE


class _Trial:
    def __init__(self, trial_id: str, epochs: int = 8):
        self.trial_id, self.config, self.status = trial_id, {"epochs": epochs}, Trial.RUNNING

    def set_status(self, status: str) -> None:
        self.status = status


class _Searcher(Searcher):
    def suggest(self, trial_id):
        return {}

    def on_trial_complete(self, trial_id, result=None, error=False):
        pass


class _Controller:
    """What Tune hands a scheduler: its trials, its searcher (2 live trials at most), stop_trial."""

    def __init__(self, finished: bool = False):
        self.trials: list[_Trial] = []
        self.search_alg = ConcurrencyLimiter(_Searcher(metric="best_val_macro_f1", mode="max"), max_concurrent=2)
        self.search_alg.is_finished = lambda: finished
        self.stopped: list[str] = []
        self.scheduler = None  # set it to have stop_trial tell the scheduler, as Tune does

    def start(self, name: str, epochs: int = 8) -> _Trial:
        assert self.search_alg.suggest(name) is not None, f"the searcher has no slot for {name}"
        trial = _Trial(name, epochs)
        self.trials.append(trial)
        return trial

    def get_trials(self):
        return self.trials

    def stop_trial(self, trial) -> None:
        self.stopped.append(trial.trial_id)
        if self.scheduler is not None and trial.status in (Trial.PENDING, Trial.PAUSED):
            self.scheduler.on_trial_remove(self, trial)  # as Tune's stop_trial does
        trial.set_status(Trial.TERMINATED)


def _job(**overrides) -> TuneJob:
    values = dict(tenant="john", data="john.jsonl", space=default_space("full", max_epochs=8))
    values.update(overrides)
    return TuneJob(**values)


def _asha(**overrides) -> PromotionASHA:
    asha = build_scheduler(_job(**overrides))
    asha.set_search_properties("best_val_macro_f1", "max")
    return asha


def _report(asha, controller, trial, epoch: int, score: float, **extra) -> str:
    decision = asha.on_trial_result(controller, trial, {"epoch": epoch, "best_val_macro_f1": score, **extra})
    if decision == WAIT:
        trial.set_status(Trial.PAUSED)
    return decision


def test_a_trial_at_a_rung_waits_until_it_ranks_in_the_top_half_of_those_recorded_there():
    asha, tune = _asha(), _Controller()
    assert asha.rungs == [1, 2, 4]
    a, b = tune.start("a"), tune.start("b")
    # the first trial at a rung has nothing to beat: it waits (Ray's stopping ASHA lets it go on)
    assert _report(asha, tune, a, 1, 0.50) == WAIT
    c = tune.start("c")  # a waiting trial gives its searcher slot to a new trial
    assert tune.search_alg.suggest("d") is None  # but never more than 2 live
    assert _report(asha, tune, b, 1, 0.70) == GO  # 2 recorded, top 1: b
    assert _report(asha, tune, c, 1, 0.60) == WAIT  # 3 recorded, still top 1
    d = tune.start("d")
    assert _report(asha, tune, d, 1, 0.65) == GO  # 4 recorded, top 2: b (promoted) and d
    assert asha.paused == {"a": 1, "c": 1} and asha.promoted[1] == ["b", "d"]
    assert asha.choose_trial_to_run(tune) is None  # nothing promotable is waiting


def test_a_freed_slot_resumes_the_best_promotable_trial_before_a_new_one_starts():
    asha, tune = _asha(), _Controller()
    a, b = tune.start("a"), tune.start("b")
    assert _report(asha, tune, a, 1, 0.90) == WAIT
    c = tune.start("c")
    # b scores below a: with 2 recorded, a is the top 1. b waits, and its slot goes to a, not to a new trial
    assert _report(asha, tune, b, 1, 0.30) == WAIT
    assert asha.resuming == {"a"} and asha.promoted[1] == ["a"]
    assert tune.search_alg.suggest("e") is None and tune.search_alg.live_trials == {"a", "c"}
    assert asha.choose_trial_to_run(tune) is a
    a.set_status(Trial.RUNNING)
    assert _report(asha, tune, a, 2, 0.91) == WAIT  # first at rung 2: it waits there
    assert _report(asha, tune, c, 1, 0.80) == WAIT  # 3 at rung 1: the top 1 is a, promoted already
    d = tune.start("d")
    assert _report(asha, tune, d, 1, 0.20) == WAIT  # 4 at rung 1: the top 2 are a and c, so c resumes
    assert asha.resuming == {"c"} and asha.paused == {"a": 2, "b": 1, "d": 1}
    assert asha.choose_trial_to_run(tune) is c


def test_trials_never_wait_at_their_last_epoch_or_final_result():
    asha, tune = _asha(), _Controller()
    short, late = tune.start("short", epochs=1), tune.start("late")
    assert _report(asha, tune, short, 1, 0.1) == GO  # epoch 1 is its last: only its export is left
    assert _report(asha, tune, late, 1, 0.1, final=1) == GO
    assert asha.scores[1] == {}


def test_a_trial_is_ranked_by_its_best_epoch_so_far():
    asha, tune = _asha(), _Controller()
    steady, dipped = tune.start("steady"), tune.start("dipped")
    asha.scores[1], asha.promoted[1] = {"steady": 0.60, "dipped": 0.63}, ["steady", "dipped"]
    assert asha.on_trial_result(tune, steady, {"epoch": 2, "val_macro_f1": 0.61, "best_val_macro_f1": 0.61}) == WAIT
    # epoch 2 fell to 0.54, but its epoch-1 model (0.63) is what it would export: it ranks first and goes on
    assert asha.on_trial_result(tune, dipped, {"epoch": 2, "val_macro_f1": 0.54, "best_val_macro_f1": 0.63}) == GO
    assert asha.resuming == set()  # steady is not in the top 1 of rung 2


@pytest.mark.parametrize("grace, factor, epochs, rungs", [
    (1, 2.0, 8, [1, 2, 4]),   # the default
    (1, 3.0, 8, [1, 3]),
    (2, 2.0, 8, [2, 4]),
    (1, 1.5, 4, [1, 2, 3]),
])
def test_grace_period_and_reduction_factor_set_the_rungs_and_the_top_share(grace, factor, epochs, rungs):
    asha, tune = _asha(space=default_space("full", max_epochs=epochs), grace_period=grace,
                       reduction_factor=factor), _Controller()
    assert asha.rungs == rungs and asha.eta == factor
    first = tune.start("first", epochs)
    for epoch in range(1, grace):  # nobody waits before the grace period
        assert _report(asha, tune, first, epoch, 0.0) == GO
    assert _report(asha, tune, first, grace, 0.8) == WAIT
    for i in range(int(factor) - 1):  # floor(n / factor) reaches 1 only at n = ceil(factor)
        assert _report(asha, tune, tune.start(f"t{i}", epochs), grace, 0.1) == WAIT
    assert asha.resuming == ({"first"} if int(factor) == factor else set())


def test_once_nothing_is_left_to_run_a_lone_top_trial_goes_on_and_the_others_stop_early():
    asha, tune = _asha(), _Controller(finished=True)  # the searcher has started all its trials
    tune.scheduler = asha
    a, b = tune.start("a"), tune.start("b")
    assert _report(asha, tune, a, 1, 0.9) == WAIT
    assert asha.choose_trial_to_run(tune) is None and tune.stopped == []  # b still runs
    assert _report(asha, tune, b, 1, 0.3) == WAIT  # a resumes in b's slot
    assert asha.choose_trial_to_run(tune) is a
    a.set_status(Trial.RUNNING)
    assert _report(asha, tune, a, 2, 0.92) == WAIT  # alone at rung 2: the top 0 go on
    # nothing runs and nothing can reach rung 2 any more: its best goes on, so the search ends with a model
    assert asha.choose_trial_to_run(tune) is a and asha.promoted[2] == ["a"] and tune.stopped == []
    a.set_status(Trial.RUNNING)
    assert _report(asha, tune, a, 4, 0.93) == WAIT
    assert asha.choose_trial_to_run(tune) is a
    a.set_status(Trial.RUNNING)
    asha.on_trial_complete(tune, a, {})  # a ran to its end
    a.set_status(Trial.TERMINATED)
    # b waits at rung 1, which promoted a: no result can promote b any more
    assert asha.choose_trial_to_run(tune) is None and tune.stopped == ["b"]
    # --resume after this (the driver killed while it registers a's model): Tune's experiment state
    # may still call b PAUSED and requeue it, but b stays stopped
    again = _asha()
    again.restore_records(asha.records())
    requeued = _Trial("b")
    requeued.set_status(Trial.PENDING)
    again.on_trial_add(tune, requeued)
    assert again.paused == {} and again.stopped_early == ["b"] and requeued.status == Trial.TERMINATED


def test_the_rung_records_survive_a_resume_through_tunes_callback_checkpoint(tmp_path):
    from ray import cloudpickle
    from ray.tune.callback import CallbackList

    asha, tune = _asha(), _Controller()
    # the Tuner pickles its TuneConfig (the scheduler) and RunConfig (the callback) together when the
    # search starts, and --resume unpickles both: the restored callback holds the restored scheduler
    started = cloudpickle.dumps({"scheduler": asha, "callbacks": [RungRecords(asha)]})
    a, b = tune.start("a"), tune.start("b")
    _report(asha, tune, a, 1, 0.4)
    _report(asha, tune, b, 1, 0.7)
    CallbackList([RungRecords(asha)]).save_to_dir(str(tmp_path), session_str="s1")  # an experiment checkpoint

    restored = cloudpickle.loads(started)
    again, callbacks = restored["scheduler"], CallbackList(restored["callbacks"])
    assert again.paused == {} and again.scores == {1: {}, 2: {}, 4: {}}  # as pickled at the start
    assert callbacks.can_restore(str(tmp_path))
    callbacks.restore_from_dir(str(tmp_path))
    assert again.scores == asha.scores and again.paused == {"a": 1} and again.promoted[1] == ["b"]
    waiting = _Trial("a")
    waiting.set_status(Trial.PENDING)  # Tune requeues every unfinished trial as PENDING
    again.on_trial_add(tune, waiting)
    assert waiting.status == Trial.PAUSED
    # the restored records go on deciding: c, below b at rung 1, waits (top 1 of 3)
    assert _report(again, tune, _Trial("c"), 1, 0.5) == WAIT and again.ranked(1) == ["b", "c", "a"]


def test_records_of_other_rungs_are_refused_with_the_reason():
    records = _asha().records()
    with pytest.raises(ValueError, match=r"rungs \[1, 2, 4\] and reduction factor 2.0, but this search has "
                                         r"rungs \[1, 4\] and 4; start a new search without --resume"):
        _asha(reduction_factor=4.0).restore_records(records)


def test_a_waiting_trial_frees_its_slot_in_either_searcher():
    """Optuna's ConcurrencyLimiter (inside Tune's SearchGenerator) and the random generator's own limit."""
    from ray.tune.search import BasicVariantGenerator, SearchGenerator

    from tune._asha import _Slots

    limiter = ConcurrencyLimiter(_Searcher(metric="m", mode="max"), max_concurrent=1)
    wrapped = SearchGenerator(limiter)
    assert limiter.suggest("a") is not None and limiter.suggest("b") is None
    _Slots(wrapped).release("a")
    assert limiter.suggest("b") is not None and limiter.live_trials == {"b"}
    _Slots(wrapped).claim("a")
    assert limiter.live_trials == {"a", "b"} and limiter.num_unfinished_live_trials == 2
    limiter.on_trial_complete("a")
    assert limiter.live_trials == {"b"} and limiter.num_unfinished_live_trials == 1

    generator = BasicVariantGenerator(max_concurrent=1)
    generator._live_trials.add("a")
    _Slots(generator).release("a")
    assert generator._live_trials == set()
    _Slots(generator).claim("a")
    assert generator._live_trials == {"a"}
