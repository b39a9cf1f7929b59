"""How a search lands in MLflow (through the registry, on SQLite): one parent, a nested run per trial."""
import json

import pytest

from tests.conftest import write_jsonl
from tests.registry_helpers import sqlite_registry
from train._data import load_tenant_data
from tune import TuneJob, default_space
from tune._tracking import TAG_TRIAL, SearchTracker, TrialOutcome, pick_best


@pytest.fixture
def tracker(tmp_path):
    rows = [{"text": f"{label} headline {i}", "label": label} for label in ("up", "down") for i in range(30)]
    data = write_jsonl(tmp_path / "john.jsonl", rows)
    job = TuneJob(tenant="john", data=str(data), space=default_space("full"), trials=3)
    return SearchTracker(sqlite_registry(tmp_path / "store"), job, load_tenant_data(str(data)))


def _history(*vals):
    return [{"epoch": i + 1, "train_loss": 1.0 - i / 10, "val_macro_f1": v, "train_steps": 4 * (i + 1)}
            for i, v in enumerate(vals)]


OUTCOMES = [
    TrialOutcome("t1", {"lr": 1e-4, "epochs": 2}, "completed", _history(0.6, 0.7),
                 final={"test_macro_f1": 0.65, "best_val_macro_f1": 0.7, "val_macro_f1": 0.7, "final": 1,
                        "training_iteration": 3, "epoch": 2}),
    TrialOutcome("t2", {"lr": 1e-6, "epochs": 2}, "stopped_early", _history(0.2)),
    TrialOutcome("t3", {"lr": 3e-4, "epochs": 2}, "failed", [], error="RayTaskError: worker died"),
]


def test_every_trial_is_a_nested_run_and_the_parent_keeps_the_table(tracker):
    reg = tracker.registry
    parent = tracker.start("tune-john-test")
    assert reg.get_run(parent)["status"] == "RUNNING"
    tracker.log_trials(OUTCOMES)
    tracker.log_trials(OUTCOMES)  # a resumed search logs what is missing only
    best = pick_best(OUTCOMES, "val_macro_f1")
    tracker.finish(OUTCOMES, best, {"model_version": "1", "promotion": {"promoted": True}})

    children = {run["tags"][TAG_TRIAL]: run for run in reg.runs("tenant.john", parent_run_id=parent)}
    assert set(children) == {"t1", "t2", "t3"} and len(reg.runs("tenant.john")) == 4
    assert {k: c["status"] for k, c in children.items()} == {"t1": "FINISHED", "t2": "KILLED", "t3": "FAILED"}
    assert children["t3"]["tags"]["attune.trial.error"] == "RayTaskError: worker died"
    assert children["t1"]["params"]["lr"] == "0.0001" and children["t1"]["tags"]["attune.kind"] == "tune"
    assert children["t1"]["metrics"]["test_macro_f1"] == 0.65
    assert "training_iteration" not in children["t1"]["metrics"]  # Tune's bookkeeping is not a result
    assert reg.metric_history(children["t1"]["run_id"], "val_macro_f1") == [(1, 0.6), (2, 0.7)]

    run = reg.get_run(parent)
    assert run["status"] == "FINISHED" and run["metrics"]["best_val_macro_f1"] == 0.7
    assert run["metrics"]["trials"] == 3 and run["metrics"]["stopped_early"] == 1
    assert run["params"]["best.lr"] == "0.0001" and run["params"]["scheduler"] == "asha"
    assert json.loads(run["tags"]["attune.best_config"]) == {"lr": 1e-4, "epochs": 2}
    table = json.loads(_artifact(reg, parent, "trials.json"))
    assert [row["trial_id"] for row in table] == ["t1", "t2", "t3"]
    assert [row["status"] for row in table] == ["completed", "stopped_early", "failed"]
    assert "trial_id" in _artifact(reg, parent, "trials.csv").splitlines()[0]
    assert [f.path for f in reg.client.list_artifacts(parent, "figures")] == ["figures/validation_curves.png"]


def test_a_search_without_a_finished_trial_fails_its_parent(tracker):
    parent = tracker.start("tune-john-none")
    tracker.log_trials(OUTCOMES[1:])
    tracker.finish(OUTCOMES[1:], None, {})
    assert tracker.registry.get_run(parent)["status"] == "FAILED"


def _artifact(reg, run_id: str, name: str) -> str:
    from pathlib import Path

    uri = reg.client.get_run(run_id).info.artifact_uri
    return (Path(uri.removeprefix("file://")) / name).read_text()


def test_head_warmup_steps_count_for_every_trial_that_ran():
    ran, stopped, failed = OUTCOMES
    assert ran.head_warmup_steps(32) == 32 and stopped.head_warmup_steps(32) == 32  # each warmed its head once
    assert failed.head_warmup_steps(32) == 0  # never reached a result
    searched = TrialOutcome("t4", {"lr": 1e-4, "head_warmup_steps": 64}, "stopped_early", _history(0.3))
    assert searched.head_warmup_steps(32) == 64  # its own sampled value, not the job's


class FakeTrial:
    """What a Tune callback sees of a trial."""

    def __init__(self, trial_id: str, config: dict, last_result=None, error=None):
        self.trial_id, self.config, self.last_result, self.error = trial_id, config, last_result or {}, error

    def get_error(self):
        return self.error


def test_each_trial_run_is_live_while_the_search_runs_and_ends_as_the_trial_did(tracker):
    import pickle
    import re

    from registry import TAG_ERROR
    from tune._tracking import TrialRuns

    reg = tracker.registry
    parent = tracker.start("tune-john-live")
    runs = TrialRuns(tracker)
    t1, t2, t3 = (FakeTrial(o.trial_id, o.params) for o in OUTCOMES)
    for trial in (t1, t2, t3):
        runs.on_trial_start(0, [], trial)
    for trial, history in ((t1, _history(0.6, 0.7)), (t2, _history(0.2))):
        for row in history:
            runs.on_trial_result(0, [], trial, {**row, "trial_id": trial.trial_id})
    runs.on_trial_result(0, [], t1, {**_history(0.6, 0.9)[1], "trial_id": "t1"})  # epoch 2 again, after a restart
    live = {run["tags"][TAG_TRIAL]: run for run in reg.runs("tenant.john", parent_run_id=parent)}
    assert {k: r["status"] for k, r in live.items()} == {"t1": "RUNNING", "t2": "RUNNING", "t3": "RUNNING"}
    assert re.fullmatch(r"tune-john-full-t1-\d{8}-\d{6}", live["t1"]["run_name"])
    assert live["t1"]["params"]["lr"] == "0.0001" and reg.metric_history(live["t1"]["run_id"], "val_macro_f1") == [
        (1, 0.6), (2, 0.7)]

    runs.on_trial_result(0, [], t1, {**OUTCOMES[0].final, "trial_id": "t1"})  # the final result is not an epoch
    t1.last_result = {"final": 1}
    runs.on_trial_complete(0, [], t1)
    runs.on_trial_complete(0, [], t2)  # stopped by the scheduler: no final result
    t3.error = RuntimeError("RayTaskError: worker died")
    runs.on_trial_error(0, [], t3)
    ended = {run["tags"][TAG_TRIAL]: run for run in reg.runs("tenant.john", parent_run_id=parent)}
    assert {k: r["status"] for k, r in ended.items()} == {"t1": "FINISHED", "t2": "KILLED", "t3": "FAILED"}
    assert ended["t3"]["tags"][TAG_ERROR] == "RayTaskError: worker died"
    assert reg.metric_history(live["t1"]["run_id"], "val_macro_f1") == [(1, 0.6), (2, 0.7)]

    assert tracker.trial_record(OUTCOMES[0]).run_id == live["t1"]["run_id"]  # registration uploads into it
    tracker.log_trials(OUTCOMES, skip="t1")
    final = {run["tags"][TAG_TRIAL]: run for run in reg.runs("tenant.john", parent_run_id=parent)}
    assert len(final) == 3 and final["t2"]["status"] == "KILLED" and final["t3"]["status"] == "FAILED"
    assert final["t2"]["tags"]["attune.trial.status"] == "stopped_early"
    assert reg.metric_history(live["t2"]["run_id"], "val_macro_f1") == [(1, 0.2)]  # not logged twice
    restored = pickle.loads(pickle.dumps(runs))  # kept with the Tuner for --resume
    assert restored._registry is None and restored.parent_run_id == parent
