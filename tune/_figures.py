"""The picture a search's parent run logs, which the MLflow UI shows: every trial's validation curve
(``val_macro_f1`` per epoch), coloured by how the trial ended, the best trial drawn over the rest, and
ASHA's rungs marked where the scheduler judged the trials.

Each status is one line with gaps between trials, so a search of a thousand trials draws as fast as one
of four. matplotlib is imported only to draw, through its object API (Agg, no display, no pyplot state).
"""
from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Optional, Sequence

logger = logging.getLogger("attune.tune")

CURVES_PNG = "validation_curves.png"
CURVE_KEY = "val_macro_f1"
RUNG_GID = "asha-rung"  # the gid of each rung's vertical line
DPI = 100
STYLE = {"completed": dict(color="tab:blue", linewidth=1.2, alpha=0.8),
         "stopped_early": dict(color="0.55", linewidth=1.0, alpha=0.7),
         "failed": dict(color="tab:red", linewidth=1.0, alpha=0.7, linestyle=":")}
STATUS_LABEL = {"completed": "completed", "stopped_early": "stopped early", "failed": "failed"}


def curve(outcome) -> tuple[list[int], list[float]]:
    """(epochs, validation macro-F1) of one trial (a ``tune._tracking.TrialOutcome``), in epoch order."""
    rows = sorted((row["epoch"], row[CURVE_KEY]) for row in outcome.history
                  if CURVE_KEY in row and not math.isnan(row[CURVE_KEY]))
    return [int(e) for e, _ in rows], [float(v) for _, v in rows]


def curves_figure(outcomes: Sequence, rungs: Sequence[int], best_trial_id: Optional[str] = None):
    """Every trial's curve, one line per status (trials separated by gaps), the best trial on top,
    and a dotted vertical line at each rung epoch (``rungs``: empty for a scheduler without any)."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(7, 4.5), dpi=DPI, layout="constrained")
    axes = figure.add_subplot()
    for status, style in STYLE.items():
        drawn = [curve(o) for o in outcomes if o.status == status and o.trial_id != best_trial_id]
        drawn = [c for c in drawn if c[0]]
        if drawn:
            xs = [x for epochs, _ in drawn for x in (*epochs, math.nan)]
            ys = [y for _, values in drawn for y in (*values, math.nan)]
            axes.plot(xs, ys, marker=".", markersize=4, label=f"{STATUS_LABEL[status]} ({len(drawn)})", **style)
    best = next((o for o in outcomes if o.trial_id == best_trial_id), None)
    if best is not None and curve(best)[0]:
        axes.plot(*curve(best), color="tab:green", linewidth=2.2, marker="o", markersize=5, zorder=3,
                  label=f"best: trial {best.trial_id}")
    for i, rung in enumerate(rungs):
        axes.axvline(rung, color="black", linestyle=(0, (1, 2)), linewidth=1, gid=RUNG_GID,
                     label="ASHA rung" if i == 0 else None)
    axes.set(xlabel="epoch", ylabel="validation macro-F1",
             title=f"validation curve of each trial ({len(outcomes)} trials)"
                   + (f", ASHA rungs at epochs {list(rungs)}" if rungs else ""))
    axes.xaxis.get_major_locator().set_params(integer=True)
    if axes.lines:
        axes.legend(loc="lower right", fontsize="small")
    return figure


def render_curves(outcomes: Sequence, rungs: Sequence[int], best_trial_id: Optional[str], folder: Path) -> list[Path]:
    """:func:`curves_figure` as a PNG in ``folder``, to log with the parent run; [] (with a warning) when
    drawing fails: a search's record is never lost over its picture."""
    path = Path(folder) / CURVES_PNG
    try:
        curves_figure(outcomes, rungs, best_trial_id).savefig(path, format="png", dpi=DPI)
    except Exception as exc:  # noqa: BLE001 - see the docstring
        logger.warning("could not draw %s (%s: %s); the search is logged without it", CURVES_PNG,
                       type(exc).__name__, exc)
        return []
    return [path]
