"""``attune pretrain``: masked-LM pretraining of a base encoder on Ray Train + DeepSpeed ZeRO.

    attune pretrain --corpus ../shared/data/wikitext-2/valid.txt --eval-corpus ../shared/data/wikitext-2/test.txt \\
        --preset tiny --tokenizer train --workers 2 --zero-stage 2 --max-steps 300 --name wiki-tiny --json
    attune pretrain --name wiki-tiny --resume          # continue an interrupted run at its last checkpoint
"""
from __future__ import annotations

import argparse
import datetime as _dt
import sys
from pathlib import Path

from cluster import add_json_flag

EXAMPLES = """examples:
  attune pretrain --corpus ../shared/data/wikitext-2/valid.txt --eval-corpus ../shared/data/wikitext-2/test.txt \\
      --preset tiny --tokenizer train --workers 2 --zero-stage 2 --max-steps 300 --name wiki-tiny --json
  attune pretrain --name wiki-tiny --resume          # continue an interrupted run at its last checkpoint"""

# flag dest -> PretrainConfig field (flags left out are None and take the config's default)
_FIELDS = {"corpus": "corpus", "eval_corpus": "eval_corpus", "preset": "preset", "init": "init",
           "tokenizer": "tokenizer", "vocab_size": "vocab_size", "workers": "num_workers",
           "zero_stage": "zero_stage", "offload": "offload", "max_steps": "max_steps", "seq_len": "seq_len",
           "batch_size": "batch_size", "grad_accum": "grad_accum", "lr": "lr", "warmup_ratio": "warmup_ratio",
           "head_warmup_steps": "head_warmup_steps",
           "eval_every": "eval_every", "eval_sequences": "eval_sequences", "checkpoint_every": "checkpoint_every",
           "seed": "seed", "out": "out", "max_failures": "max_failures",
           "activation_checkpointing": "activation_checkpointing"}


def register(subparsers) -> None:
    p = subparsers.add_parser("pretrain", help="masked-LM pretraining of a base encoder (Ray Train + DeepSpeed ZeRO)",
                              epilog=EXAMPLES)
    p.add_argument("--corpus", help="a text file, a directory of .txt/.jsonl/.csv files, or an s3:// prefix")
    p.add_argument("--eval-corpus", help="held-out texts for perplexity (default: 1 corpus text in 50)")
    p.add_argument("--preset", choices=["tiny", "small", "base", "large"],
                   help="a new encoder: tiny (~1M params), small (~30M), base (~110M), large (~340M)")
    p.add_argument("--init", help="continue from 'minilm' (the packaged all-MiniLM-L6-v2), a Hugging Face "
                                  "encoder directory or a registered base (models:/base.NAME@ALIAS), instead of "
                                  "--preset")
    p.add_argument("--tokenizer", choices=["minilm", "train"],
                   help="train a WordPiece vocabulary on the corpus (default with --preset) or reuse MiniLM's")
    p.add_argument("--vocab-size", type=int, help="--tokenizer train: vocabulary size (tiny 4096, others 30522)")
    p.add_argument("--workers", type=int, help="Ray Train workers (env ATTUNE_WORKERS, default 2)")
    p.add_argument("--zero-stage", type=int, choices=[0, 1, 2, 3],
                   help="DeepSpeed ZeRO stage (env ATTUNE_ZERO_STAGE, default 2)")
    p.add_argument("--offload", choices=["none", "cpu"], help="cpu: keep optimizer state in host memory (stage >= 1)")
    p.add_argument("--max-steps", type=int, help="optimizer steps (default 1000)")
    p.add_argument("--seq-len", type=int, help="tokens per packed sequence (default 128)")
    p.add_argument("--batch-size", type=int, help="per-worker micro-batch size in sequences (default 16)")
    p.add_argument("--grad-accum", type=int, help="micro-batches per optimizer step (default 1)")
    p.add_argument("--lr", type=float, help="peak learning rate (default 5e-4 from scratch, 5e-5 with --init)")
    p.add_argument("--warmup-ratio", type=float, help="fraction of steps of linear warm-up (default 0.06)")
    p.add_argument("--head-warmup-steps", type=int,
                   help="with --init: micro-batches that train only a new MLM head, encoder frozen, before the "
                        "--max-steps (default 20%% of --max-steps, at most 200, when the encoder has no MLM head)")
    p.add_argument("--eval-every", type=int, help="steps between held-out perplexity evaluations (default 100)")
    p.add_argument("--eval-sequences", type=int, help="held-out sequences evaluated (default 128)")
    p.add_argument("--checkpoint-every", type=int, help="steps between sharded ZeRO checkpoints (default 200)")
    p.add_argument("--seed", type=int, help="seeds masking, data order and new weights (default 0)")
    p.add_argument("--activation-checkpointing", action=argparse.BooleanOptionalAction, default=None,
                   help="recompute activations in backward (default: on for base and large)")
    p.add_argument("--max-failures", type=int,
                   help="worker-group restarts from the last checkpoint (env ATTUNE_MAX_FAILURES, default 2)")
    p.add_argument("--name", help="run name: Ray Train run pretrain-NAME, MLflow experiment base.NAME "
                                  "(default PRESET-TIME)")
    p.add_argument("--out", type=Path, help="export directory (default $ATTUNE_HOME/bases/NAME)")
    p.add_argument("--resume", action="store_true", help="continue the interrupted run --name at its last checkpoint")
    p.add_argument("--no-track", action="store_true", help="do not log the run to MLflow")
    add_json_flag(p)
    p.set_defaults(handler=_run_pretrain)


def pretrain_config_from_args(args: argparse.Namespace, settings):
    """The run's config: the flags given (plus settings' defaults), or the interrupted run's with --resume."""
    from pydantic import ValidationError

    from cluster import flag_errors
    from train._errors import ConfigError
    from train.pretrain.config import FLAGS, PretrainConfig
    from train.pretrain.driver import resume_config

    given = {field: getattr(args, dest) for dest, field in _FIELDS.items() if getattr(args, dest) is not None}
    if args.no_track:
        given["track"] = False
    try:
        if args.resume:
            if not args.name:
                raise ConfigError("--resume needs --name, the name of the interrupted run to continue")
            return resume_config(settings, args.name, given)
        given.setdefault("num_workers", settings.num_workers)
        given.setdefault("zero_stage", settings.zero_stage)
        given.setdefault("max_failures", settings.max_failures)
        if given.get("corpus") is None:
            raise ConfigError("--corpus is required (a text file, a directory of text files, or an s3:// prefix)")
        name = args.name or _default_name(given)
        return PretrainConfig(name=name, **given)
    except ValidationError as exc:
        raise ConfigError(flag_errors(exc, "pretrain options", FLAGS)) from None


def _default_name(given: dict) -> str:
    stem = given.get("preset") or Path(str(given.get("init", "base"))).name.lower()
    stem = "".join(c if c.isalnum() or c in "-_" else "-" for c in stem).strip("-_") or "base"
    return f"{stem}-{_dt.datetime.now():%Y%m%d-%H%M%S}"


def _run_pretrain(args: argparse.Namespace) -> int:
    from cluster import emit, get_settings, shutdown_ray
    from train.pretrain.driver import pretrain

    settings = get_settings(home=args.home, log_level=args.log_level)
    config = pretrain_config_from_args(args, settings)
    try:
        summary = pretrain(config, settings=settings)
    except (KeyboardInterrupt, SystemExit):  # Ctrl-C: Ray Train aborts the run and keeps its checkpoints
        kept = (settings.ray_storage_dir / config.run_name).exists()
        print("attune: interrupted; " + (f"continue with `attune pretrain --name {config.name} --resume`" if kept
                                         else "it had no checkpoint yet, so nothing was kept"), file=sys.stderr)
        return 130
    finally:
        shutdown_ray()
    summary.pop("history", None)
    resumed = f", resumed at step {summary['resumed_from_step']}" if summary.get("resumed_from_step") else ""
    warm = summary.get("head_warmup")
    warm = f" -> {warm['eval_perplexity']:.2f} (after {warm['steps']} head warm-up steps)" if warm else ""
    text = (f"base {summary['name']}: {summary['steps']} steps, held-out perplexity "
            f"{summary['initial_eval_perplexity']:.2f}{warm} -> {summary['final_eval_perplexity']:.2f}, "
            f"{summary['tokens_per_s']:.0f} tokens/s{resumed}\nmodel: {summary['model_dir']}")
    if summary.get("base_uri"):
        text += f"\nregistered as {summary['base_uri']} (fine-tune with --base models:/base.{summary['name']}@newest)"
    return emit(args, summary, text)
