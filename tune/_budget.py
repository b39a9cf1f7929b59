"""``--time-budget-s``: when the budget cuts a search short, the best trial so far still wins.

Tune stops every trial once the budget is spent. A trial exports its model only when it finishes,
and under ASHA's promotion form most trials are still waiting at a rung or running then: a short
budget can end a search before any trial has finished, or before the best one has. So when the
budget cut the search, the trial with the best validation macro-F1 so far is finished from its
last checkpoint, if it beats every finished trial on that score: a Ray Train run of the same loop
that trains no further epoch, reloads the trial's best epoch, calibrates, evaluates on the test
split and exports, as every finished trial does at its end. It then competes with the finished
trials by ``--metric`` for the hand-off.

With a budget, every trial hands Tune a checkpoint after every epoch (``tune._trial``), so its
last checkpoint holds its best epoch up to its last reported one.
"""
from __future__ import annotations

import datetime as _dt
import logging
import math
from pathlib import Path
from typing import Optional

from tune._leftovers import wait_for_resources
from tune._search import trial_resources
from tune._tracking import TrialOutcome
from tune._trial import TRAIN_RUNS_DIR, _tune_metrics

logger = logging.getLogger("attune.tune")


def budget_reached(time_budget_s: Optional[float], fit_seconds: float) -> bool:
    """Whether Tune's time budget can have stopped the search (it is timed inside ``Tuner.fit``)."""
    return time_budget_s is not None and fit_seconds >= time_budget_s


def best_val_so_far(outcome: TrialOutcome) -> float:
    """The trial's best validation macro-F1 over the epochs it reported (a finished trial: its export's)."""
    if outcome.final.get("val_macro_f1") is not None:
        return float(outcome.final["val_macro_f1"])
    vals = [row["val_macro_f1"] for row in outcome.history if "val_macro_f1" in row]
    return max(vals, default=-math.inf)


def contender(outcomes: list[TrialOutcome], checkpoints: dict[str, str]) -> Optional[TrialOutcome]:
    """The unfinished trial to finish: the best so far, if it has a checkpoint and beats every finished trial."""
    finished = max((best_val_so_far(o) for o in outcomes if o.final), default=-math.inf)
    cut = [o for o in outcomes if not o.final and o.status == "stopped_early" and o.trial_id in checkpoints]
    best = max(cut, key=best_val_so_far, default=None)
    return best if best is not None and best_val_so_far(best) > finished else None


def finish_best_so_far(job, settings, dataset, outcomes: list[TrialOutcome], checkpoints: dict[str, str],
                       experiment_dir: Path) -> Optional[TrialOutcome]:
    """Export the best unfinished trial from its last checkpoint (see the module doc); it is updated
    in place with its final metrics and export, and returned. None when no trial needs it."""
    from train import read_loop_state, run_training, uses_gpu

    chosen = contender(outcomes, checkpoints)
    if chosen is None:
        return None
    checkpoint = checkpoints[chosen.trial_id]
    state = read_loop_state(Path(checkpoint))
    logger.info("the time budget cut the search: trial %s has the best val_macro_f1 so far (%.4f, epoch %d of %d); "
                "exporting its best epoch from its checkpoint after epoch %d", chosen.trial_id,
                best_val_so_far(chosen), state["best_epoch"], job.finetune_config(chosen.params).epochs,
                state["epoch"])
    config = job.finetune_config({**chosen.params, "epochs": state["epoch"]})  # no epoch left to train
    gpu = uses_gpu(config.use_gpu, config.num_workers)
    wait_for_resources(trial_resources(config.num_workers, gpu), f"the export of trial {chosen.trial_id}")
    result = run_training(config, settings, dataset, run_name=f"{chosen.trial_id}-budget-export",
                          storage_path=Path(experiment_dir) / TRAIN_RUNS_DIR, initial_checkpoint=checkpoint)
    metrics = {k: v for k, v in (result.metrics or {}).items() if k != "done"}
    # the same final row a finished trial hands Tune (scored as its best epoch, with its export)
    chosen.final = _tune_metrics({"metrics": metrics, "final": True, "checkpoint": result.checkpoint.path})
    chosen.record = {**(chosen.record or {}), "started_from": checkpoint, "exported_after_time_budget": True,
                     "finished_at": _dt.datetime.now(_dt.timezone.utc).isoformat()}
    return chosen
