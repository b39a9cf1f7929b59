"""Progress of long work (fine-tuning steps, pretraining steps, tune trials), as the user sees it.

The work runs in Ray workers whose own output goes to Ray's log files, not to the terminal. Rank 0
writes progress events to a small JSON-lines file under the run's storage (:class:`ProgressWriter`,
also a ``logging.Handler`` for rank 0's ``attune`` log lines); the driver follows that file
(:func:`follow_progress`) and shows it with a :class:`ProgressView`: a bar on a terminal (tqdm), periodic
log lines at least every ``interval_s`` when the output is not a terminal (a file, CI, a Ray job).
A file works wherever a training works: the driver already reads the run's checkpoints from the
same storage.
"""
from __future__ import annotations

import contextlib
import json
import logging
import math
import sys
import threading
import time
from pathlib import Path
from typing import Iterator, Optional, TextIO

STEP_EVERY_S = 0.5  # rank 0 writes a step event at most this often (and at every epoch's end)


class ProgressWriter(logging.Handler):
    """Rank 0's side: appends events to ``path``. As a logging handler, every record it receives
    becomes a ``log`` event the driver prints."""

    def __init__(self, path: Path):
        super().__init__(level=logging.INFO)
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._last_step = 0.0

    def event(self, kind: str, **fields) -> None:
        with open(self.path, "a") as handle:
            handle.write(json.dumps({"kind": kind, **fields}, default=str) + "\n")

    def step(self, done: int, total: int, force: bool = False, **fields) -> None:
        """A ``step`` event: ``done`` of ``total`` steps, plus what the bar shows (epoch, loss, rate)."""
        now = time.monotonic()
        if force or done >= total or now - self._last_step >= STEP_EVERY_S:
            self._last_step = now
            self.event("step", done=done, total=total, **fields)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.event("log", level=record.levelname, message=record.getMessage())
        except Exception:  # noqa: BLE001 - progress must never break a training
            self.handleError(record)


class ProgressView:
    """The driver's side: a tqdm bar on a terminal, else a log line at least every ``interval_s``."""

    def __init__(self, desc: str, unit: str, logger: logging.Logger, interval_s: float = 10.0,
                 stream: Optional[TextIO] = None, bar: Optional[bool] = None):
        self.desc, self.unit, self.logger, self.interval_s = desc, unit, logger, interval_s
        self.stream = stream or sys.stderr
        self.bar = None
        self._redirect = None
        self._postfix = ""
        self._use_bar = _is_terminal(self.stream) if bar is None else bar
        self._last_line = -math.inf
        self._first: Optional[tuple[int, float]] = None  # (done, when) at the first step seen

    def __getstate__(self) -> dict:
        """Without the stream and the bar: Ray pickles driver objects that hold a view (Tune keeps its
        callbacks in the experiment state), and a notebook's or a test's stderr cannot be pickled."""
        return {**self.__dict__, "stream": None, "bar": None, "_redirect": None}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self.stream = sys.stderr

    def step(self, done: int, total: int, text: str = "", postfix: str = "") -> None:
        """``done`` of ``total``; ``text`` is the log line's detail, ``postfix`` the bar's."""
        if self._use_bar:
            bar = self._bar(total)
            changed = bool(postfix) and postfix != self._postfix
            if changed:
                self._postfix = postfix
                bar.set_postfix_str(postfix, refresh=False)
            if done > bar.n:
                bar.update(done - bar.n)
            if changed or done >= total:  # tqdm redraws at most every mininterval; the last step always
                bar.refresh()
            return
        now = time.monotonic()
        self._first = self._first or (done, now)
        if now - self._last_line >= self.interval_s or done >= total:
            self._last_line = now
            first_done, since = self._first
            eta = (total - done) * (now - since) / (done - first_done) if done > first_done else math.inf
            self.logger.info("%s %d/%d %s  %s  ETA %s", self.desc, done, total, self.unit, text, format_eta(eta))

    def line(self, message: str, level: int = logging.INFO) -> None:
        """A line of its own (an epoch's result, a trial's end): logged, above the bar on a terminal."""
        self.logger.log(level, message)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        if self._redirect is not None:
            self._redirect.__exit__(None, None, None)
            self._redirect = None

    def _bar(self, total: int):
        if self.bar is None or self.bar.total != total:
            from tqdm import tqdm
            from tqdm.contrib.logging import logging_redirect_tqdm

            self.close()
            self.bar = tqdm(total=total, desc=self.desc, unit=self.unit, file=self.stream, dynamic_ncols=True,
                            leave=False, mininterval=0.2)
            self._redirect = logging_redirect_tqdm()  # log lines print above the bar, not through it
            self._redirect.__enter__()
        return self.bar


@contextlib.contextmanager
def follow_progress(path: Path, view: ProgressView, render, poll_s: float = 0.2) -> Iterator[None]:
    """While the body runs, feed every event rank 0 appends to ``path`` to ``render(view, event)``.

    The file is removed at the end; the last events are read first, so the final step and log
    lines are always shown.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)
    stop = threading.Event()
    reader = _Tail(path)

    def pump() -> None:
        while not stop.wait(poll_s):
            for event in reader.read():
                render(view, event)

    thread = threading.Thread(target=pump, name="attune-progress", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
        for event in reader.read():
            render(view, event)
        view.close()
        path.unlink(missing_ok=True)


def render_log(view: ProgressView, event: dict) -> bool:
    """Show a ``log`` event as a line; True when ``event`` was one."""
    if event.get("kind") != "log":
        return False
    view.line(event.get("message", ""), logging.getLevelName(event.get("level", "INFO")))
    return True


def format_eta(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    seconds = int(seconds)
    return f"{seconds // 60}m{seconds % 60:02d}s"


class _Tail:
    """Reads the complete JSON lines appended to a file since the last read."""

    def __init__(self, path: Path):
        self.path, self.offset, self.partial = path, 0, ""

    def read(self) -> list[dict]:
        try:
            with open(self.path) as handle:
                handle.seek(self.offset)
                chunk = handle.read()
                self.offset = handle.tell()
        except FileNotFoundError:
            return []
        lines = (self.partial + chunk).split("\n")
        self.partial = lines.pop()
        events = []
        for line in lines:
            with contextlib.suppress(ValueError):
                events.append(json.loads(line))
        return events


def _is_terminal(stream) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False
