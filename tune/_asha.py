"""ASHA in its promotion form: a trial waits at a rung until it ranks in that rung's top 1/eta.

Ray's ``AsyncHyperBandScheduler`` is ASHA's *stopping* form: a trial that reaches a rung goes on
unless it scores below the rung's cutoff among the trials recorded there so far. The first trial
to reach a rung has nothing to compare with and always goes on, and later ones face only the
trials that came before them. With a small search (attune's default is 8 trials, 2 at a time)
and a searcher that improves as it learns (TPE), far more trials run to the end than successive
halving keeps: 3 of 8 where halving keeps 1 (stop 20's benchmark).

This is the promotion form that ASHA's paper gives (Li et al., "A System for Massively Parallel
Hyperparameter Tuning", MLSys 2020, Algorithm 2). A trial that reaches a rung pauses (its Train
run checkpointed there) unless it is among the top ``floor(n / eta)`` of the ``n`` trials recorded
at that rung. Whenever a trial pauses or ends, its slot goes first to the best paused trial that
now ranks in its rung's top share (highest rung first), and only then to a new trial. Once no
trial is left to start or run, the best trial waiting at the highest rung goes on if that rung
has promoted none yet (a rung that too few trials reached must not end the search without a
model); otherwise no result can promote the waiting trials any more, and they stop early.
Every trial pays for the first rung; the rest is earned against the trials recorded there.

Ray Tune limits live trials in the searcher (``ConcurrencyLimiter``, or the random generator's
own limit), and a paused trial is still live there. So a pausing trial hands its searcher slot
on (to the trial it promotes, or back to the searcher for a new trial); otherwise two paused
trials would hold both slots of a 2-at-a-time search and nothing could run.

The rung records are checkpointed with the rest of Tune's experiment state, through a Tune
callback (:class:`RungRecords`), so ``--resume`` promotes and stops exactly as the interrupted search
would have, from records that match the trial states Tune restores. (A file the scheduler wrote into
the experiment folder itself would not do: Tune stages the folder's top-level ``.json`` and ``.pkl``
files on restore and uploads its stale copies over them at every experiment checkpoint.)
"""
from __future__ import annotations

import logging
import math
from typing import Optional

from ray import tune as ray_tune
from ray.tune.experiment import Trial
from ray.tune.schedulers import FIFOScheduler, TrialScheduler

logger = logging.getLogger("attune.tune")


class PromotionASHA(FIFOScheduler):
    """Pauses trials at ``rungs`` (epochs) and resumes those in the top ``1/reduction_factor``."""

    def __init__(self, *, rungs: list[int], reduction_factor: float, metric: str, time_attr: str,
                 at_its_end):
        super().__init__()
        self._supports_buffered_results = False  # every epoch's result is judged as it comes
        self.rungs, self.eta, self.time_attr = list(rungs), float(reduction_factor), time_attr
        self._rank_by, self._at_its_end = metric, at_its_end
        self.scores: dict[int, dict[str, float]] = {r: {} for r in self.rungs}
        self.promoted: dict[int, list[str]] = {r: [] for r in self.rungs}
        self.paused: dict[str, int] = {}  # trial id -> the rung it waits at
        self.resuming: set[str] = set()  # promoted while paused; runs as soon as Tune starts it
        self.stopped_early: list[str] = []  # stopped while waiting, once nothing could promote them

    # --- Tune's scheduler interface -------------------------------------------------------------
    def on_trial_add(self, tune_controller, trial: Trial) -> None:
        if trial.status != Trial.PENDING:
            return
        # restored by --resume (Tune requeues every unfinished trial as PENDING)
        if trial.trial_id in self.paused:
            trial.set_status(Trial.PAUSED)  # it still waits for its promotion
        elif trial.trial_id in self.stopped_early:
            # stopped while paused: Tune's experiment state may still say PAUSED, as it only
            # re-records a stopped trial that had an actor
            trial.set_status(Trial.TERMINATED)

    def on_trial_result(self, tune_controller, trial: Trial, result: dict) -> str:
        self.resuming.discard(trial.trial_id)
        if self._at_its_end(trial, result):
            return TrialScheduler.CONTINUE
        epoch, score = result.get(self.time_attr, 0), result.get(self._rank_by)
        rung = next((r for r in self.rungs if epoch >= r and trial.trial_id not in self.scores[r]), None)
        if rung is None or score is None:
            return TrialScheduler.CONTINUE
        self.scores[rung][trial.trial_id] = float(score)
        if trial.trial_id in self.promotable(rung):
            self.promoted[rung].append(trial.trial_id)
            decision = TrialScheduler.CONTINUE
        else:
            self.paused[trial.trial_id] = rung
            self._hand_on_slot(tune_controller, trial.trial_id)
            decision = TrialScheduler.PAUSE
        logger.info("trial %s at rung %d (epoch %d): %s %.4f, %d recorded there, top %d go on: %s",
                    trial.trial_id, rung, epoch, self._rank_by, score, len(self.scores[rung]),
                    self._top_count(rung), "goes on" if decision == TrialScheduler.CONTINUE else "waits")
        return decision

    def on_trial_complete(self, tune_controller, trial: Trial, result: dict) -> None:
        self.on_trial_remove(tune_controller, trial)

    def on_trial_error(self, tune_controller, trial: Trial) -> None:
        self.on_trial_remove(tune_controller, trial)

    def on_trial_remove(self, tune_controller, trial: Trial) -> None:
        self.resuming.discard(trial.trial_id)
        if self.paused.pop(trial.trial_id, None) is None:  # it was running: its slot frees
            self._hand_on_slot(tune_controller, None)

    def choose_trial_to_run(self, tune_controller) -> Optional[Trial]:
        trials = tune_controller.get_trials()
        for trial in trials:
            if trial.status == Trial.PENDING:
                return trial
        for trial in trials:
            if trial.status == Trial.PAUSED and trial.trial_id in self.resuming:
                return trial
        return self._drain(tune_controller, trials)

    def debug_string(self) -> str:
        return "ASHA (promotion): " + "; ".join(f"rung {r}: {len(self.scores[r])} recorded, "
                                                f"{len(self.promoted[r])} promoted" for r in self.rungs)

    # --- promotions ------------------------------------------------------------------------------
    def promotable(self, rung: int) -> list[str]:
        """Trials in the top ``floor(n / eta)`` at ``rung``, best first, not promoted from it yet."""
        ranked = self.ranked(rung)
        return [t for t in ranked[:self._top_count(rung)] if t not in self.promoted[rung]]

    def ranked(self, rung: int) -> list[str]:
        """Every trial recorded at ``rung``, best first (ties: the first recorded first)."""
        return sorted(self.scores[rung], key=lambda t: self.scores[rung][t], reverse=True)

    def _top_count(self, rung: int) -> int:
        return math.floor(len(self.scores[rung]) / self.eta + 1e-9)

    def next_promotion(self) -> Optional[str]:
        """The paused trial to resume next: the highest rung first, the best score there first."""
        for rung in reversed(self.rungs):
            waiting = [t for t in self.promotable(rung) if self.paused.get(t) == rung]
            if waiting:
                return waiting[0]
        return None

    def _hand_on_slot(self, tune_controller, freed: Optional[str]) -> None:
        """A slot frees (``freed`` pauses, or a running trial ends): a promotion takes it, else the searcher."""
        if freed is not None:
            _Slots(tune_controller.search_alg).release(freed)
        chosen = self.next_promotion()
        if chosen is not None:
            rung = self.paused[chosen]
            self._promote(tune_controller, chosen, why=f"ranks in the top {self._top_count(rung)} of "
                                                       f"{len(self.scores[rung])} at rung {rung}")

    def _promote(self, tune_controller, trial_id: str, why: str) -> None:
        rung = self.paused.pop(trial_id)
        self.promoted[rung].append(trial_id)
        self.resuming.add(trial_id)
        _Slots(tune_controller.search_alg).claim(trial_id)
        logger.info("trial %s %s: it resumes", trial_id, why)

    def _drain(self, tune_controller, trials: list[Trial]) -> Optional[Trial]:
        """No trial left to start or run: nothing new can reach a rung. The best trial waiting at the
        highest rung goes on if that rung has promoted none (so a search always finishes a model);
        otherwise no result can promote the waiting trials any more, and they stop early."""
        if not self.paused or self.resuming or not tune_controller.search_alg.is_finished():
            return None
        if any(t.status in (Trial.PENDING, Trial.RUNNING) for t in trials):
            return None
        top = max(self.paused.values())
        if not self.promoted[top]:
            chosen = next(t for t in self.ranked(top) if self.paused.get(t) == top)
            self._promote(tune_controller, chosen, why=f"is the best of {len(self.scores[top])} at rung {top}, "
                                                       "and no trial is left to run")
            return next(t for t in trials if t.trial_id == chosen)
        for trial in trials:
            if trial.status == Trial.PAUSED:
                logger.info("trial %s stopped early at rung %d: no trial is left to run", trial.trial_id,
                            self.paused.get(trial.trial_id, 0))
                self.stopped_early.append(trial.trial_id)
                tune_controller.stop_trial(trial)
        return None

    # --- state kept for --resume -------------------------------------------------------------------
    def records(self) -> dict:
        """The rung records, as plain data: each rung's scores and promotions, and who waits where."""
        return {"rungs": list(self.rungs), "reduction_factor": self.eta, "paused": dict(self.paused),
                "stopped_early": list(self.stopped_early),
                "scores": {r: dict(s) for r, s in self.scores.items()},
                "promoted": {r: list(p) for r, p in self.promoted.items()}}

    def restore_records(self, records: dict) -> None:
        """Take the records an interrupted search checkpointed (see :class:`RungRecords`)."""
        if list(records["rungs"]) != self.rungs or float(records["reduction_factor"]) != self.eta:
            raise ValueError(f"the checkpointed ASHA records are for rungs {records['rungs']} and reduction factor "
                             f"{records['reduction_factor']}, but this search has rungs {self.rungs} and "
                             f"{self.eta:g}; start a new search without --resume")
        self.scores = {int(r): dict(s) for r, s in records["scores"].items()}
        self.promoted = {int(r): list(p) for r, p in records["promoted"].items()}
        self.paused = {t: int(r) for t, r in records["paused"].items()}
        self.stopped_early = list(records["stopped_early"])


class RungRecords(ray_tune.Callback):
    """Checkpoints a :class:`PromotionASHA`'s rung records with Tune's experiment state.

    Tune saves every callback's ``get_state()`` next to the experiment state at each experiment
    checkpoint, and ``Tuner.restore`` hands it back through ``set_state()`` before it requeues the
    restored trials. The Tuner pickles its TuneConfig and RunConfig together, so the restored
    callback still holds the restored scheduler.
    """

    def __init__(self, scheduler: PromotionASHA):
        self.scheduler = scheduler

    def get_state(self) -> Optional[dict]:
        return {"asha": self.scheduler.records()}

    def set_state(self, state: dict) -> None:
        self.scheduler.restore_records(state["asha"])
        logger.info("ASHA's rung records restored: %s", self.scheduler.debug_string())


class _Slots:
    """The searcher's count of live trials, which a paused trial must not hold."""

    def __init__(self, search_alg):
        inner = search_alg  # Tune's SearchGenerator wraps a ConcurrencyLimiter, which wraps the Searcher
        while not hasattr(inner, "live_trials") and not hasattr(inner, "_live_trials") and hasattr(inner, "searcher"):
            inner = inner.searcher
        self._limiter = inner if hasattr(inner, "live_trials") else None  # ConcurrencyLimiter
        self._live = getattr(inner, "live_trials", getattr(inner, "_live_trials", None))  # or random search's own

    def release(self, trial_id: str) -> None:
        if self._live is not None and trial_id in self._live:
            self._live.discard(trial_id)
            if self._limiter is not None:
                self._limiter.num_unfinished_live_trials -= 1

    def claim(self, trial_id: str) -> None:
        if self._live is not None and trial_id not in self._live:
            self._live.add(trial_id)
            if self._limiter is not None:
                self._limiter.num_unfinished_live_trials += 1
