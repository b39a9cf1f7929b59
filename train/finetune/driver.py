"""The driver side of ``attune finetune``: validate, launch Ray Train, collect the export."""
from __future__ import annotations

import datetime as _dt
import logging
import shutil
import tempfile
import time
from pathlib import Path
from typing import Optional, Sequence

from cluster import Settings, get_settings, init_ray, render_log
from registry import run_name, tenant_model_name
from train._base import pinned_base, resolve_base
from train._data import TenantData, load_tenant_data
from train._errors import ConfigError, TrainError
from train._run import collect_export, failure_hint, open_run, shown_progress, torch_trainer, tracked, uses_gpu
from train._worker import logging_config
from train.finetune.config import FinetuneConfig
from train.finetune.crossval import all_rows, register_and_gate_cv, run_small_data, small_data_recipe
from train.finetune.loop import train_loop_per_worker

logger = logging.getLogger("attune.train")
FREE_CPU_WAIT_S = 15.0  # check_free_cpus: how long CPUs a finished run still holds may take to come back


def finetune(config: FinetuneConfig, *, settings: Optional[Settings] = None,
             dataset: Optional[TenantData] = None) -> dict:
    """Fine-tune one tenant's classifier and export it; returns the ``--json`` summary.

    Everything that can be checked on the driver (data, base model) is checked
    before Ray starts, so bad input fails fast and leaves nothing behind.
    ``dataset`` lets callers pass already-loaded data (e.g. a union of tenants).
    With ``register_model`` the MLflow run opens as training starts (RUNNING, with its
    params and dataset), gets each epoch's metrics as it ends, and ends FINISHED with
    the registered model, or FAILED / KILLED with the error (``registry.LiveRun``).
    """
    settings = settings or get_settings()
    if dataset is None:
        dataset = load_tenant_data(config.data, fractions=config.split_fractions,
                                   endpoint_url=settings.s3_endpoint_url)
    base, base_dir = pinned_base(config.base, settings)  # models:/base.<name>@alias -> /<version>
    config = config.model_copy(update={"base": base})
    resolve_base(config.base if base_dir is None else str(base_dir))
    out_dir = _out_dir(config, settings)
    if out_dir.exists() and any(out_dir.iterdir()):
        raise ConfigError(f"--out {out_dir} already exists and is not empty; choose a new directory")
    init_ray(settings)
    check_free_cpus(config, settings)
    train_run = f"finetune-{config.tenant}-{_dt.datetime.now():%Y%m%d-%H%M%S-%f}"  # Ray Train's (erasure matches it)
    with open_run(settings, tenant_model_name(config.tenant), _opening_record(config, dataset),
                  enabled=config.register_model) as live:
        started = time.monotonic()
        with shown_progress(settings, train_run, f"fine-tuning {config.tenant}", "steps",
                            tracked(_render, live)) as progress_file:
            workers = config if base_dir is None else config.model_copy(update={"base": str(base_dir)})
            runner = run_small_data if small_data_recipe(workers, len(all_rows(dataset))) else run_training
            result = runner(workers, settings, dataset, run_name=train_run, progress_file=progress_file)
        train_seconds = time.monotonic() - started
        figure_data = collect_export(result, out_dir)
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
        if live is not None:
            output.update(_register(config, settings, dataset, out_dir, output, figure_data, live))
    return output


def _opening_record(config: FinetuneConfig, dataset: TenantData):
    """What the run shows while it trains: its name (tenant, method, time), params, lineage and data."""
    from train.finetune.register import run_record

    return run_record("finetune", run_name("finetune", config.tenant, config.method), _params(config), {}, [],
                      tenant=config.tenant, base=config.base, method=config.method, data_uri=config.data,
                      dataset=dataset)


def _params(config: FinetuneConfig) -> dict:
    return config.model_dump(mode="json")


def _register(config: FinetuneConfig, settings: Settings, dataset: TenantData, out_dir: Path, output: dict,
              figure_data: Optional[dict], live) -> dict:
    """Complete the live run (final metrics, figures, the model), register the export as the tenant's next
    version from that run, and gate it."""
    from registry import Registry
    from train._figures import render_figures
    from train.finetune.register import register_and_gate, run_record

    margin = settings.promotion_margin if config.promotion_margin is None else config.promotion_margin
    floor = settings.promotion_floor if config.promotion_floor is None else config.promotion_floor
    with tempfile.TemporaryDirectory(prefix="attune-figures-") as folder:
        record = run_record("finetune", live.name, _params(config), output["metrics"], output["history"],
                            tenant=config.tenant, base=config.base, method=config.method, data_uri=config.data,
                            dataset=dataset, figures=render_figures(figure_data, Path(folder)))
        gate = register_and_gate_cv if output["metrics"].get("evaluation") == "cross-validation" else register_and_gate
        return gate(Registry.from_settings(settings), config.tenant, out_dir,
                                 record.model_copy(update={"run_id": live.run_id}), dataset,
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


def check_free_cpus(config: FinetuneConfig, settings: Settings) -> None:
    """On the local Ray, which nothing adds CPUs to, refuse a CPU run that could never be scheduled (Ray
    Train would wait for ever), e.g. next to a running endpoint that holds some of the CPUs. CPUs that a
    run which just ended still holds are waited for, up to ``FREE_CPU_WAIT_S``."""
    from cluster import free_local_cpus

    free = free_local_cpus(settings)
    if free is None or uses_gpu(config.use_gpu, config.num_workers):
        return
    deadline = time.monotonic() + FREE_CPU_WAIT_S  # a run that just ended may still be releasing its CPUs
    while free < config.num_workers and time.monotonic() < deadline:
        time.sleep(0.5)
        free = free_local_cpus(settings) or 0
    if free >= config.num_workers:
        return
    raise ConfigError(f"--workers {config.num_workers} needs {config.num_workers} CPUs, and the local Ray has {free} "
                      "free (a running endpoint or another job holds the rest): pass --workers "
                      f"{max(free, 1)}" + (", or stop the endpoint first (attune serve down)" if free < 1 else ""))


def _out_dir(config: FinetuneConfig, settings: Settings) -> Path:
    if config.out is not None:
        return Path(config.out)
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%S")
    return settings.models_dir / config.tenant / stamp


def _render(view, event: dict) -> None:
    """A rank-0 event on the driver: a log line, or a step (epoch, loss and samples/s on the bar)."""
    if render_log(view, event) or event.get("kind") != "step":
        return
    detail = f"epoch {event['epoch']}/{event['epochs']}  loss {event['loss']:.4f}"
    view.step(event["done"], event["total"], text=f"{detail}  {event['samples_per_s']:.1f} samples/s",
              postfix=detail)


def run_training(config: FinetuneConfig, settings: Settings, dataset: TenantData, *, run_name: str,
                 storage_path: Optional[Path] = None, callbacks: Sequence = (),
                 initial_checkpoint: Optional[str] = None, progress_file: Optional[Path] = None):
    """One Ray Train run of the fine-tuning loop: ``attune finetune`` and every ``attune tune`` trial.

    ``callbacks`` are Ray Train callbacks (a tune trial forwards the workers' reports with one).
    ``initial_checkpoint`` is a checkpoint directory of this loop to start from when the run has
    none of its own (a trial continuing another trial's weights under PBT). Reusing ``run_name``
    under the same ``storage_path`` resumes that run from its last checkpoint. ``progress_file``
    is where rank 0 writes its progress for the driver to show (``train._run.shown_progress``).
    """
    use_gpu = uses_gpu(config.use_gpu, config.num_workers)
    for name in ("train", "validation", "test"):
        if not getattr(dataset, name):
            raise ConfigError(f"{config.data}: the {name} split is empty; add more rows (splits are 80/10/10)")
    loop_config = {"finetune": config.model_dump(mode="json"), "data": worker_payload(config, dataset),
                   **logging_config(settings, progress_file)}
    if initial_checkpoint is not None:
        loop_config["initial_checkpoint"] = str(initial_checkpoint)
    storage = Path(storage_path or settings.ray_storage_dir)
    trainer = torch_trainer(train_loop_per_worker, loop_config, num_workers=config.num_workers, use_gpu=use_gpu,
                            run_name=run_name, storage_path=storage, max_failures=config.max_failures,
                            callbacks=callbacks)
    logger.info("fine-tuning tenant %s: %d train / %d validation / %d test rows, %d worker(s), ZeRO-%d, %s",
                config.tenant, len(dataset.train), len(dataset.validation), len(dataset.test),
                config.num_workers, config.zero_stage, "GPU" if use_gpu else "CPU")
    run_dir = storage / run_name
    try:
        result = trainer.fit()
    except Exception as exc:  # Ray wraps worker errors; surface the cause plainly
        shutil.rmtree(run_dir, ignore_errors=True)
        raise TrainError(f"training tenant {config.tenant!r} failed: {exc}{failure_hint()}") from exc
    if result.error is not None:
        shutil.rmtree(run_dir, ignore_errors=True)
        raise TrainError(f"training tenant {config.tenant!r} failed: {result.error}{failure_hint()}")
    return result


