"""What every rank of both training loops does the same way: logging, checkpoint reports, progress."""
from __future__ import annotations

import logging
import shutil
import tempfile
from pathlib import Path
from typing import Optional

from cluster import ProgressWriter
from train import _deepspeed as ds

logger = logging.getLogger("attune.train")


def logging_config(settings, progress_file: Optional[Path]) -> dict:
    """The ``loop_config`` keys :func:`setup_logging` reads: the run's log level, progress interval and,
    when the driver shows the run's progress, the file rank 0 writes it to."""
    config = {"log_level": settings.log_level, "progress_interval_s": settings.progress_interval_s}
    if progress_file is not None:
        config["progress_file"] = str(progress_file)
    return config


def setup_logging(rank: int, loop_config: dict) -> Optional[ProgressWriter]:
    """Rank 0 logs at the run's level, the other ranks only warnings, all to the worker's own log.
    With a ``progress_file`` in ``loop_config``, rank 0's attune lines and its progress also go there,
    for the driver to show (see ``cluster._progress``); returns that writer (None on other ranks).
    Under ``--log-level DEBUG`` Ray forwards the workers' own output instead."""
    level = loop_config.get("log_level", "INFO")
    logging.basicConfig(level="WARNING", format="%(asctime)s %(name)s %(message)s", force=True)
    logger.setLevel(level if rank == 0 else "WARNING")
    root = logging.getLogger("attune")
    for handler in [h for h in root.handlers if isinstance(h, ProgressWriter)]:  # a restarted loop, same process
        root.removeHandler(handler)
    if rank != 0 or not loop_config.get("progress_file"):
        return None
    writer = ProgressWriter(Path(loop_config["progress_file"]))
    if level != "DEBUG":
        root.addHandler(writer)
    return writer


def report_checkpoint(engine, rank: int, state: dict, best: dict | None, metrics: dict) -> None:
    import ray.train
    from ray.train import Checkpoint

    directory = Path(tempfile.mkdtemp(prefix=f"attune-ckpt-r{rank}-"))
    try:
        ds.save_checkpoint(engine, directory, rank, state, best)
        ray.train.report(metrics, checkpoint=Checkpoint.from_directory(str(directory)))
    finally:
        shutil.rmtree(directory, ignore_errors=True)
