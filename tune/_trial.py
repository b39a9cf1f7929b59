"""One Tune trial: the same Ray Train run as ``attune finetune``, its reports forwarded to Tune.

The trial function is the Train *driver* (Ray Train V2's pattern for Train inside Tune): it
builds the fine-tuning config from the sampled values and calls ``train.run_training``,
the code path ``attune finetune`` uses. A Train callback sends rank 0's report of every epoch
(``val_macro_f1``, ``epoch``, ``train_steps``) and the final one (test metrics, the exported
model's checkpoint path) to Tune. Ray's ``TuneReportCallback`` forwards metrics only; PBT needs
each epoch's checkpoint in Tune and ASHA the checkpoint of every rung (where it pauses trials),
so this trial forwards through its own queue and reports with ``ray.tune.report`` itself.

Each trial keeps its Train runs under ``<experiment>/train_runs`` and, as soon as its model is
exported, writes ``<experiment>/trials/<trial_id>.json``. A trial restarted by ``--resume``
resumes its Train run from the run's last checkpoint (same run name, same storage), and a trial
that had already exported only reports its recorded result again: no finished trial trains twice.
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import json
import threading
import time
from pathlib import Path
from typing import Optional

from ray import tune as ray_tune
from ray.train.v2.api.callback import UserCallback

TRIALS_DIR = "trials"
TRAIN_RUNS_DIR = "train_runs"
FINAL = "final"  # set to 1 on a trial's last result: it finished training and exported a model
_END = "__end__"
STOP_GRACE_S = 30.0  # how long a stopped trial waits for its Train run to abort


class ForwardReports(UserCallback):
    """Runs in the Train controller: puts rank 0's reports on the trial's queue."""

    def __init__(self, queue):
        self.queue = queue

    def after_report(self, run_context, metrics, checkpoint) -> None:
        import ray

        row = dict(metrics[0])  # rank 0: the only rank that reports test metrics
        final = bool(row.pop("done", False))
        self.queue.put({"metrics": row, "final": final, "checkpoint": checkpoint.path if checkpoint else None,
                        "controller": ray.get_runtime_context().current_actor})


def run_trial(params: dict, *, job: dict, dataset, settings: dict, experiment_dir: str) -> None:
    """Tune's trainable. ``params`` are the sampled values; the rest comes through ``with_parameters``."""
    from cluster import Settings
    from tune._job import TuneJob

    tune_job = TuneJob(**job)
    config = tune_job.finetune_config(params)
    if config.base.startswith("models:/"):  # a registered base: the folder it is cached in, for the workers
        from train import resolve_base

        config = config.model_copy(update={"base": str(resolve_base(config.base, Settings(**settings)))})
    trial_id = ray_tune.get_context().get_trial_id()
    trials = Path(experiment_dir) / TRIALS_DIR
    recorded = _recorded(trials / f"{trial_id}.json")
    if recorded is not None:  # finished before the search was interrupted: do not train it again
        ray_tune.report(recorded["result"])
        return
    start = ray_tune.get_checkpoint()
    run_name = trial_id if start is None else f"{trial_id}-from-{_digest(start.path)}"
    _forward(config, Settings(**settings), dataset, run_name=run_name, storage=Path(experiment_dir) / TRAIN_RUNS_DIR,
             start=start, checkpoint_epochs=_checkpoint_epochs(tune_job),
             on_final=lambda result: _record(trials, trial_id, run_name, start, result))


def _checkpoint_epochs(job) -> Optional[set[int]]:
    """The epochs whose checkpoint Tune needs (None: every epoch). PBT may copy or restart a trial
    after any epoch; ASHA pauses trials only at its rungs and resumes them from there. With a time
    budget every epoch's: the best trial so far is exported from its last one (``tune._budget``)."""
    if job.scheduler == "pbt" or job.time_budget_s is not None:
        return None
    return set(job.rungs) if job.scheduler == "asha" else set()


def _forward(config, settings, dataset, *, run_name: str, storage: Path, start,
             checkpoint_epochs: Optional[set[int]], on_final) -> None:
    """Run training in a thread; report each forwarded result to Tune from this (the trial's) thread.

    ``on_final`` gets the final result as soon as it arrives: the model is exported by then, and
    only the Train run's shutdown is left, so a restart after that point never trains again.
    """
    from ray.util.queue import Queue

    from train import run_training

    queue = Queue(maxsize=1, actor_options={"num_cpus": 0})
    outcome: dict = {}

    def train() -> None:
        try:
            run_training(config, settings, dataset, run_name=run_name, storage_path=storage,
                         callbacks=[ForwardReports(queue)], initial_checkpoint=start.path if start else None)
        except BaseException as exc:  # re-raised in the trial's thread, so Tune marks the trial failed
            outcome["error"] = exc
        finally:
            queue.put(_END)

    thread = threading.Thread(target=train, name=f"train-{run_name}", daemon=True)
    thread.start()
    final = False
    while (item := queue.get()) != _END:
        metrics = _tune_metrics(item)
        checkpoint = None
        if item["checkpoint"] and not item["final"] and (checkpoint_epochs is None
                                                         or metrics.get("epoch") in checkpoint_epochs):
            checkpoint = ray_tune.Checkpoint.from_directory(item["checkpoint"])
        if item["final"]:
            on_final(metrics)
            final = True
        try:
            ray_tune.report(metrics, checkpoint=checkpoint)  # raises SystemExit when Tune stops or pauses the trial
        except SystemExit:
            _abort_training(item["controller"], queue, thread)
            raise
    thread.join()
    if "error" in outcome:
        raise outcome["error"]
    if not final:
        raise RuntimeError(f"trial run {run_name} ended without reporting its exported model")


def _abort_training(controller, queue, thread: threading.Thread) -> None:
    """Tune stopped or paused this trial: end its Train run now, and wait for it.

    Left alone, the run's controller sees its workers die with the trial's actor, retries, and
    reserves a new placement group that nothing removes while the search runs (Ray Train's
    cleaner only knows the first); the CPUs it holds then starve the trials that run next.
    Aborting the controller releases the workers and their placement group first.
    ``StoppableTrial.cleanup`` keeps the actor alive until this returns.
    """
    import queue as queue_lib

    import ray

    done = controller.abort.remote()
    deadline = time.monotonic() + STOP_GRACE_S
    while thread.is_alive() and time.monotonic() < deadline:
        try:
            queue.get_nowait()  # a report the controller may be blocked on
        except queue_lib.Empty:
            pass
        except ray.exceptions.RayError:
            break
        thread.join(0.2)
    try:
        ray.get(done, timeout=max(0.1, deadline - time.monotonic()))
    except ray.exceptions.RayError:
        pass  # the controller exits as it aborts, or was gone already


def trainable(**parameters):
    """``run_trial`` with its fixed parameters, as a Tune trainable whose stop waits for the trial's
    Train run to be aborted (Ray's function trainable lets the actor exit at once)."""
    from ray.train._internal.session import get_session
    from ray.tune.trainable.function_trainable import wrap_function

    base = wrap_function(ray_tune.with_parameters(run_trial, **parameters))

    class StoppableTrial(base):
        def cleanup(self):
            session = get_session()
            training = getattr(session, "training_thread", None)
            try:
                super().cleanup()
            finally:
                if training is not None:
                    training.join(timeout=STOP_GRACE_S)

    StoppableTrial.__name__ = "run_trial"
    return StoppableTrial


def _tune_metrics(item: dict) -> dict:
    """Per-epoch rows pass through. The final row scores the exported (best-epoch) model: its
    ``val_macro_f1`` is the best epoch's, and it carries ``final`` and the export's checkpoint path."""
    metrics = dict(item["metrics"])
    if item["final"]:
        metrics.update(val_macro_f1=metrics["best_val_macro_f1"], epoch=metrics["epochs_run"], **{FINAL: 1},
                       export_checkpoint=item["checkpoint"])
    return metrics


def _record(trials: Path, trial_id: str, run_name: str, start, result: dict) -> None:
    trials.mkdir(parents=True, exist_ok=True)
    record = {"trial_id": trial_id, "run_name": run_name, "started_from": start.path if start else None,
              "finished_at": _dt.datetime.now(_dt.timezone.utc).isoformat(), "result": result}
    tmp = trials / f".{trial_id}.json.tmp"
    tmp.write_text(json.dumps(record, default=str))
    tmp.replace(trials / f"{trial_id}.json")


def _recorded(path: Path) -> Optional[dict]:
    return json.loads(path.read_text()) if path.is_file() else None


def read_records(experiment_dir: Path) -> dict[str, dict]:
    """Trial id -> what :func:`_record` wrote when that trial finished."""
    folder = Path(experiment_dir) / TRIALS_DIR
    return {p.stem: json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))} if folder.is_dir() else {}


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:8]
