"""The driver side of ``attune finetune``: validate, launch Ray Train, collect the export."""
from __future__ import annotations

import datetime as _dt
import logging
import shutil
import time
from pathlib import Path
from typing import Optional, Sequence

from cluster import Settings, get_settings, init_ray
from train._config import FinetuneConfig
from train._data import TenantData, load_tenant_data
from train._errors import TrainError
from train._loop import train_loop_per_worker
from train._model import resolve_base

logger = logging.getLogger("attune.train")


def finetune(config: FinetuneConfig, *, settings: Optional[Settings] = None,
             dataset: Optional[TenantData] = None) -> dict:
    """Fine-tune one tenant's classifier and export it; returns the ``--json`` summary.

    Everything that can be checked on the driver (data, base model) is checked
    before Ray starts, so bad input fails fast and leaves nothing behind.
    ``dataset`` lets callers pass already-loaded data (e.g. a union of tenants).
    """
    settings = settings or get_settings()
    if dataset is None:
        dataset = load_tenant_data(config.data, fractions=config.split_fractions,
                                   endpoint_url=settings.s3_endpoint_url)
    resolve_base(config.base)
    out_dir = _out_dir(config, settings)
    if out_dir.exists() and any(out_dir.iterdir()):
        raise TrainError(f"--out {out_dir} already exists and is not empty; choose a new directory")
    init_ray(settings)
    started = time.monotonic()
    result = _fit(config, settings, dataset)
    train_seconds = time.monotonic() - started
    _collect_export(result, out_dir)
    summary = result.return_value or {}
    output = {
        "tenant": config.tenant,
        "model_dir": str(out_dir.resolve()),
        "metrics": summary.get("metrics", {}),
        "history": summary.get("history", []),
        "split_counts": dataset.split_counts(),
        "data_hash": dataset.data_hash,
        "train_seconds": round(train_seconds, 2),
        "worker_nodes": summary.get("worker_nodes", []),
    }
    if config.register_model:
        output.update(_register(config, settings, dataset, out_dir, output))
    return output


def _register(config: FinetuneConfig, settings: Settings, dataset: TenantData, out_dir: Path, output: dict) -> dict:
    """Log the run to MLflow, register the export as the tenant's next version, and gate it."""
    from registry import Registry
    from train._promote import register_and_gate, run_record

    record = run_record("finetune", f"finetune-{config.tenant}", config.model_dump(mode="json"),
                        output["metrics"], output["history"], tenant=config.tenant, base=config.base,
                        method=config.method, data_uri=config.data, dataset=dataset)
    margin = settings.promotion_margin if config.promotion_margin is None else config.promotion_margin
    floor = settings.promotion_floor if config.promotion_floor is None else config.promotion_floor
    return register_and_gate(Registry.from_settings(settings), config.tenant, out_dir, record, dataset,
                             promote=config.promote, margin=margin, floor=floor)


def worker_payload(config: FinetuneConfig, dataset: TenantData) -> dict:
    """The plain-data part of the loop config: labels as indices, per split."""
    index = dataset.label_index()
    rows = lambda examples: [(e.text, index[e.label]) for e in examples]  # noqa: E731
    train = rows(dataset.train)
    if config.max_train_rows is not None:
        train = train[: config.max_train_rows]
    return {"labels": dataset.labels, "train": train, "validation": rows(dataset.validation),
            "test": rows(dataset.test), "data_hash": dataset.data_hash,
            "split_counts": dataset.split_counts()}


def _out_dir(config: FinetuneConfig, settings: Settings) -> Path:
    if config.out is not None:
        return Path(config.out)
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%S")
    return settings.models_dir / config.tenant / stamp


def _fit(config: FinetuneConfig, settings: Settings, dataset: TenantData):
    run_name = f"finetune-{config.tenant}-{_dt.datetime.now():%Y%m%d-%H%M%S-%f}"
    return run_training(config, settings, dataset, run_name=run_name)


def uses_gpu(use_gpu: Optional[bool], num_workers: int, cluster: Optional[dict] = None) -> bool:
    """``use_gpu`` as configured, else GPUs when the cluster (``ray.cluster_resources()`` unless
    given) has one per worker."""
    if use_gpu is not None:
        return use_gpu
    if cluster is None:
        import ray

        cluster = ray.cluster_resources()
    return cluster.get("GPU", 0) >= num_workers


def run_training(config: FinetuneConfig, settings: Settings, dataset: TenantData, *, run_name: str,
                 storage_path: Optional[Path] = None, callbacks: Sequence = (),
                 initial_checkpoint: Optional[str] = None):
    """One Ray Train run of the fine-tuning loop: ``attune finetune`` and every ``attune tune`` trial.

    ``callbacks`` are Ray Train callbacks (a tune trial forwards the workers' reports with one).
    ``initial_checkpoint`` is a checkpoint directory of this loop to start from when the run has
    none of its own (a trial continuing another trial's weights under PBT). Reusing ``run_name``
    under the same ``storage_path`` resumes that run from its last checkpoint.
    """
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    use_gpu = uses_gpu(config.use_gpu, config.num_workers)
    for name in ("train", "validation", "test"):
        if not getattr(dataset, name):
            raise TrainError(f"{config.data}: the {name} split is empty; add more rows (splits are 80/10/10)")
    loop_config = {"finetune": config.model_dump(mode="json"), "data": worker_payload(config, dataset),
                   "log_level": settings.log_level, "progress_interval_s": settings.progress_interval_s}
    if initial_checkpoint is not None:
        loop_config["initial_checkpoint"] = str(initial_checkpoint)
    storage = Path(storage_path or settings.ray_storage_dir)
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config=loop_config,
        scaling_config=ScalingConfig(num_workers=config.num_workers, use_gpu=use_gpu,
                                     resources_per_worker=None if use_gpu else {"CPU": 1}),
        torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
        run_config=RunConfig(
            name=run_name,
            storage_path=str(storage),
            checkpoint_config=CheckpointConfig(num_to_keep=1),
            failure_config=FailureConfig(max_failures=config.max_failures),
            callbacks=list(callbacks) or None,
        ),
    )
    logger.info("fine-tuning tenant %s: %d train / %d validation / %d test rows, %d worker(s), ZeRO-%d, %s",
                config.tenant, len(dataset.train), len(dataset.validation), len(dataset.test),
                config.num_workers, config.zero_stage, "GPU" if use_gpu else "CPU")
    run_dir = storage / run_name
    try:
        result = trainer.fit()
    except Exception as exc:  # Ray wraps worker errors; surface the cause plainly
        shutil.rmtree(run_dir, ignore_errors=True)
        raise TrainError(f"training tenant {config.tenant!r} failed: {exc}") from exc
    if result.error is not None:
        shutil.rmtree(run_dir, ignore_errors=True)
        raise TrainError(f"training tenant {config.tenant!r} failed: {result.error}")
    return result


def _collect_export(result, out_dir: Path) -> None:
    """Copy rank 0's exported model out of Ray Train storage, atomically, then drop the run."""
    if result.checkpoint is None:
        raise TrainError("training finished without an exported model; see the worker logs above")
    try:
        with result.checkpoint.as_directory() as directory:
            copy_export(Path(directory) / "model", out_dir)
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
