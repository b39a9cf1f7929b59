"""What both training drivers share around a Ray Train run: GPUs or CPUs, the trainer, the progress the
user sees while it runs, and collecting rank 0's export."""
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
