"""--time-budget-s (tune._budget): which unfinished trial is exported when the budget cuts a search."""
from tune import TuneJob, default_space
from tune._budget import best_val_so_far, budget_reached, contender
from tune._tracking import TrialOutcome, pick_best
from tune._trial import _checkpoint_epochs


def _history(*vals):
    return [{"epoch": i + 1, "val_macro_f1": v, "train_steps": 10 * (i + 1)} for i, v in enumerate(vals)]


def _finished(trial_id, val, test):
    return TrialOutcome(trial_id, {"lr": 1e-4}, "completed", _history(val),
                        final={"val_macro_f1": val, "test_macro_f1": test, "export_checkpoint": "/x"})


def _cut(trial_id, *vals):
    return TrialOutcome(trial_id, {"lr": 2e-4}, "stopped_early", _history(*vals))


def test_only_a_search_that_ran_its_budget_out_counts_as_cut():
    assert budget_reached(60.0, 61.2) and budget_reached(60.0, 60.0)
    assert not budget_reached(60.0, 42.0) and not budget_reached(None, 10_000.0)


def test_the_best_unfinished_trial_with_a_checkpoint_is_exported_only_if_it_leads():
    done, ahead, behind, no_checkpoint = (_finished("a", 0.70, 0.68), _cut("b", 0.60, 0.75, 0.72),
                                          _cut("c", 0.65), _cut("d", 0.90))
    outcomes = [done, ahead, behind, no_checkpoint]
    assert best_val_so_far(ahead) == 0.75 and best_val_so_far(done) == 0.70
    # d scored best but was cut before its first checkpoint: b is the best that can be exported
    assert contender(outcomes, {"b": "/ckpt/b", "c": "/ckpt/c"}) is ahead
    assert contender(outcomes, {"c": "/ckpt/c"}) is None  # c does not beat the finished a
    assert contender([behind, _cut("e", 0.2)], {"c": "/c", "e": "/e"}) is behind  # nothing finished yet
    failed = TrialOutcome("f", {}, "failed", _history(0.99))
    assert contender([done, failed], {"f": "/f"}) is None  # a failed trial is never exported


def test_an_exported_trial_competes_by_the_search_metric():
    done, cut = _finished("a", 0.70, 0.68), _cut("b", 0.75)
    assert pick_best([done, cut], "val_macro_f1") is done  # not exported: no score yet
    cut.final = {"val_macro_f1": 0.75, "test_macro_f1": 0.66, "export_checkpoint": "/y"}
    assert pick_best([done, cut], "val_macro_f1") is cut
    assert pick_best([done, cut], "test_macro_f1") is done


def test_with_a_budget_every_trial_checkpoints_every_epoch_in_tune():
    space = default_space("full", max_epochs=8)
    asha = TuneJob(tenant="john", data="john.jsonl", space=space)
    assert _checkpoint_epochs(asha) == {1, 2, 4}  # ASHA's rungs only
    assert _checkpoint_epochs(asha.model_copy(update={"time_budget_s": 60.0})) is None
    fifo = TuneJob(tenant="john", data="john.jsonl", space=space, scheduler="fifo")
    assert _checkpoint_epochs(fifo) == set()
    assert _checkpoint_epochs(fifo.model_copy(update={"time_budget_s": 60.0})) is None


class _Tracker:
    def __init__(self):
        self.logged, self.finished = None, None

    def log_trials(self, outcomes, skip=None):
        self.logged = [o.trial_id for o in outcomes]

    def finish(self, outcomes, best, summary):
        self.finished = (len(outcomes), best, summary)


def test_an_export_that_cannot_get_its_cpus_ends_the_search_as_failed(tmp_path, monkeypatch):
    import pytest

    import tune._tracking
    from tune import _tune
    from tune._errors import TuneError

    outcomes = [_cut("b", 0.60, 0.75), _finished("a", 0.70, 0.68)]
    monkeypatch.setattr(tune._tracking, "collect_outcomes", lambda grid, records: outcomes)

    def no_cpus(*args, **kwargs):
        raise TuneError("the export of trial b needs 1 CPU but only 0 of 2 CPU became free within 120 s")

    monkeypatch.setattr(_tune, "finish_best_so_far", no_cpus)
    _tune._write_state(tmp_path, {"status": "running", "parent_run_id": "p1"})
    tracker = _Tracker()
    job = TuneJob(tenant="john", data="john.jsonl", space=default_space("full", max_epochs=8), time_budget_s=60.0)
    with pytest.raises(TuneError, match="became free within 120 s"):
        _tune._conclude(job, None, None, tracker, [], tmp_path, 61.0, True)
    # no half-open search: trials logged, the parent run closed without a model, --resume refuses it
    assert tracker.logged == ["b", "a"] and tracker.finished == (2, None, {})
    assert _tune._read_state(tmp_path) == {"status": "failed", "parent_run_id": "p1"}
