"""``attune finetune`` and ``attune predict``."""
from __future__ import annotations

import argparse
from pathlib import Path

from cluster import add_json_flag


def register_finetune(subparsers) -> None:
    p = subparsers.add_parser("finetune", help="fine-tune one tenant's classifier on Ray Train + DeepSpeed")
    p.add_argument("--tenant", required=True, help="tenant id, e.g. john")
    p.add_argument("--data", required=True, help="JSONL/CSV path or s3://bucket/key with text,label columns")
    p.add_argument("--base", default=None,
                   help="'minilm' (default, env ATTUNE_BASE), a Hugging Face model dir, or a registered base: "
                        "models:/base.NAME@ALIAS or models:/base.NAME/VERSION")
    p.add_argument("--method", choices=["full", "lora"], default="full",
                   help="full: train the encoder and the head; lora: PEFT LoRA adapters on the attention "
                        "projections plus the head")
    p.add_argument("--workers", type=int, default=None, help="Ray Train workers (env ATTUNE_WORKERS, default 2)")
    p.add_argument("--zero-stage", type=int, choices=[0, 1, 2, 3], default=None,
                   help="DeepSpeed ZeRO stage (env ATTUNE_ZERO_STAGE, default 2)")
    p.add_argument("--epochs", type=int, default=None, help="maximum epochs, early stopping may end sooner "
                   "(default: 5 with --method full, 10 with --method lora)")
    p.add_argument("--lr", type=float, default=None,
                   help="peak learning rate (default: 1e-4 with --method full, 2e-3 with --method lora)")
    p.add_argument("--batch-size", type=int, default=16, help="per-worker micro-batch size")
    p.add_argument("--max-seq-len", type=int, default=64, help="tokens per text (longer texts are truncated)")
    p.add_argument("--seed", type=int, default=0, help="seeds the data order, dropout and the new head")
    p.add_argument("--out", type=Path, default=None, help="export directory (default $ATTUNE_HOME/models/TENANT/TIME)")
    p.add_argument("--patience", type=int, default=2,
                   help="stop after this many epochs without a gain in validation macro-F1")
    p.add_argument("--weight-decay", type=float, default=0.01, help="AdamW weight decay (not on biases and norms)")
    p.add_argument("--warmup-ratio", type=float, default=0.1,
                   help="fraction of the steps with a linear learning-rate warm-up")
    p.add_argument("--head-warmup-steps", type=int, default=0,
                   help="micro-batches the new head trains alone, encoder frozen, before fine-tuning (LP-FT; "
                        "0: off)")
    p.add_argument("--lora-rank", type=int, default=None, help="LoRA rank (--method lora; default: 16)")
    p.add_argument("--lora-alpha", type=int, default=None, help="LoRA alpha (--method lora; default: 32)")
    p.add_argument("--lora-targets", type=lambda text: [t for t in text.split(",") if t], default=None,
                   metavar="NAMES", help="comma-separated modules that get LoRA adapters (--method lora; default: "
                                         "the base's attention projections, query,key,value on BERT)")
    p.add_argument("--max-failures", type=int, default=None,
                   help="worker-group restarts from the last checkpoint (env ATTUNE_MAX_FAILURES, default 2)")
    p.add_argument("--max-train-rows", type=int, default=None,
                   help="use only the first N train-split rows (quick runs; evaluation is unchanged)")
    p.add_argument("--no-promote", action="store_true",
                   help="register the new version as challenger without running the promotion gate")
    p.add_argument("--promotion-margin", type=float, default=None,
                   help="the candidate may trail the champion's test macro-F1 by this much "
                        "(env ATTUNE_PROMOTION_MARGIN, default 0.0)")
    p.add_argument("--promotion-floor", type=float, default=None,
                   help="test macro-F1 a tenant's first version needs to become champion "
                        "(env ATTUNE_PROMOTION_FLOOR, default 0.5)")
    add_json_flag(p)
    p.set_defaults(handler=_run_finetune)


def register_predict(subparsers) -> None:
    p = subparsers.add_parser("predict", help="label texts with a tenant's registered model or a model directory")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", type=Path, help="a model_dir printed by attune finetune")
    source.add_argument("--tenant", help="use this tenant's registered model (its champion unless --version)")
    p.add_argument("--version", default="champion", help="with --tenant: a version number or alias")
    p.add_argument("--text", required=True, action="append", help="text to label; repeat for more")
    add_json_flag(p)
    p.set_defaults(handler=_run_predict)


def finetune_config_from_args(args: argparse.Namespace, settings):
    from pydantic import ValidationError

    from cluster import flag_errors
    from train._errors import ConfigError
    from train.finetune.config import FinetuneConfig

    values = dict(
        tenant=args.tenant, data=args.data, base=args.base or settings.base, method=args.method,
        num_workers=args.workers or settings.num_workers,
        zero_stage=settings.zero_stage if args.zero_stage is None else args.zero_stage,
        epochs=args.epochs, lr=args.lr, batch_size=args.batch_size, max_seq_len=args.max_seq_len,
        seed=args.seed, out=args.out, patience=args.patience, weight_decay=args.weight_decay,
        warmup_ratio=args.warmup_ratio, head_warmup_steps=args.head_warmup_steps,
        lora_rank=args.lora_rank, lora_alpha=args.lora_alpha, lora_targets=args.lora_targets,
        max_failures=settings.max_failures if args.max_failures is None else args.max_failures,
        max_train_rows=args.max_train_rows, promote=not args.no_promote,
        promotion_margin=args.promotion_margin, promotion_floor=args.promotion_floor,
    )
    try:
        return FinetuneConfig(**values)
    except ValidationError as exc:
        raise ConfigError(flag_errors(exc, "finetune options", FLAGS)) from None


FLAGS = {"num_workers": "--workers", "promote": "--no-promote"}


def _run_finetune(args: argparse.Namespace) -> int:
    from cluster import emit_json, get_settings, shutdown_ray
    from registry import temperature_text
    from train.finetune.driver import finetune

    settings = get_settings(home=args.home, log_level=args.log_level)
    config = finetune_config_from_args(args, settings)
    try:
        summary = finetune(config, settings=settings)
    finally:
        shutdown_ray()
    summary.pop("history", None)
    if args.json:
        emit_json(summary)
    else:
        m = summary["metrics"]
        print(f"tenant {summary['tenant']}: test accuracy {m['test_accuracy']:.4f}, macro-F1 "
              f"{m['test_macro_f1']:.4f}, ECE {m['ece_before']:.4f} -> {m['ece_after']:.4f} "
              f"(T={temperature_text(m['temperature'], m.get('temperature_slope', 0.0))}) "
              f"in {summary['train_seconds']:.0f}s")
        print(f"model: {summary['model_dir']}")
        if "model_version" in summary:
            promo = summary["promotion"]
            print(f"registered {summary['tenant']} version {summary['model_version']} as {summary['alias']}: "
                  f"{promo['reason']}")
    return 0


def _run_predict(args: argparse.Namespace) -> int:
    from cluster import emit_json
    from train.finetune.predict import Predictor

    if args.model is not None:
        predictor, version = Predictor(args.model), None
        predictions = predictor.predict(args.text)
    else:
        predictions, version = _predict_registered(args)
    if args.json:
        emit_json({"predictions": predictions, **({"tenant": args.tenant, "model_version": version}
                                                  if version else {})})
    else:
        for text, pred in zip(args.text, predictions):
            scores = "  ".join(f"{k}={v:.3f}" for k, v in pred["scores"].items())
            print(f"{pred['label']:<10} {scores}  | {text}")
    return 0


def _predict_registered(args: argparse.Namespace) -> tuple[list[dict], str]:
    """Download the tenant's version (checksum-verified) and predict with its stored calibration."""
    import tempfile

    from cluster import get_settings
    from registry import Registry
    from train.finetune.predict import Predictor

    registry = Registry.from_settings(get_settings(home=args.home, log_level=args.log_level))
    with tempfile.TemporaryDirectory(prefix="attune-predict-") as tmp:
        model_dir, info = registry.download(args.tenant, args.version, Path(tmp) / "model")
        predictor = Predictor(model_dir, temperature=info.temperature, temperature_slope=info.temperature_slope)
        return predictor.predict(args.text), info.version
