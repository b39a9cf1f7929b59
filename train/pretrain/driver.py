"""The driver side of ``attune pretrain``: validate, scan the corpus in Ray, launch Ray Train, export.

    summary = pretrain(PretrainConfig(name="wiki", corpus="wiki.txt", preset="tiny"))

Everything checkable on the driver (corpus paths, --init, the output folder, the run name)
is checked before Ray starts. The corpus is read by a Ray task (hash, size, and the WordPiece
vocabulary for ``--tokenizer train``) and by the workers (each streams its own shard), never
whole by the driver. The run is a Ray Train run named ``pretrain-<name>`` under the Ray Train
storage, so an interrupted run continues with ``--resume``.
"""
from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path
from typing import Optional

from cluster import Settings, get_settings, init_ray, render_log
from train._base import pinned_base, resolve_base
from train._errors import BaseModelError, ConfigError, TrainError
from train._run import collect_export, failure_hint, open_run, shown_progress, torch_trainer, tracked, uses_gpu
from train.pretrain.config import PretrainConfig
from train.pretrain.corpus import CorpusFile, list_corpus_files
from train.pretrain.loop import pretrain_loop_per_worker
from train.pretrain.track import BASE_EXPERIMENT_PREFIX, opening_record, register_pretrained
from train.pretrain.vocab import write_files

logger = logging.getLogger("attune.train")

RUN_META = "attune_pretrain.json"  # in the Ray Train run folder: config, corpus hash, tokenizer
RUN_TOKENIZER = "attune_tokenizer"


def pretrain(config: PretrainConfig, *, settings: Optional[Settings] = None) -> dict:
    """Pretrain (or continue pretraining) an encoder with masked-LM and export it; returns the summary.

    With ``track`` the MLflow run (experiment ``base.<name>``) opens when training starts, gets each
    held-out evaluation as it happens, and the export is registered from it as the next version of
    ``base.<name>`` (alias ``newest``); a failure or Ctrl-C ends it FAILED or KILLED with the error.
    """
    settings = settings or get_settings()
    files = list_corpus_files(config.corpus, endpoint_url=settings.s3_endpoint_url)
    eval_files = (list_corpus_files(config.eval_corpus, flag="--eval-corpus", endpoint_url=settings.s3_endpoint_url)
                  if config.eval_corpus else None)
    config, init_dir = _resolve_init(config, settings)
    out_dir = _out_dir(config, settings)
    if out_dir.exists() and any(out_dir.iterdir()):
        raise ConfigError(f"--out {out_dir} already exists and is not empty; choose a new directory or --name")
    run_dir = settings.ray_storage_dir / config.run_name
    saved = _check_run_dir(config, run_dir, settings)
    init_ray(settings)
    scan = _scan(config, files, eval_files, init_dir, settings, saved)
    if saved is None:
        _save_run_meta(run_dir, config, scan)
    with open_run(settings, BASE_EXPERIMENT_PREFIX + config.name, opening_record(config, scan["corpus_hash"]),
                  enabled=config.track) as live:
        started = time.monotonic()
        result = _fit(config, settings, run_dir, files, eval_files, scan, init_dir, live)
        collect_export(result, out_dir)
        output = _output(config, out_dir, dict(result.return_value or {}), scan, time.monotonic() - started)
        if live is not None:
            output.update(register_pretrained(settings, config, output, scan["corpus_hash"], live))
    return output


def _output(config: PretrainConfig, out_dir: Path, summary: dict, scan: dict, seconds: float) -> dict:
    return {
        "name": config.name,
        "model_dir": str(out_dir.resolve()),
        "steps": summary.get("steps"),
        "initial_eval_perplexity": summary.get("initial_eval_perplexity"),
        "final_eval_perplexity": summary.get("final_eval_perplexity"),
        "tokens_per_s": summary.get("tokens_per_s"),
        **{k: summary.get(k) for k in ("resumed_from_step", "restarts", "zero_stage", "num_workers", "offload",
                                       "activation_checkpointing", "parameters", "vocab_size", "zero3_shards",
                                       "head_warmup", "train_tokens", "peak_gpu_memory_mb", "peak_host_memory_mb")},
        "corpus_hash": scan["corpus_hash"],
        "wall_seconds": round(seconds, 2),
        "history": summary.get("history", []),
    }


def resume_config(settings: Settings, name: str, overrides: dict) -> PretrainConfig:
    """The interrupted run ``name``'s config, with ``overrides`` (the flags given again) applied."""
    run_dir = settings.ray_storage_dir / f"pretrain-{name}"
    meta_path = run_dir / RUN_META
    if not meta_path.is_file():
        raise ConfigError(f"--resume: no interrupted pretraining run named {name!r} under {settings.ray_storage_dir}"
                         f"{_resumable_hint(settings)}")
    saved = json.loads(meta_path.read_text())["config"]
    return PretrainConfig(**{**saved, **overrides, "name": name, "resume": True})


def _resumable_hint(settings: Settings) -> str:
    names = sorted(p.parent.name.removeprefix("pretrain-")
                   for p in Path(settings.ray_storage_dir).glob(f"pretrain-*/{RUN_META}"))
    return f"; runs that can be resumed: {', '.join(names)}" if names else "; there are no interrupted runs"


def _resolve_init(config: PretrainConfig, settings: Settings) -> tuple[PretrainConfig, Optional[Path]]:
    """The ``--init`` encoder's local folder; a registered base's URI is pinned to its version."""
    if config.init is None:
        return config, None
    try:
        init, init_dir = pinned_base(config.init, settings)
        return config.model_copy(update={"init": init}), init_dir or resolve_base(config.init)
    except BaseModelError as exc:
        raise BaseModelError(str(exc).replace("--base", "--init")) from None


def _out_dir(config: PretrainConfig, settings: Settings) -> Path:
    return Path(config.out) if config.out is not None else Path(settings.home) / "bases" / config.name


def _check_run_dir(config: PretrainConfig, run_dir: Path, settings: Settings) -> Optional[dict]:
    """Fresh runs need a new name; ``--resume`` needs the interrupted run, with the same settings."""
    meta_path = run_dir / RUN_META
    if not config.resume:
        if run_dir.exists():
            raise ConfigError(f"a pretraining run named {config.name!r} already exists at {run_dir} (interrupted); "
                             f"continue it with `attune pretrain --name {config.name} --resume`, choose another "
                             "--name, or delete that folder")
        return None
    if not meta_path.is_file():
        raise ConfigError(f"--resume: no interrupted pretraining run named {config.name!r} under "
                         f"{settings.ray_storage_dir}{_resumable_hint(settings)}")
    saved = json.loads(meta_path.read_text())
    differences = config.differences(saved["config"])
    if differences:
        raise ConfigError(f"--resume {config.name}: these settings differ from the interrupted run: "
                          + "; ".join(differences) + ". Resume with the run's settings or start a new --name")
    return saved


def _scan(config: PretrainConfig, files: list[CorpusFile], eval_files: Optional[list[CorpusFile]],
          init_dir: Optional[Path], settings: Settings, saved: Optional[dict]) -> dict:
    """Hash and count the corpus and build (or reuse) the tokenizer, in a Ray task."""
    import ray

    from train.pretrain.scan import scan_corpus

    reuse = None
    if saved is not None:
        reuse = {p.name: p.read_text(encoding="utf-8")
                 for p in (settings.ray_storage_dir / config.run_name / RUN_TOKENIZER).iterdir()}
    task = ray.remote(num_cpus=1)(scan_corpus).options(name="attune-pretrain-scan")
    try:
        scan = ray.get(task.remote(files, eval_files, holdout_every=config.holdout_every,
                                   tokenizer=config.effective_tokenizer, vocab_size=config.effective_vocab_size,
                                   init_dir=str(init_dir) if init_dir else None, reuse_tokenizer=reuse,
                                   endpoint_url=settings.s3_endpoint_url, log_level=settings.log_level))
    except ray.exceptions.RayTaskError as exc:
        cause = exc.cause if isinstance(exc.cause, Exception) else exc
        raise (cause if isinstance(cause, TrainError) else TrainError(f"reading the corpus failed: {cause}")) from None
    if saved is not None and saved["corpus_hash"] != scan["corpus_hash"]:
        raise ConfigError(f"--resume {config.name}: the corpus changed since the run started (sha256 "
                          f"{saved['corpus_hash'][:12]} then, {scan['corpus_hash'][:12]} now); resume with the "
                          "same corpus or start a new --name")
    logger.info("corpus: %d file(s), %d texts, %.1fM characters, sha256 %s; tokenizer: %s (%d tokens)", len(files),
                scan["texts"], scan["chars"] / 1e6, scan["corpus_hash"][:12], config.effective_tokenizer,
                scan["vocab_size"])
    return scan


def _save_run_meta(run_dir: Path, config: PretrainConfig, scan: dict) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    write_files(scan["tokenizer_files"], run_dir / RUN_TOKENIZER)
    meta = {"config": config.model_dump(mode="json"), "corpus_hash": scan["corpus_hash"]}
    (run_dir / RUN_META).write_text(json.dumps(meta, indent=2) + "\n")


def _fit(config: PretrainConfig, settings: Settings, run_dir: Path, files, eval_files, scan: dict,
         init_dir: Optional[Path], live):
    """The Ray Train run, its progress shown and its evaluations logged into ``live`` (None: not tracked)."""
    with shown_progress(settings, config.run_name, f"pretraining {config.name}", "steps",
                        tracked(_render, live)) as progress:
        return _fit_run(config, settings, run_dir, files, eval_files, scan, progress, init_dir)


def _render(view, event: dict) -> None:
    """A rank-0 event on the driver: a log line (held-out evaluations), or a step on the bar."""
    if render_log(view, event) or event.get("kind") != "step":
        return
    detail = f"loss {event['loss']:.4f}  lr {event['lr']:.2e}"
    view.step(event["done"], event["total"], text=f"{detail}  {event['tokens_per_s']:.0f} tokens/s",
              postfix=f"{detail}  {event['tokens_per_s']:.0f} tok/s")


def _fit_run(config: PretrainConfig, settings: Settings, run_dir: Path, files, eval_files, scan: dict,
             progress: Path, init_dir: Optional[Path]):
    use_gpu = uses_gpu(config.use_gpu, config.num_workers)
    workers = config.model_dump(mode="json")
    if init_dir is not None and config.init != "minilm":
        workers["init"] = str(init_dir)  # a registered base: the folder the driver fetched, not its URI
    loop_config = {"pretrain": workers, "files": files, "eval_files": eval_files,
                   "tokenizer_files": scan["tokenizer_files"], "corpus_hash": scan["corpus_hash"],
                   "endpoint_url": settings.s3_endpoint_url, "log_level": settings.log_level,
                   "progress_interval_s": settings.progress_interval_s, "progress_file": str(progress)}
    trainer = torch_trainer(pretrain_loop_per_worker, loop_config, num_workers=config.num_workers, use_gpu=use_gpu,
                            run_name=config.run_name, storage_path=settings.ray_storage_dir,
                            max_failures=config.max_failures)
    logger.info("pretraining %s: %s, %d worker(s), ZeRO-%d%s, %s, %d steps of %d x %d x %d tokens%s",
                config.name, config.preset or f"--init {config.init}", config.num_workers, config.zero_stage,
                " + CPU offload" if config.offload == "cpu" else "", "GPU/bf16" if use_gpu else "CPU/fp32",
                config.max_steps, config.batch_size, config.grad_accum, config.seq_len,
                " (resuming)" if config.resume else "")
    try:
        result = trainer.fit()
    except (KeyboardInterrupt, SystemExit):  # Ctrl-C: Ray Train aborted the run
        _leftover(run_dir, config)
        raise
    except Exception as exc:  # Ray wraps worker errors; surface the cause plainly
        raise TrainError(f"pretraining {config.name!r} failed: {exc}{_leftover(run_dir, config)}"
                         f"{failure_hint()}") from exc
    if result.error is not None:
        raise TrainError(f"pretraining {config.name!r} failed: {result.error}{_leftover(run_dir, config)}"
                         f"{failure_hint()}")
    return result


def _leftover(run_dir: Path, config: PretrainConfig) -> str:
    """Keep a run that has a checkpoint (it can be resumed); remove one that has none."""
    if any(run_dir.glob("checkpoint_*")):
        return (f". Its last checkpoint is kept in {run_dir}: continue with "
                f"`attune pretrain --name {config.name} --resume`")
    shutil.rmtree(run_dir, ignore_errors=True)
    return ""
