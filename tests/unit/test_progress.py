"""Progress of long work: rank 0's events in a file, shown on the driver as a bar or as log lines."""
from __future__ import annotations

import io
import logging
import sys
import threading

import pytest

from cluster import ProgressView, ProgressWriter, follow_progress, render_log


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _render(view, event):
    if not render_log(view, event):
        view.step(event["done"], event["total"], text=f"loss {event['loss']:.2f}", postfix=f"loss {event['loss']:.2f}")


def _run(tmp_path, view, steps: int):
    path = tmp_path / "progress" / "run.jsonl"
    with follow_progress(path, view, _render, poll_s=0.01):
        writer = ProgressWriter(path)
        log = logging.getLogger("attune.test-progress")
        log.propagate = False
        log.setLevel(logging.INFO)
        log.addHandler(writer)
        try:
            log.info("epoch 1/1  val_macro_f1 0.9000  (best)")
            for done in range(1, steps + 1):
                writer.step(done, steps, force=True, loss=1.0 / done)
        finally:
            log.removeHandler(writer)
    return path


def test_without_a_terminal_the_driver_logs_progress_lines_and_the_workers_lines(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="attune.test")
    view = ProgressView("fine-tuning john", "steps", logging.getLogger("attune.test"), interval_s=3600,
                        stream=io.StringIO())
    path = _run(tmp_path, view, steps=5)
    lines = [r.getMessage() for r in caplog.records]
    assert "epoch 1/1  val_macro_f1 0.9000  (best)" in lines
    progress = [line for line in lines if line.startswith("fine-tuning john")]
    # the first step and the last always; none in between within the interval
    assert [p.split()[2] for p in progress] == ["1/5", "5/5"]
    assert "loss 0.20" in progress[-1] and "ETA" in progress[-1]
    assert not path.exists()  # the file is removed once the run ends


def test_on_a_terminal_the_driver_draws_a_bar_and_prints_lines_above_it(tmp_path, caplog):
    stream = _Terminal()
    caplog.set_level(logging.INFO, logger="attune.test")
    view = ProgressView("fine-tuning john", "steps", logging.getLogger("attune.test"), stream=stream)
    _run(tmp_path, view, steps=4)
    shown = stream.getvalue()
    assert "fine-tuning john" in shown and "4/4" in shown and "loss 0.25" in shown
    lines = [r.getMessage() for r in caplog.records]
    assert "epoch 1/1  val_macro_f1 0.9000  (best)" in lines  # a log line, printed above the bar
    assert not [line for line in lines if line.startswith("fine-tuning john")]  # the bar, not progress lines


def test_the_writer_sends_steps_at_most_every_half_second_but_always_the_last(tmp_path):
    writer = ProgressWriter(tmp_path / "p.jsonl")
    for done in range(1, 101):
        writer.step(done, 100, loss=0.5)
    lines = (tmp_path / "p.jsonl").read_text().splitlines()
    assert len(lines) == 2 and '"done": 100' in lines[-1]


def test_events_written_while_the_driver_reads_are_all_shown_in_order(tmp_path):
    seen = []
    path = tmp_path / "p.jsonl"
    writer = ProgressWriter(path)

    def write():
        for done in range(1, 301):
            writer.step(done, 300, force=True, loss=0.1)

    with follow_progress(path, ProgressView("x", "steps", logging.getLogger("attune.test"), stream=io.StringIO()),
                         lambda view, event: seen.append(event["done"]), poll_s=0.001):
        thread = threading.Thread(target=write)
        thread.start()
        thread.join()
    assert seen == list(range(1, 301))


def test_a_view_pickles_without_its_stream_and_shows_on_stderr_after(capsys):
    """Ray pickles a search's callbacks with the experiment state; a view holds the driver's stderr,
    which cannot be pickled under a notebook or a test's capture (tune_tenant called from Python)."""
    import pickle

    view = ProgressView("search john", "trials ended", logging.getLogger("attune.test"), 0.0, bar=False)
    view.step(1, 4, text="first")
    with pytest.raises(TypeError):
        pickle.dumps(sys.stderr)  # what the view held: the capture's stream
    copy = pickle.loads(pickle.dumps(view))
    assert copy.stream is sys.stderr and copy.bar is None and copy.desc == "search john"
    copy.step(4, 4, text="done")
