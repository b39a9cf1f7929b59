"""The masked-LM pretraining recipe that runs on every Ray Train worker.

Reads top to bottom: setup, restore, initial evaluation, train (held-out perplexity every
``eval_every`` steps, a sharded ZeRO checkpoint every ``checkpoint_every``), gather, export.
Every rank streams and tokenises its own shard of the corpus and writes its own ZeRO shard;
rank 0 logs, gathers the full weights and exports the Hugging Face model directory.
"""
from __future__ import annotations

import json
import logging
import math
import shutil
import tempfile
import time
from pathlib import Path
from typing import Optional

from train import _deepspeed as ds
from train._run import metrics_event
from train._worker import report_checkpoint, setup_logging
from train.pretrain.config import PretrainConfig
from train.pretrain.mlm import IGNORE_INDEX, TrainStream, eval_sequences, mask_tokens, special_ids
from train.pretrain.scan import held_out_texts, training_texts

logger = logging.getLogger("attune.train")
_EVAL_MASK_SEED = 20_240_607  # the held-out masks are the same at every evaluation and in every run


def pretrain_loop_per_worker(loop_config: dict) -> Optional[dict]:
    """Ray Train entry point. ``loop_config``: ``pretrain`` (a config dict), corpus files, tokenizer files."""
    import ray.train
    import torch

    from train.pretrain.vocab import tokenizer_from_files

    cfg = PretrainConfig(**loop_config["pretrain"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    writer = setup_logging(rank, loop_config)
    tokenizer = tokenizer_from_files(loop_config["tokenizer_files"])
    model, data = _new_model(cfg, tokenizer), _Data(cfg, loop_config, tokenizer, rank, world)
    eval_set = data.eval_set()
    warm = None if ray.train.get_checkpoint() is not None else _warm_up(model, cfg, data, eval_set, loop_config)
    engine = _engine(cfg, model, world)
    state, done_dir = _restore(engine, rank)
    if done_dir is not None:  # the run had already exported; hand the export over again
        return _report_export(done_dir, rank, state)
    torch.manual_seed(cfg.seed + 1000 * rank + state["restarts"])  # dropout stream per rank/attempt

    if state["initial_eval_perplexity"] is None:
        before = warm.pop("before") if warm else _evaluate(engine, eval_set, cfg.batch_size * 2, engine.device)
        _record_first_evals(before, warm, cfg, rank, state, writer)
    batches = data.train_batches(skip=state["micro_batches"])
    progress = _Progress(writer, world, cfg, state)
    losses: list[float] = []
    shards = None
    while state["step"] < cfg.max_steps:
        losses.append(_train_step(engine, batches, cfg, data, state))
        progress.update(losses[-1], _lr(engine))
        step = state["step"]
        if step == cfg.max_steps and cfg.zero_stage == 3:  # after a step, before evaluation gathers weights
            shards = _zero3_shards(engine, rank, world)
        if step % cfg.eval_every == 0 or step == cfg.max_steps:
            _record_eval(engine, eval_set, cfg, rank, state, losses, progress)
            losses = []
        if step % cfg.checkpoint_every == 0 and step < cfg.max_steps:
            report_checkpoint(engine, rank, state, None, {**state["history"][-1], "step": step})
    state.update(peak_gpu_memory_mb=_peak_gpu_memory_mb(), peak_host_memory_mb=_peak_host_memory_mb())  # training
    return _export(engine, cfg, rank, world, tokenizer, state, loop_config, shards)


def _new_model(cfg: PretrainConfig, tokenizer):
    """The MLM model, wrapped so that the engine's forward returns the masked-token loss."""
    import torch

    from train._base import resolve_base
    from train._presets import build_mlm_model, encoder_config, load_mlm_model
    from train.pretrain.mlm_head import MaskedLMLoss

    torch.manual_seed(cfg.seed)  # the same initial weights on every rank and every attempt
    if cfg.init is not None:
        model = load_mlm_model(resolve_base(cfg.init), activation_checkpointing=cfg.use_activation_checkpointing)
    else:
        config = encoder_config(cfg.preset, len(tokenizer), pad_token_id=tokenizer.pad_token_id)
        model = build_mlm_model(config, activation_checkpointing=cfg.use_activation_checkpointing)
    return MaskedLMLoss(model)


def _warm_up(model, cfg: PretrainConfig, data: _Data, eval_set, loop_config: dict) -> Optional[dict]:
    """A new MLM head trains alone first (see ``_pretrain_warmup``). None without one, else ``before``
    (held-out loss and perplexity at step 0), ``steps``, ``eval_loss`` and ``eval_perplexity`` after it."""
    from ray.train.torch import get_device

    from train.pretrain.warmup import head_warmup_steps, warm_head

    steps = head_warmup_steps(cfg, model.model)
    if steps == 0:
        return None
    device = get_device()
    before = _evaluate(model.to(device), eval_set, cfg.batch_size * 2, device)
    if data.rank == 0:
        logger.info("the MLM head is new (held-out perplexity %.2f): %d step(s) of head warm-up, encoder frozen",
                    before[1], steps)
    batches = data.train_batches(skip=0)
    warm_head(model, batches, lambda ids, i: data.mask(ids, _mask_seed(cfg.seed + 1, data.rank, i)), steps, device,
              data.rank, data.world, loop_config.get("progress_interval_s", 10.0))
    loss, ppl = _evaluate(model, eval_set, cfg.batch_size * 2, device)
    return {"before": before, "steps": steps, "eval_loss": loss, "eval_perplexity": ppl}


def _record_first_evals(before: tuple, warm: Optional[dict], cfg: PretrainConfig, rank: int, state: dict,
                        writer) -> None:
    """Step 0's held-out evaluation, and the one after a head warm-up (``warm``), into the loop state and
    (rank 0's ``writer``) the driver's live run."""
    loss, ppl = before
    state["initial_eval_perplexity"] = ppl
    state["history"].append({"step": 0, "eval_loss": loss, "eval_perplexity": ppl})
    metrics_event(writer, 0, state["history"][-1])
    if rank == 0:
        logger.info("step 0/%d  held-out perplexity %.2f (loss %.4f)", cfg.max_steps, ppl, loss)
    if warm:
        state["head_warmup"] = warm
        state["history"].append({"step": 0, "head_warmup_steps": warm["steps"],
                                 "head_warmup_eval_loss": warm["eval_loss"],
                                 "head_warmup_eval_perplexity": warm["eval_perplexity"]})
        metrics_event(writer, 0, state["history"][-1])
        if rank == 0:
            logger.info("after the head warm-up: held-out perplexity %.2f (loss %.4f)", warm["eval_perplexity"],
                        warm["eval_loss"])


def _engine(cfg: PretrainConfig, model, world: int):
    import torch
    from transformers import get_linear_schedule_with_warmup

    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.ndim >= 2], "weight_decay": cfg.weight_decay},
              {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}]
    gpu = ds.use_gpu_here()
    if cfg.offload == "cpu" and gpu:  # the optimizer step runs on the host: DeepSpeed's vectorised Adam
        ds.import_deepspeed()
        from deepspeed.ops.adam import DeepSpeedCPUAdam

        optimizer = DeepSpeedCPUAdam(groups, lr=cfg.effective_lr, betas=(0.9, 0.98), eps=1e-6, adamw_mode=True)
    else:
        optimizer = torch.optim.AdamW(groups, lr=cfg.effective_lr, betas=(0.9, 0.98), eps=1e-6, fused=True)
    scheduler = get_linear_schedule_with_warmup(optimizer, int(cfg.warmup_ratio * cfg.max_steps), cfg.max_steps)
    numel = sum(p.numel() for p in params)
    config = ds.ds_config(micro_batch_size=cfg.batch_size, zero_stage=cfg.zero_stage, use_bf16=gpu,
                          grad_accum=cfg.grad_accum, world_size=world, offload=cfg.offload,
                          param_persistence_threshold=min(100_000, numel // 1000))
    engine, _ = ds.init_engine(model, optimizer, scheduler, config)
    return engine


def _restore(engine, rank: int) -> tuple[dict, Optional[Path]]:
    """The loop state from the last checkpoint (fresh without one), and the export dir if it had finished."""
    import ray.train

    state = {"step": 0, "micro_batches": 0, "train_tokens": 0, "train_time_s": 0.0, "restarts": 0,
             "resumed_from_step": None, "initial_eval_perplexity": None, "history": []}
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        return state, None
    with checkpoint.as_directory() as directory:
        directory = Path(directory)
        if (directory / "model").is_dir():
            copy = Path(tempfile.mkdtemp(prefix=f"attune-export-r{rank}-"))
            shutil.copytree(directory, copy, dirs_exist_ok=True)
            return json.loads((copy / ds._STATE).read_text()), copy
        state, _ = ds.load_checkpoint(engine, directory)
    state["restarts"] += 1
    state["resumed_from_step"] = state["step"]
    if rank == 0:
        logger.info("resumed from the checkpoint at step %d (restart %d)", state["step"], state["restarts"])
    return state, None


class _Data:
    """This rank's training stream and its slice of the held-out set."""

    def __init__(self, cfg: PretrainConfig, loop_config: dict, tokenizer, rank: int, world: int):
        self.cfg, self.tokenizer, self.rank, self.world = cfg, tokenizer, rank, world
        self.files, self.eval_files = loop_config["files"], loop_config["eval_files"]
        self.endpoint_url = loop_config.get("endpoint_url")
        self.special_ids = special_ids(tokenizer)

    def train_batches(self, skip: int):
        def texts():
            return training_texts(self.files, self.eval_files, self.cfg.holdout_every, self.endpoint_url)

        stream = TrainStream(texts, self.tokenizer, seq_len=self.cfg.seq_len, batch_size=self.cfg.batch_size,
                             rank=self.rank, world=self.world, seed=self.cfg.seed)
        if skip and self.rank == 0:
            logger.info("skipping the %d micro-batches per worker trained before the interruption", skip)
        return stream.batches(skip=skip)

    def mask(self, input_ids, seed: int):
        import torch

        generator = torch.Generator().manual_seed(seed)
        return mask_tokens(input_ids, mask_id=self.tokenizer.mask_token_id, vocab_size=len(self.tokenizer),
                           special_ids=self.special_ids, generator=generator, prob=self.cfg.mask_prob)

    def eval_set(self):
        """(inputs, labels) of this rank's equal share of the fixed, fixed-mask held-out sequences."""
        from train.pretrain.corpus import CorpusError

        texts = held_out_texts(self.files, self.eval_files, self.cfg.holdout_every, self.endpoint_url)
        ids = eval_sequences(texts, self.tokenizer, seq_len=self.cfg.seq_len, count=self.cfg.eval_sequences)
        per_rank = len(ids) // self.world
        if per_rank == 0:
            raise CorpusError(f"the held-out texts make {len(ids)} sequence(s) of --seq-len {self.cfg.seq_len}, "
                              f"fewer than the {self.world} workers; pass a larger --eval-corpus")
        inputs, labels = self.mask(ids, _EVAL_MASK_SEED + self.cfg.seed)
        rows = slice(self.rank * per_rank, (self.rank + 1) * per_rank)
        return inputs[rows], labels[rows]


def _train_step(engine, batches, cfg: PretrainConfig, data: _Data, state: dict) -> float:
    """One optimizer step: ``grad_accum`` masked micro-batches through the DeepSpeed engine."""
    started = time.monotonic()
    losses = []
    for _ in range(cfg.grad_accum):
        input_ids = next(batches)
        inputs, labels = data.mask(input_ids, _mask_seed(cfg.seed, data.rank, state["micro_batches"]))
        loss = engine(input_ids=inputs.to(engine.device), labels=labels.to(engine.device))
        engine.backward(loss)
        engine.step()
        losses.append(float(loss.detach()))
        state["micro_batches"] += 1
        state["train_tokens"] += input_ids.numel()
    state["train_time_s"] += time.monotonic() - started
    state["step"] += 1
    return sum(losses) / len(losses)


def _mask_seed(seed: int, rank: int, micro_batch: int) -> int:
    return (seed * 1_000_003 + rank * 7_919 + micro_batch * 104_729) % (2**63 - 1)


def _evaluate(engine, eval_set, batch_size: int, device) -> tuple[float, float]:
    """Masked-token loss and perplexity on the held-out set, summed over every rank (``engine``: the
    DeepSpeed engine, or the plain model before DeepSpeed takes it)."""
    import torch
    import torch.distributed as dist

    inputs, labels = eval_set
    totals = torch.zeros(2, dtype=torch.float64, device=device)
    engine.eval()
    with torch.no_grad():
        for i in range(0, len(inputs), batch_size):
            chunk = labels[i:i + batch_size]
            loss = engine(input_ids=inputs[i:i + batch_size].to(device), labels=chunk.to(device))
            count = int((chunk != IGNORE_INDEX).sum())
            if count:
                totals[0] += float(loss) * count
                totals[1] += count
    engine.train()
    dist.all_reduce(totals)
    loss = float(totals[0] / totals[1])
    return loss, math.exp(min(loss, 700.0))


def _record_eval(engine, eval_set, cfg: PretrainConfig, rank: int, state: dict, losses: list, progress) -> None:
    loss, ppl = _evaluate(engine, eval_set, cfg.batch_size * 2, engine.device)
    row = {"step": state["step"], "eval_loss": loss, "eval_perplexity": ppl,
           "train_loss": sum(losses) / len(losses) if losses else math.nan, "lr": _lr(engine),
           "tokens_per_s": progress.tokens_per_s()}
    state["history"].append(row)
    metrics_event(progress.writer, row["step"], row)  # rank 0's writer only: the driver's live run
    if rank == 0:
        logger.info("step %d/%d  held-out perplexity %.2f (loss %.4f)  train loss %.4f", state["step"],
                    cfg.max_steps, ppl, loss, row["train_loss"])


def _lr(engine) -> float:
    return float(engine.get_lr()[0])


def _zero3_shards(engine, rank: int, world: int) -> Optional[list]:
    """What each rank holds of the model between ZeRO-3 steps: its partition of every parameter
    (``partition_numel``) plus the small parameters DeepSpeed keeps whole (``resident_full_numel``)."""
    import torch.distributed as dist

    params = list(engine.module.parameters())
    mine = {"rank": rank, "partition_numel": sum(p.ds_tensor.numel() for p in params),
            "resident_full_numel": sum(p.data.numel() for p in params),
            "total_numel": sum(p.ds_numel for p in params)}
    gathered = [None] * world
    dist.all_gather_object(gathered, mine)
    return gathered if rank == 0 else None


def _export(engine, cfg: PretrainConfig, rank: int, world: int, tokenizer, state: dict, loop_config: dict,
            shards: Optional[list]) -> Optional[dict]:
    """All ranks gather the weights; rank 0 writes the Hugging Face directory, manifest and metrics."""
    from transformers import AutoModelForMaskedLM

    from train._base import resolve_base
    from train.pretrain.export import write_export
    from train.pretrain.mlm_head import unwrap_state_dict

    full = ds.gather_state_dict(engine, cfg.zero_stage, rank)
    if rank != 0:
        import ray.train

        ray.train.report({"done": True}, checkpoint=None)
        return None
    model = AutoModelForMaskedLM.from_config(engine.module.model.config)
    model.load_state_dict(unwrap_state_dict(full))
    summary = _summary(cfg, world, state, engine, model, shards)
    root = Path(tempfile.mkdtemp(prefix="attune-export-"))
    init_dir = None if cfg.init is None else resolve_base(cfg.init)
    write_export(root / "model", model, tokenizer, cfg, summary, loop_config["corpus_hash"], init_dir=init_dir)
    (root / ds._STATE).write_text(json.dumps({**state, "summary": summary}))
    return _report_export(root, rank, summary)


def _report_export(root: Path, rank: int, summary: dict) -> Optional[dict]:
    import ray.train
    from ray.train import Checkpoint

    if rank != 0:
        shutil.rmtree(root, ignore_errors=True)
        ray.train.report({"done": True}, checkpoint=None)
        return None
    summary = summary.get("summary", summary)
    try:
        ray.train.report({"done": True, "steps": summary["steps"]}, checkpoint=Checkpoint.from_directory(str(root)))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return summary


def _summary(cfg: PretrainConfig, world: int, state: dict, engine, model, shards) -> dict:
    from train._presets import count_parameters

    history = state["history"]
    evals = [row for row in history if "eval_perplexity" in row]
    return {"steps": state["step"], "initial_eval_perplexity": state["initial_eval_perplexity"],
            "final_eval_perplexity": evals[-1]["eval_perplexity"] if evals else None,
            "tokens_per_s": round(state["train_tokens"] * world / state["train_time_s"], 1)
            if state["train_time_s"] else 0.0,
            "train_tokens": state["train_tokens"] * world, "train_time_s": round(state["train_time_s"], 2),
            "restarts": state["restarts"], "resumed_from_step": state["resumed_from_step"],
            "head_warmup": state.get("head_warmup"),
            "zero_stage": engine.zero_optimization_stage(), "num_workers": world,
            "offload": "cpu" if engine.zero_cpu_offload() else "none",
            "activation_checkpointing": _checkpointing(engine.module.model),
            "parameters": count_parameters(model), "vocab_size": model.config.vocab_size,
            "zero3_shards": shards, "peak_gpu_memory_mb": state.get("peak_gpu_memory_mb"),
            "peak_host_memory_mb": state.get("peak_host_memory_mb"), "history": history}


def _peak_host_memory_mb() -> float:
    """Rank 0's peak resident set size (Linux reports KiB)."""
    import resource

    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def _peak_gpu_memory_mb() -> Optional[float]:
    """Rank 0's peak allocated GPU memory (None on CPU)."""
    import torch

    return round(torch.cuda.max_memory_allocated() / 2**20, 1) if ds.use_gpu_here() else None


def _checkpointing(module) -> bool:
    flag = getattr(type(module), "is_activation_checkpointing", None)  # transformers >= 5
    return bool(module.is_activation_checkpointing if flag is not None else module.is_gradient_checkpointing)


class _Progress:
    """Rank 0's throughput since this attempt started; sends step, loss, tokens/s and lr to the driver's view."""

    def __init__(self, writer, world: int, cfg: PretrainConfig, state: dict):
        self.writer, self.world, self.total, self.state = writer, world, cfg.max_steps, state
        self.first_tokens, self.first_time = state["train_tokens"], state["train_time_s"]

    def tokens_per_s(self) -> float:
        seconds = self.state["train_time_s"] - self.first_time
        return (self.state["train_tokens"] - self.first_tokens) * self.world / seconds if seconds > 0 else 0.0

    def update(self, loss: float, lr: float) -> None:
        if self.writer is not None:
            self.writer.step(self.state["step"], self.total, loss=round(loss, 6),
                             tokens_per_s=round(self.tokens_per_s(), 1), lr=lr)
