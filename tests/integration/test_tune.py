"""`attune tune` end to end on a tiny random BERT: the default search (ASHA + Optuna TPE), a crashed
trial, a killed driver, --resume.

The search runs as the user runs it: the CLI as a subprocess on its own embedded Ray (1 CPU, so a
trial that held on to its CPU after ASHA paused it would block the next; PBT's test has 2).
Trials use one worker each (at this size a trial's time is mostly Ray Train starting its
workers, and one worker starts fastest) and run one at a time, so the order of their results,
and with it every ASHA decision, is the same on every run. The space is a good and a hopeless
learning rate; TPE's first 3 trials are seeded random draws, and seed 1 draws: hopeless (crashed on
purpose in epoch 2), hopeless (first at ASHA's only rung, epoch 2: it waits there), good (tops the
rung and finishes; the driver is killed then). After --resume TPE picks the 4th; it goes on only if
it ranks in the top half at the rung (with the good trial's learning rate it ties it at best, and
the first recorded ranks first). Then nothing is left to run, and ASHA stops the trials that wait.
"""
from __future__ import annotations

import json
import os
import pickle
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from registry import Registry
from tests.waiting import wait_for

REPO = Path(__file__).resolve().parents[2]
# 5e-3 learns in the middle of the tiny BERT's stable range (3e-3..1e-2 all pass 0.3 val macro-F1 by
# epoch 2); 3e-2, at its edge, diverged on one CPU and learned on another (float rounding decides)
GOOD_LR, HOPELESS_LR = 5e-3, 1e-7
SPACE = f"lr: {{choice: [{GOOD_LR:.1e}, {HOPELESS_LR:.1e}]}}\nbatch_size: 16\nepochs: 3\n"  # YAML floats need the dot
SEED = "1"  # TPESampler(seed=1) draws bad, bad, good for its first (random) trials
PBT_OPT_IN = "ATTUNE_TEST_PBT"


def _attune(home: Path, *args: str, cpus: int = 2) -> subprocess.Popen:
    # Ray Train's controller polls its workers every 2 s by default; at 0.5 s the tiny trials' reports
    # and shutdowns wait less (this only changes how soon the controller notices, not what it does)
    env = dict(os.environ, ATTUNE_HOME=str(home), ATTUNE_RAY_NUM_CPUS=str(cpus), ATTUNE_PROGRESS_INTERVAL_S="5",
               RAY_TRAIN_HEALTH_CHECK_INTERVAL_S="0.5")
    env.pop("RAY_ADDRESS", None)
    return subprocess.Popen([sys.executable, "-m", "cluster.cli", *args], cwd=REPO, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)


def _session(sid: int) -> dict[int, str]:
    """pid -> command line of every live process in session ``sid`` (the CLI, its Ray, Ray's workers)."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            if int(stat[3]) == sid and stat[0] != "Z":
                found[int(entry.name)] = (entry / "cmdline").read_text().replace("\0", " ")
        except (OSError, IndexError, ValueError):
            continue
    return found


def _kill_session(sid: int) -> None:
    for pid in _session(sid):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _training_worker(sid: int, train_runs: Path):
    """The pid of a Ray Train worker of session ``sid`` once it is training (its first checkpoint exists).
    A worker killed while the group starts is retried by Ray Train; one killed mid-training is a crash."""
    if not any(train_runs.glob("*/checkpoint_*")):
        return None
    return next((pid for pid, cmd in _session(sid).items() if cmd.startswith("ray::RayTrainWorker")), None)


def _search_to_the_end(home: Path, tmp_path: Path, tiny_base: Path, demo_dir: Path, *args: str) -> tuple[dict, str]:
    """One search on john with SPACE, one worker per trial, run to its end: its --json summary and stderr."""
    space = tmp_path / "space.yaml"
    space.write_text(SPACE)
    proc = _attune(home, "tune", "--tenant", "john", "--data", str(demo_dir / "john.jsonl"), "--base",
                   str(tiny_base), "--space", str(space), "--workers", "1", "--max-seq-len", "32",
                   "--promotion-floor", "0", "--json", *args)
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-4000:]
    return json.loads(out.strip().splitlines()[-1]), err


@pytest.fixture
def search_args(tmp_path, tiny_base, demo_dir) -> list[str]:
    space = tmp_path / "space.yaml"
    space.write_text(SPACE)
    return ["tune", "--tenant", "john", "--data", str(demo_dir / "john.jsonl"), "--base", str(tiny_base),
            "--space", str(space), "--trials", "4", "--seed", SEED, "--grace-period", "2", "--workers", "1",
            "--max-concurrent", "1", "--max-seq-len", "32",
            "--max-failures", "0", "--promotion-floor", "0", "--json"]


def test_default_search_survives_a_crashed_trial_and_a_killed_driver(tmp_path, search_args):
    home = tmp_path / "home"
    trials_dir = home / "ray_results" / "tune-john" / "trials"
    train_runs = home / "ray_results" / "tune-john" / "train_runs"
    # one CPU: a trial ASHA pauses must release its worker's CPU, or the next trial never starts
    first = _attune(home, *search_args, cpus=1)
    try:
        # a trial crashes: its only training worker dies and --max-failures 0 allows no restart
        victim = wait_for(lambda: _training_worker(first.pid, train_runs) or first.poll() is not None, 180,
                          "a training worker past its first epoch", interval_s=0.05)
        assert first.poll() is None, first.communicate()[1][-3000:]
        os.kill(victim, signal.SIGKILL)
        # the search goes on; once a trial has finished, the driver is killed
        wait_for(lambda: any(trials_dir.glob("*.json")) or first.poll() is not None, 240, "a finished trial")
        assert first.poll() is None, first.communicate()[1][-3000:]
        before = {p.stem: json.loads(p.read_text()) for p in trials_dir.glob("*.json")}
        os.killpg(first.pid, signal.SIGKILL)
        _kill_session(first.pid)
        wait_for(lambda: not _session(first.pid), 60, "every process of the killed search to exit")
    finally:
        _kill_session(first.pid)
        first.communicate()
    assert first.returncode == -signal.SIGKILL

    resumed = _attune(home, *search_args, "--resume", cpus=1)
    out, err = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, err[-4000:]
    summary = json.loads(out.strip().splitlines()[-1])
    assert (summary["scheduler"], summary["search"]) == ("asha", "optuna")
    # the hopeless trial that reached the rung first waited there (under Ray's stopping ASHA it went
    # on); a trial went on from the rung only while it ranked in the top half of those recorded there
    asha = _asha_records(home)
    at_rung, promoted = asha["scores"][2], asha["promoted"][2]
    assert len(at_rung) == 3 and len(promoted) in (1, 2) and asha["paused"] == {}
    assert len(asha["stopped_early"]) == 3 - len(promoted)
    waited = next(iter(at_rung))
    assert waited not in promoted and max(at_rung, key=at_rung.get) in promoted
    assert (summary["trials"], summary["failed"], summary["completed"], summary["stopped_early"]) == \
        (4, 1, len(promoted), 3 - len(promoted))
    assert summary["best_config"]["lr"] == pytest.approx(GOOD_LR) and summary["best_metric"] > 0.3
    assert (summary["model_version"], summary["alias"]) == ("1", "champion")
    assert summary["promotion"]["promoted"] is True
    assert "up to 1 at a time" in err
    assert "val_macro_f1" in err and "trials ended" in err  # progress lines while it ran
    assert "ranked by best_val_macro_f1" in err  # ASHA compares each trial's best epoch so far
    assert "rungs at epochs [2]" in err
    assert len(re.findall(r"trial \w+ stopped early at rung 2: no trial is left to run", err)) == 3 - len(promoted)

    _check_tracking(home, summary, before)
    _check_tpe_learned_every_trial_at_the_rung(home, summary)


def _check_tracking(home: Path, summary: dict, before: dict) -> None:
    registry = Registry(f"sqlite:///{home / 'mlflow.db'}")
    runs = registry.runs("tenant.john")
    parents = [r for r in runs if "mlflow.parentRunId" not in r["tags"]]
    assert len(parents) == 1 and parents[0]["run_id"] == summary["parent_run_id"]
    parent = parents[0]
    assert parent["status"] == "FINISHED" and parent["tags"]["attune.kind"] == "tune"
    assert json.loads(parent["tags"]["attune.best_config"]) == summary["best_config"]
    children = registry.runs("tenant.john", parent_run_id=parent["run_id"])
    assert len(children) == 4 and len(runs) == 5
    by_trial = {c["tags"]["attune.trial_id"]: c for c in children}
    statuses = sorted(c["status"] for c in children)
    assert statuses.count("FAILED") == 1 and statuses.count("KILLED") == summary["stopped_early"]
    [failed] = [c for c in children if c["status"] == "FAILED"]
    assert failed["tags"]["attune.trial.error"]
    best = by_trial[summary["best_trial_id"]]
    assert [step for step, _ in registry.metric_history(best["run_id"], "val_macro_f1")] == [1, 2, 3]
    assert best["params"]["lr"] == str(summary["best_config"]["lr"]) and "test_macro_f1" in best["metrics"]
    version = registry.get_version("john", summary["model_version"])
    assert version.run_id == best["run_id"]  # the registered model is the best trial's export
    for child in children:  # live: every trial's run opened as the trial started, long before the hand-off
        run = registry.client.get_run(child["run_id"])
        assert run.info.start_time < version.created_at_ms and run.info.run_name.startswith("tune-john-full-")
    # no finished trial ran again after --resume: same finish record, and it is what MLflow holds
    for trial_id, record in before.items():
        assert by_trial[trial_id]["status"] == "FINISHED"
        assert by_trial[trial_id]["tags"]["attune.trial.finished_at"] == record["finished_at"]
        after = json.loads((home / "ray_results" / "tune-john" / "trials" / f"{trial_id}.json").read_text())
        assert after == record


def test_a_time_budget_ends_the_search_and_the_best_trial_so_far_wins(ray_session, tmp_path, tiny_base, demo_dir):
    """The default search (ASHA + TPE, 8 trials, 2 at a time) with 20-epoch trials and a 45 s budget:
    no trial can finish (each must climb rungs 1, 2, 4, 8 and 16, and a resume from a rung costs a Ray
    Train start), so when the budget ends it, the trial with the best validation macro-F1 so far is
    exported from its last checkpoint, registered and gated.

    ``ray_session`` keeps a second Ray running next to the command's own, as in the full suite:
    the condition under which the Train runs of trials cut by the budget kept their CPUs and the
    export waited for them forever (see ``tune._leftovers`` and ``cluster._worker_setup``)."""
    home = tmp_path / "home"
    space = tmp_path / "space.yaml"
    space.write_text(SPACE.replace("epochs: 3", "epochs: 20"))
    proc = _attune(home, "tune", "--tenant", "john", "--data", str(demo_dir / "john.jsonl"), "--base", str(tiny_base),
                   "--space", str(space), "--trials", "8", "--seed", SEED, "--workers", "1", "--max-seq-len", "32",
                   "--patience", "20", "--time-budget-s", "45", "--promotion-floor", "0", "--json")
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-4000:]
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["time_budget_reached"] is True and summary["completed"] == 0
    assert summary["exported_after_time_budget"] == summary["best_trial_id"]
    assert (summary["model_version"], summary["alias"]) == ("1", "champion")
    assert "the time budget cut the search" in err

    registry = Registry(f"sqlite:///{home / 'mlflow.db'}")
    children = registry.runs("tenant.john", parent_run_id=summary["parent_run_id"])
    curves = {c["tags"]["attune.trial_id"]: registry.metric_history(c["run_id"], "val_macro_f1") for c in children}
    best_so_far = {trial: max((f1 for _, f1 in curve), default=-1.0) for trial, curve in curves.items()}
    assert summary["best_metric"] == pytest.approx(max(best_so_far.values()))  # the best so far won
    assert best_so_far[summary["best_trial_id"]] == pytest.approx(max(best_so_far.values()))
    [exported] = [c for c in children if c["tags"]["attune.trial_id"] == summary["best_trial_id"]]
    assert exported["tags"]["attune.trial.exported_after_time_budget"] == "true"
    assert "test_macro_f1" in exported["metrics"]
    assert registry.get_version("john", "1").run_id == exported["run_id"]
    epochs = [step for step, _ in registry.metric_history(exported["run_id"], "val_macro_f1")]
    assert epochs == list(range(1, len(epochs) + 1)) and len(epochs) < 20  # its epochs so far, none after the cut
    # the pictures: the exported trial's, as every fine-tune's, and the parent's curves with ASHA's rungs
    listed = lambda run_id: sorted(f.path for f in registry.client.list_artifacts(run_id, "figures"))  # noqa: E731
    assert listed(exported["run_id"]) == ["figures/confusion_matrix.png", "figures/reliability.png"]
    assert listed(summary["parent_run_id"]) == ["figures/validation_curves.png"]


@pytest.mark.skipif(not os.environ.get(PBT_OPT_IN), reason=f"about 1.5-2.5 minutes on 2 CPUs (each PBT exploit "
                    f"restarts a trial's Ray Train run); set {PBT_OPT_IN}=1 to run it")
def test_pbt_search_runs_end_to_end(tmp_path, tiny_base, demo_dir):
    """Two trials at once (one worker each), a good and a hopeless learning rate, 3 epochs. PBT
    ranks them after epochs 1 and 2; whether the hopeless one copies the good one depends on which
    reports first (and PBT rewrites the copier's config), so this checks the run, not the copy:
    both trials export, the search registers, and any checkpoint a trial restarted from is one of
    this search's own (tests/unit/test_tune_pbt.py checks what restarting from one does)."""
    home = tmp_path / "home"
    summary, _ = _search_to_the_end(home, tmp_path, tiny_base, demo_dir, "--trials", "2", "--scheduler", "pbt",
                                    "--seed", "6")
    assert summary["scheduler"] == "pbt" and summary["completed"] == 2 and summary["model_version"] == "1"
    assert summary["best_metric"] > 0.3
    experiment = home / "ray_results" / "tune-john"
    records = {p.stem: json.loads(p.read_text()) for p in (experiment / "trials").glob("*.json")}
    assert len(records) == 2
    for record in records.values():
        if record["started_from"]:
            assert record["started_from"].startswith(str(experiment)) and "checkpoint_" in record["started_from"]


def _asha_records(home: Path) -> dict:
    """ASHA's rung records as the resumed driver checkpointed them when the search ended (Tune keeps
    every callback's state in callback-states-<session>.pkl, one per driver)."""
    saved = sorted((home / "ray_results" / "tune-john").glob("callback-states-*.pkl"))
    assert len(saved) == 2
    states = pickle.loads(saved[-1].read_bytes())
    return next(state["asha"] for state in states.values() if state and "asha" in state)


def _check_tpe_learned_every_trial_at_the_rung(home: Path, summary: dict) -> None:
    """The searcher state Tune saved (and --resume restored) holds every trial that reached ASHA's
    rung told to TPE with its score there (its best by epoch 2), the trial that ran on to its last
    epoch included, not that trial's final best; the crashed trial is a failed Optuna trial."""
    saved = sorted((home / "ray_results" / "tune-john").glob("searcher-state-*.pkl"))  # one per driver, timestamped
    assert len(saved) == 2
    state = pickle.loads(saved[-1].read_bytes())  # the resumed driver's, written as the search ended
    assert state["rung"] == 2
    told = {t.number: t for t in state["_ot_study"].trials}
    registry = Registry(f"sqlite:///{home / 'mlflow.db'}")
    children = {c["tags"]["attune.trial_id"]: c
                for c in registry.runs("tenant.john", parent_run_id=summary["parent_run_id"])}
    assert set(state["_ot_trials"]) == set(children)
    for trial_id, child in children.items():
        optuna_trial = told[state["_ot_trials"][trial_id].number]
        if child["status"] == "FAILED":
            assert optuna_trial.state.name == "FAIL"
            continue
        by_rung = max(f1 for epoch, f1 in registry.metric_history(child["run_id"], "val_macro_f1") if epoch <= 2)
        assert optuna_trial.state.name == "COMPLETE" and optuna_trial.value == pytest.approx(by_rung)
