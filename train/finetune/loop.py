"""The fine-tuning recipe that runs on every Ray Train worker.

Reads top to bottom: setup, restore, train with early stopping, evaluate,
calibrate, export. Rank 0 logs and exports; every rank writes its ZeRO shard.
"""
from __future__ import annotations

import logging
import math
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from registry import temperature_text
from train import _deepspeed as ds
from train._base import load_tokenizer, resolve_base
from train._calibration import calibrate
from train._figures import figure_data, write_figure_data
from train._metrics import classification_report, macro_f1
from train._run import metrics_event
from train._worker import report_checkpoint, setup_logging
from train.finetune.batching import LengthBucketSampler
from train.finetune.config import FinetuneConfig
from train.finetune.export import build_manifest, export_model
from train.finetune.model import build_classifier, classifier_head

logger = logging.getLogger("attune.train")


def train_loop_per_worker(loop_config: dict) -> dict | None:
    """Ray Train entry point. ``loop_config`` holds ``finetune`` (a config dict) and ``data``."""
    import ray.train
    import torch

    cfg = FinetuneConfig(**loop_config["finetune"])
    data = loop_config["data"]
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    writer = setup_logging(rank, loop_config)
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)

    base_dir = resolve_base(cfg.base)
    tokenizer = load_tokenizer(base_dir)
    labels = data["labels"]
    splits = {name: _encode(tokenizer, data[name], cfg.max_seq_len) for name in ("train", "validation", "test")}
    model = _new_model(cfg, base_dir, labels)
    loader = _loader(splits["train"], cfg.batch_size, rank, world, cfg.seed, shuffle=True)
    warmed = _warm_head(cfg, model, loader, rank, world, loop_config)  # before DeepSpeed takes the model
    total_steps = cfg.epochs * len(loader)
    engine, scheduler = _engine(cfg, model, total_steps, world)
    state, best = _restore(engine, scheduler, cfg, rank, loop_config.get("initial_checkpoint"))
    state["zero_stage"] = engine.zero_optimization_stage()
    if warmed:  # a run restored from a checkpoint has its count there
        state["head_warmup_steps"] = len(warmed)
    torch.manual_seed(cfg.seed + 1000 * rank + state["epoch"])  # dropout stream per rank/epoch

    progress = _Progress(writer, world, cfg, total_steps)
    progress.step = state["epoch"] * len(loader)
    for epoch in range(state["epoch"], cfg.epochs):
        if state["bad_epochs"] >= cfg.patience:
            break
        train_loss = _train_epoch(engine, loader, epoch, progress, state)
        val_f1 = _val_macro_f1(engine, splits["validation"], cfg, rank, world, len(labels))
        state["epoch"] = epoch + 1
        improved = val_f1 > state["best_val_macro_f1"]
        if improved:
            state.update(best_val_macro_f1=val_f1, best_epoch=epoch + 1, bad_epochs=0)
            best = ds.gather_state_dict(engine, cfg.zero_stage, rank)
        else:
            state["bad_epochs"] += 1
        state["history"].append({"epoch": epoch + 1, "train_loss": train_loss, "val_macro_f1": val_f1})
        metrics_event(writer, epoch + 1, {"train_loss": train_loss, "val_macro_f1": val_f1})  # the live run's
        if rank == 0:
            logger.info("epoch %d/%d  train_loss %.4f  val_macro_f1 %.4f%s", epoch + 1, cfg.epochs,
                        train_loss, val_f1, "  (best)" if improved else "")
        report_checkpoint(engine, rank, state, best, {"epoch": epoch + 1, "train_loss": train_loss,
                                                       "val_macro_f1": val_f1, "train_steps": progress.step,
                                                       "best_val_macro_f1": state["best_val_macro_f1"]})
    return _finish(cfg, rank, world, base_dir, tokenizer, labels, splits, best, state, data)


def _new_model(cfg: FinetuneConfig, base_dir: Path, labels: list[str]):
    import torch

    torch.manual_seed(cfg.seed)  # the same weights on every rank and every attempt (LoRA's too)
    return build_classifier(base_dir, labels, method=cfg.method, seed=cfg.seed, lora_rank=cfg.lora_rank,
                            lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout, lora_targets=cfg.lora_targets)


def _encode(tokenizer, rows: list, max_seq_len: int):
    """(texts, label ids) -> a TensorDataset of (input_ids, attention_mask, labels, index)."""
    import torch
    from torch.utils.data import TensorDataset

    texts = [t for t, _ in rows]
    enc = tokenizer(texts, truncation=True, padding="max_length", max_length=max_seq_len, return_tensors="pt")
    labels = torch.tensor([y for _, y in rows], dtype=torch.long)
    return TensorDataset(enc["input_ids"], enc["attention_mask"], labels, torch.arange(len(rows)))


def _loader(dataset, batch_size: int, rank: int, world: int, seed: int, shuffle: bool):
    from torch.utils.data import DataLoader

    sampler = LengthBucketSampler(_lengths(dataset), batch_size, rank=rank, world=world, seed=seed,
                                  shuffle=shuffle, bucket_batches=1)
    return DataLoader(dataset, batch_sampler=sampler)


def _warm_head(cfg: FinetuneConfig, model, loader, rank: int, world: int, loop_config: dict) -> list[float]:
    """``--head-warmup-steps``: the new classification head trains alone first, the encoder frozen
    (``train._head_only``). Not when the run starts from a checkpoint: that holds the warmed head."""
    import itertools

    import ray.train
    from ray.train.torch import get_device

    from train._head_only import train_head_alone

    if not cfg.head_warmup_steps or ray.train.get_checkpoint() or loop_config.get("initial_checkpoint"):
        return []
    head = classifier_head(model)
    device = get_device()
    model.to(device)

    def batches():
        for epoch in itertools.count():
            loader.batch_sampler.set_epoch(epoch)
            yield from loader

    stream = batches()

    def loss_at(step: int):
        input_ids, attention_mask, labels, _ = next(stream)
        input_ids, attention_mask = _trim(input_ids, attention_mask)
        return model(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device),
                     labels=labels.to(device)).loss

    if rank == 0:
        logger.info("head warm-up: the new head trains alone for %d step(s), the encoder frozen",
                    cfg.head_warmup_steps)
    return train_head_alone(model, head, loss_at, cfg.head_warmup_steps, rank=rank, world=world,
                            interval_s=loop_config.get("progress_interval_s", 10.0))


def _engine(cfg: FinetuneConfig, model, total_steps: int, world: int):
    import torch
    from transformers import get_linear_schedule_with_warmup

    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    # fused AdamW: one kernel per step instead of a Python loop; ~10x faster on CPU
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr, fused=True)
    scheduler = get_linear_schedule_with_warmup(optimizer, int(cfg.warmup_ratio * total_steps), total_steps)
    config = ds.ds_config(micro_batch_size=cfg.batch_size, zero_stage=cfg.zero_stage,
                          use_bf16=ds.use_gpu_here(), world_size=world)
    return ds.init_engine(model, optimizer, scheduler, config)


def _restore(engine, scheduler, cfg: FinetuneConfig, rank: int, initial: str | None) -> tuple[dict, dict | None]:
    """The run's own last checkpoint; else ``initial`` (another run's, e.g. PBT); else a fresh state."""
    import ray.train

    state = {"epoch": 0, "best_val_macro_f1": -1.0, "best_epoch": 0, "bad_epochs": 0,
             "history": [], "restarts": 0, "train_samples": 0, "train_time_s": 0.0}
    checkpoint = ray.train.get_checkpoint()
    adopted = checkpoint is None and initial is not None
    if adopted:
        checkpoint = ray.train.Checkpoint(initial)
    if checkpoint is None:
        return state, None
    with checkpoint.as_directory() as directory:
        state, best = ds.load_checkpoint(engine, Path(directory))
    if adopted:  # another configuration's weights and step count; this run's lr and weight decay
        _adopt_hyperparams(scheduler, cfg)
    state["restarts"] += 1
    if rank == 0:
        logger.info("resumed from checkpoint after epoch %d (restart %d)", state["epoch"], state["restarts"])
    return state, best


def _adopt_hyperparams(scheduler, cfg: FinetuneConfig) -> None:
    """Point the restored optimizer and schedule at ``cfg.lr`` and ``cfg.weight_decay``."""
    scheduler.base_lrs = [cfg.lr for _ in scheduler.base_lrs]
    for i, group in enumerate(scheduler.optimizer.param_groups):
        group["initial_lr"] = cfg.lr
        group["lr"] = cfg.lr * scheduler.lr_lambdas[i](scheduler.last_epoch)
        if i == 0:  # _engine's first group decays; the second (biases, norms) stays at 0
            group["weight_decay"] = cfg.weight_decay


def _train_epoch(engine, loader, epoch: int, progress: _Progress, state: dict) -> float:
    engine.train()
    loader.batch_sampler.set_epoch(epoch)
    device = engine.device
    losses = []
    started = time.monotonic()
    for input_ids, attention_mask, labels, _ in loader:
        input_ids, attention_mask = _trim(input_ids, attention_mask)
        out = engine(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device),
                     labels=labels.to(device))
        engine.backward(out.loss)
        engine.step()
        losses.append(float(out.loss.detach()))
        progress.update(epoch, len(labels), losses[-1])
        state["train_samples"] += len(labels)
    state["train_time_s"] += time.monotonic() - started
    return float(np.mean(losses)) if losses else math.nan


def _trim(input_ids, attention_mask):
    """Drop the padding columns every row of the batch shares (rows are right-padded)."""
    length = max(int(attention_mask.sum(dim=1).max()), 1)
    return input_ids[:, :length], attention_mask[:, :length]


def predict_logits(model, dataset, batch_size: int, device) -> tuple[np.ndarray, np.ndarray]:
    """Logits and row indices for every row of ``dataset`` (a TensorDataset from ``_encode``)."""
    import torch
    from torch.utils.data import DataLoader

    model.eval()
    logits, index = [], []
    sampler = LengthBucketSampler(_lengths(dataset), batch_size, shuffle=False)
    with torch.no_grad():
        for input_ids, attention_mask, _, idx in DataLoader(dataset, batch_sampler=sampler):
            input_ids, attention_mask = _trim(input_ids, attention_mask)
            out = model(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device))
            logits.append(out.logits.float().cpu().numpy())
            index.append(idx.numpy())
    if not logits:
        return np.zeros((0, 0)), np.zeros(0, dtype=np.int64)
    logits, index = np.concatenate(logits), np.concatenate(index)
    order = np.argsort(index, kind="stable")
    return logits[order], index[order]


def _lengths(dataset) -> list[int]:
    """Token count of each row of a TensorDataset from ``_encode`` (or a Subset of one)."""
    from torch.utils.data import Subset

    if isinstance(dataset, Subset):
        full = _lengths(dataset.dataset)
        return [full[i] for i in dataset.indices]
    return dataset.tensors[1].sum(dim=1).tolist()


def _val_macro_f1(engine, dataset, cfg: FinetuneConfig, rank: int, world: int, num_labels: int) -> float:
    """Validation macro-F1, each rank scoring a shard (equal-sized, as ZeRO-3 needs lockstep)."""
    import torch.distributed as dist
    from torch.utils.data import Subset

    shard = list(range(rank, len(dataset), world))
    per_rank = math.ceil(len(dataset) / world)
    shard += shard[: per_rank - len(shard)] or [0] * (per_rank - len(shard))  # pad to equal length
    logits, index = predict_logits(engine, Subset(dataset, shard), cfg.batch_size * 2, engine.device)
    gathered = [None] * world
    dist.all_gather_object(gathered, (logits, index))
    by_index = {int(i): row for part_logits, part_index in gathered for i, row in zip(part_index, part_logits)}
    rows = sorted(by_index)
    labels = dataset.tensors[2].numpy()[rows]
    preds = np.stack([by_index[i] for i in rows]).argmax(axis=1)
    return macro_f1(labels, preds, num_labels)


def _finish(cfg, rank, world, base_dir, tokenizer, labels, splits, best, state, data) -> dict | None:
    """Rank 0 reloads the best weights, calibrates, evaluates and exports (the model, and beside it the
    data of the run's figures: ``train._figures``); all ranks report."""
    import ray.train
    from ray.train import Checkpoint

    nodes = _worker_nodes(world)
    if rank != 0:
        ray.train.report({"done": True}, checkpoint=None)
        return None
    _use_idle_cores()
    model = _new_model(cfg, base_dir, labels)
    model.load_state_dict(best)
    val_logits, _ = predict_logits(model, splits["validation"], 64, "cpu")
    test_logits, _ = predict_logits(model, splits["test"], 64, "cpu")
    calibration = calibrate(val_logits, splits["validation"].tensors[2].numpy())  # T, or 1 and why
    temperature, slope = calibration.temperature, calibration.temperature_slope
    logger.info("calibration: %s", calibration.reason)
    y_test = splits["test"].tensors[2].numpy()
    metrics = classification_report(test_logits, y_test, labels, temperature, temperature_slope=slope)
    metrics.update(calibration.metrics())
    metrics.update(best_val_macro_f1=state["best_val_macro_f1"], best_epoch=state["best_epoch"],
                   epochs_run=state["epoch"], restarts=state["restarts"], zero_stage=state["zero_stage"],
                   head_warmup_steps=state.get("head_warmup_steps", 0),
                   num_workers=world, train_samples_per_s=_throughput(state, world))
    export_dir = Path(tempfile.mkdtemp(prefix="attune-export-")) / "model"
    manifest = build_manifest(
        tenant=cfg.tenant, labels=labels, base=cfg.base, method=cfg.method, data_hash=data["data_hash"],
        metrics=metrics, temperature=temperature, temperature_slope=slope, max_seq_len=cfg.max_seq_len,
        split_counts=data["split_counts"], history=state["history"],
        params=cfg.model_dump(mode="json", exclude={"data", "out"}),
    )
    export_model(model, tokenizer, export_dir, manifest)
    write_figure_data(export_dir.parent, figure_data(test_logits, y_test, labels, temperature, slope))  # beside model/
    logger.info("test accuracy %.4f  macro-F1 %.4f  ECE %.4f -> %.4f (T=%s)", metrics["test_accuracy"],
                metrics["test_macro_f1"], metrics["ece_before"], metrics["ece_after"],
                temperature_text(temperature, slope))
    try:
        ray.train.report({"done": True, **_flat(metrics)}, checkpoint=Checkpoint.from_directory(str(export_dir.parent)))
    finally:
        shutil.rmtree(export_dir.parent, ignore_errors=True)
    return {"metrics": metrics, "history": state["history"], "test_logits": test_logits.tolist(),
            "worker_nodes": nodes}


def _use_idle_cores() -> None:
    """Rank 0 evaluates and exports alone while the other ranks on its node wait for it: let its
    CPU kernels use their cores too (Ray gives each worker one thread per CPU it holds)."""
    import ray.train
    import torch

    local = ray.train.get_context().get_local_world_size()
    if local > 1:
        torch.set_num_threads(torch.get_num_threads() * local)


def _worker_nodes(world: int) -> list[str]:
    """Each rank's Ray node id, in rank order. A collective: every rank calls it."""
    import ray
    import torch.distributed as dist

    gathered = [None] * world
    dist.all_gather_object(gathered, ray.get_runtime_context().get_node_id())
    return gathered


def _throughput(state: dict, world: int) -> float:
    """Training samples per second over all workers (rank 0's count x world; steps are in lockstep)."""
    return round(state["train_samples"] * world / state["train_time_s"], 2) if state["train_time_s"] else 0.0


def _flat(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if isinstance(v, (int, float))}


class _Progress:
    """Counts rank 0's steps and samples; sends epoch, step, loss and samples/s to the driver's view."""

    def __init__(self, writer, world: int, cfg: FinetuneConfig, total_steps: int):
        self.writer, self.world, self.cfg, self.total = writer, world, cfg, total_steps
        self.step, self.samples = 0, 0
        self.start = time.monotonic()

    def update(self, epoch: int, batch_size: int, loss: float) -> None:
        self.step += 1
        self.samples += batch_size
        if self.writer is None:
            return
        rate = self.samples * self.world / max(time.monotonic() - self.start, 1e-9)
        self.writer.step(self.step, self.total, epoch=epoch + 1, epochs=self.cfg.epochs, loss=round(loss, 6),
                         samples_per_s=round(rate, 2))
