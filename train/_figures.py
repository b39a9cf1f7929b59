"""The two figures every fine-tune logs with its run, which the MLflow UI shows: a reliability diagram
on the test split before and after temperature scaling (ECE in the legend), and the test split's
confusion matrix.

Rank 0 computes their data where the test logits are (:func:`figure_data`) and writes it beside the
exported model in its final checkpoint (``figure_data.json``, not in the model folder, whose files are
checksummed). The driver that registers the run renders the PNGs from it (:func:`render_figures`), and
the registry logs them under the run's ``figures/``. matplotlib is imported only to render, and only
its object API is used (``Figure.savefig`` draws with Agg): no display, no global pyplot state.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from train._metrics import ECE_BINS, reliability_bins, softmax

logger = logging.getLogger("attune.train")

FIGURE_DATA = "figure_data.json"  # beside ``model/`` in rank 0's final checkpoint
RELIABILITY_PNG = "reliability.png"
CONFUSION_PNG = "confusion_matrix.png"
# Drawing stays well under 0.5 s of CPU a figure: each written count costs about 1 ms, so counts are
# written in the cells up to 12 labels (144 cells), names on the axes up to 30 labels, each cut to 24
# characters (a label may have 100).
MAX_ANNOTATED_LABELS = 12
MAX_NAMED_LABELS = 30
MAX_NAME_CHARS = 24
NAME_CHAR_IN = 0.065  # inches a character of a "small" (8.3 pt) tick label takes, about
DPI = 100


def figure_data(logits: np.ndarray, y_true: Sequence[int], labels: list[str], temperature: float,
                temperature_slope: float = 0.0, num_bins: int = ECE_BINS) -> dict:
    """What both figures show, as plain JSON data: the reliability bins of the test predictions before
    (T = 1) and after scaling by ``temperature`` and ``temperature_slope`` (each with the ECE that
    ``classification_report`` logs), and the confusion matrix ``confusion[true][predicted]`` of their
    argmax (which scaling never changes)."""
    y_true = np.asarray(y_true, dtype=np.int64)
    logits = np.asarray(logits, dtype=np.float64)
    confusion = np.zeros((len(labels), len(labels)), dtype=np.int64)
    if len(y_true):
        np.add.at(confusion, (y_true, logits.argmax(axis=1)), 1)
    scalings = ((1.0, 0.0), (temperature, temperature_slope))
    probs = [softmax(logits, t, s) if len(y_true) else logits for t, s in scalings]
    return {"labels": list(labels), "test_rows": int(len(y_true)), "temperature": float(temperature),
            "temperature_slope": float(temperature_slope),
            "before": reliability_bins(probs[0], y_true, num_bins),
            "after": reliability_bins(probs[1], y_true, num_bins),
            "confusion": confusion.tolist()}


def _scaling_text(data: dict) -> str:
    slope = data.get("temperature_slope", 0.0)  # figure data written before slopes has none
    return f"{data['temperature']:.3g}" + (f"·exp({slope:.3g}·margin)" if slope else "")


def write_figure_data(checkpoint_dir: Path, data: dict) -> Path:
    path = Path(checkpoint_dir) / FIGURE_DATA
    path.write_text(json.dumps(data))
    return path


def read_figure_data(checkpoint_dir: Path) -> Optional[dict]:
    """The figure data rank 0 wrote into a final checkpoint, or None (an export made before attune drew
    figures, or one that is not a fine-tune's)."""
    path = Path(checkpoint_dir) / FIGURE_DATA
    return json.loads(path.read_text()) if path.is_file() else None


def render_figures(data: Optional[dict], folder: Path) -> list[Path]:
    """Both figures of ``data`` as PNG files in ``folder``, to log with the run. A run is never lost over
    its pictures: without data, or when drawing fails, this warns and returns what it drew."""
    if data is None:
        logger.warning("no figure data beside the exported model (%s); the run is logged without figures",
                       FIGURE_DATA)
        return []
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    drawn = []
    for build, name in ((reliability_figure, RELIABILITY_PNG), (confusion_figure, CONFUSION_PNG)):
        try:
            drawn.append(save_png(build(data), folder / name))
        except Exception as exc:  # noqa: BLE001 - a picture must not cost the model its registration
            logger.warning("could not draw %s (%s: %s); the run is logged without it", name, type(exc).__name__, exc)
    return drawn


def save_png(figure, path: Path) -> Path:
    figure.savefig(path, format="png", dpi=DPI)
    return Path(path)


def reliability_figure(data: dict):
    """Accuracy per confidence bin before (T = 1) and after temperature scaling, beside the diagonal of
    perfect calibration; each legend entry carries its ECE."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(5.5, 5), dpi=DPI, layout="constrained")
    axes = figure.add_subplot()
    edges = np.asarray(data["before"]["edges"])
    width = np.diff(edges) / 2
    axes.plot([0, 1], [0, 1], linestyle="--", color="0.5", linewidth=1, label="perfect calibration")
    for key, shift, color, name in (("before", 0.0, "tab:orange", "before scaling (T=1)"),
                                    ("after", 1.0, "tab:blue", f"after scaling (T={_scaling_text(data)})")):
        bins = data[key]
        accuracy = [0.0 if a is None else a for a in bins["accuracy"]]
        axes.bar(edges[:-1] + shift * width, accuracy, width=width, align="edge", color=color, alpha=0.85,
                 label=f"{name}: ECE {bins['ece']:.4f}")
    axes.set(xlim=(0, 1), ylim=(0, 1), xlabel="confidence (probability of the predicted label)",
             ylabel="accuracy", title=f"reliability, test split ({data['test_rows']} rows, "
                                      f"{len(edges) - 1} bins)")
    axes.legend(loc="upper left", fontsize="small")
    return figure


def confusion_figure(data: dict):
    """Counts of test rows by true (rows) and predicted (columns) label."""
    from matplotlib.figure import Figure

    labels, counts = data["labels"], np.asarray(data["confusion"])
    names = [n if len(n) <= MAX_NAME_CHARS else n[:MAX_NAME_CHARS - 1] + "…" for n in labels]
    names = names if len(labels) <= MAX_NAMED_LABELS else []
    # margins for the names, measured here: a layout engine that measures every tick label costs 3x
    name_in = NAME_CHAR_IN * max(map(len, names), default=2)
    width = height = min(4.0 + 0.3 * len(labels), 10.0) + name_in
    figure = Figure(figsize=(width + 1.2, height), dpi=DPI)
    figure.subplots_adjust(left=(0.7 + name_in) / (width + 1.2), right=1 - 1.3 / (width + 1.2),
                           bottom=(0.6 + 0.75 * name_in) / height, top=1 - 0.45 / height)
    axes = figure.add_subplot()
    image = axes.imshow(counts, cmap="Blues", interpolation="nearest", vmin=0)
    figure.colorbar(image, ax=axes, label="test rows")
    if names:
        axes.set_xticks(range(len(names)), names, rotation=45, ha="right", rotation_mode="anchor", fontsize="small")
        axes.set_yticks(range(len(names)), names, fontsize="small")
    if len(labels) <= MAX_ANNOTATED_LABELS:
        dark = counts.max() / 2 if counts.size else 0
        for (row, column), count in np.ndenumerate(counts):
            axes.text(column, row, str(count), ha="center", va="center", fontsize="small",
                      color="white" if count > dark else "black")
    axes.set(xlabel="predicted label", ylabel="true label",
             title=f"confusion matrix, test split ({data['test_rows']} rows)")
    return figure
