"""What both training drivers share around a Ray Train run: GPUs or CPUs, the trainer, the progress the
user sees while it runs, its live MLflow run, and collecting rank 0's export.

Only the driver talks to MLflow: rank 0 appends a ``metrics`` event to the progress file when an epoch
ends (or an evaluation is done), ``{"kind": "metrics", "step": ..., "time_ms": ..., "metrics": {...}}``,
and the driver logs it into the open run (``tracked``) with that step and time.
"""
from __future__ import annotations

import contextlib
import logging
import shutil
from pathlib import Path
from typing import Callable, Iterator, Optional, Sequence

from cluster import ProgressView, follow_progress, ray_log_dir
from train._errors import TrainError
from train._figures import read_figure_data

logger = logging.getLogger("attune.train")
PROGRESS_DIR = ".progress"  # under the Ray storage folder, which the driver and every worker share


def uses_gpu(use_gpu: Optional[bool], num_workers: int, cluster: Optional[dict] = None) -> bool:
    """``use_gpu`` as configured, else GPUs when the cluster (``ray.cluster_resources()`` unless
    given) has one per worker."""
    if use_gpu is not None:
        return use_gpu
    if cluster is None:
        import ray

        cluster = ray.cluster_resources()
    return cluster.get("GPU", 0) >= num_workers


def torch_trainer(loop: Callable, loop_config: dict, *, num_workers: int, use_gpu: bool, run_name: str,
                  storage_path: Path, max_failures: int, callbacks: Sequence = ()):
    """A ``TorchTrainer`` for ``loop``: one worker per CPU (or GPU), gloo (or nccl), the last checkpoint
    kept, worker groups restarted from it up to ``max_failures`` times."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    return TorchTrainer(
        loop,
        train_loop_config=loop_config,
        scaling_config=ScalingConfig(num_workers=num_workers, use_gpu=use_gpu,
                                     resources_per_worker=None if use_gpu else {"CPU": 1}),
        torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
        run_config=RunConfig(name=run_name, storage_path=str(storage_path),
                             checkpoint_config=CheckpointConfig(num_to_keep=1),
                             failure_config=FailureConfig(max_failures=max_failures),
                             callbacks=list(callbacks) or None),
    )


@contextlib.contextmanager
def shown_progress(settings, run_name: str, desc: str, unit: str, render) -> Iterator[Path]:
    """The progress file for a run's workers (yielded), shown while the body runs (``cluster._progress``)."""
    path = Path(settings.ray_storage_dir) / PROGRESS_DIR / f"{run_name}.jsonl"
    view = ProgressView(desc, unit, logger, settings.progress_interval_s)
    with follow_progress(path, view, render):
        yield path


def open_run(settings, experiment: str, record, enabled: bool = True):
    """The training's live MLflow run (``registry.LiveRun``, a context manager that ends it FAILED or
    KILLED if its block raises), or a context yielding None when the run is not tracked."""
    if not enabled:
        return contextlib.nullcontext(None)
    from registry import Registry

    return Registry.from_settings(settings).open_run(experiment, record)


def tracked(render, live):
    """``render`` for ``shown_progress`` that also logs rank 0's ``metrics`` events into ``live``."""
    if live is None:
        return render
    warned, logged = [], set()

    def both(view, event: dict) -> None:
        render(view, event)
        if event.get("kind") != "metrics":
            return
        step = int(event["step"])  # a step redone after a worker-group restart is logged once, as first seen
        metrics = {k: v for k, v in event.get("metrics", {}).items() if (k, step) not in logged}
        try:
            live.log_metrics(metrics, step=step, timestamp_ms=event.get("time_ms"))
            logged.update((k, step) for k in metrics)
        except Exception as exc:  # noqa: BLE001 - tracking must not stop a training; the record fills gaps
            if not warned:
                warned.append(exc)
                logger.warning("could not log metrics to MLflow run %s (%s); the run's final record will "
                               "carry them", live.run_id, exc)
    return both


def metrics_event(writer, step: int, metrics: dict) -> None:
    """Rank 0: send ``metrics`` at ``step`` (an epoch, an optimizer step) to the driver's live run."""
    import time

    if writer is not None:
        values = {k: v for k, v in metrics.items() if k not in ("step", "epoch")}  # the x-axis, not a metric
        writer.event("metrics", step=int(step), time_ms=int(time.time() * 1000), metrics=values)


def failure_hint() -> str:
    """Where the workers' own output is, for an error message."""
    return f"; the workers' logs are in {ray_log_dir()} (or rerun with --log-level DEBUG to see them here)"


def collect_export(result, out_dir: Path) -> Optional[dict]:
    """Copy rank 0's exported model out of Ray Train storage, atomically, then drop the run. Returns the
    data of the run's figures that rank 0 left beside the model (``train._figures``), None without any."""
    if result.checkpoint is None:
        raise TrainError("training finished without an exported model" + failure_hint())
    try:
        with result.checkpoint.as_directory() as directory:
            copy_export(Path(directory) / "model", out_dir)
            return read_figure_data(Path(directory))
    finally:
        if result.path:
            shutil.rmtree(result.path, ignore_errors=True)


def copy_export(model_dir: Path, out_dir: Path) -> None:
    """Copy an exported model directory to ``out_dir`` atomically (staged, then renamed)."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = out_dir.with_name(out_dir.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    try:
        shutil.copytree(model_dir, staging)
        if out_dir.exists():
            out_dir.rmdir()
        staging.rename(out_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
