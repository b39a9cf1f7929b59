"""``attune tune``: per-tenant hyperparameter search on Ray Tune."""
from __future__ import annotations

import argparse
from pathlib import Path

from cluster import add_json_flag


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "tune", help="search a tenant's fine-tuning hyperparameters (Ray Tune) and register the best model",
        description="Run trials of the `attune finetune` training loop with sampled hyperparameters, stop weak "
                    "ones early, log every trial to MLflow, and register the best trial's model as the "
                    "tenant's next version (through the same promotion gate as finetune).")
    p.add_argument("--tenant", required=True, help="tenant id, e.g. john")
    p.add_argument("--data", required=True, help="JSONL/CSV path or s3://bucket/key with text,label columns")
    p.add_argument("--base", default=None, help="'minilm' (default, env ATTUNE_BASE) or a Hugging Face model dir")
    p.add_argument("--method", choices=["full", "lora"], default="full",
                   help="fine-tuning method of every trial (as in attune finetune)")
    p.add_argument("--trials", type=int, default=8, help="number of trials")
    p.add_argument("--scheduler", choices=["asha", "fifo", "pbt"], default="asha",
                   help="asha: stop weak trials early; fifo: run every trial to the end; "
                        "pbt: population based training (perturbs lr and weight decay)")
    p.add_argument("--grace-period", type=int, default=1,
                   help="ASHA's first rung, in epochs: no trial waits or stops before it")
    p.add_argument("--reduction-factor", type=float, default=2.0,
                   help="ASHA keeps the top 1/F of each rung; rungs at grace x F^k epochs (2: epochs 1, 2, 4, ...)")
    p.add_argument("--search", choices=["optuna", "random"], default=None,
                   help="optuna (Optuna's TPE; the default) or random; pbt always samples at random")
    p.add_argument("--max-concurrent", type=int, default=None,
                   help="at most this many trials at once (default: as many as the cluster's CPUs/GPUs fit)")
    p.add_argument("--time-budget-s", type=float, default=None,
                   help="end the search after this many seconds; the best finished trial still wins")
    p.add_argument("--space", type=Path, default=None,
                   help="YAML search space (see tune/configs/example-space.yaml); default: lr, batch size, "
                        "epochs, weight decay, warm-up (+ LoRA rank and alpha with --method lora)")
    p.add_argument("--metric", choices=["val_macro_f1", "test_macro_f1"], default="val_macro_f1",
                   help="how the best trial is chosen (schedulers always use val_macro_f1 per epoch)")
    p.add_argument("--resume", action="store_true",
                   help="continue this tenant's interrupted search (its original settings are kept)")
    p.add_argument("--workers", type=int, default=None, help="Ray Train workers per trial (env ATTUNE_WORKERS)")
    p.add_argument("--zero-stage", type=int, choices=[0, 1, 2, 3], default=None,
                   help="DeepSpeed ZeRO stage (env ATTUNE_ZERO_STAGE, default 2)")
    p.add_argument("--max-epochs", type=int, default=None,
                   help="the default space's largest epoch count; the fixed count when a space omits epochs "
                        "(default: 4 with --method full, 8 with --method lora)")
    p.add_argument("--max-train-rows", type=int, default=None, help="use only the first N train-split rows")
    p.add_argument("--head-warmup-steps", type=int, default=0,
                   help="every trial's new head first trains alone for N micro-batches, encoder frozen "
                        "(LP-FT, as in attune finetune; default 0: off; a space key may search it)")
    p.add_argument("--max-seq-len", type=int, default=64, help="tokens per text (longer texts are truncated)")
    p.add_argument("--patience", type=int, default=2, help="a trial stops after this many epochs without gain")
    p.add_argument("--seed", type=int, default=0, help="seeds the searcher and every trial")
    p.add_argument("--max-failures", type=int, default=None,
                   help="restarts of a trial's workers from its last checkpoint (env ATTUNE_MAX_FAILURES)")
    p.add_argument("--no-promote", action="store_true", help="register the best model as challenger, ungated")
    p.add_argument("--promotion-margin", type=float, default=None, help="as in attune finetune")
    p.add_argument("--promotion-floor", type=float, default=None, help="as in attune finetune")
    add_json_flag(p)
    p.set_defaults(handler=_run_tune)


def job_from_args(args: argparse.Namespace, settings):
    """The validated :class:`TuneJob` for these flags (a ``ConfigError`` naming the flag otherwise)."""
    from pydantic import ValidationError

    from cluster import flag_errors
    from train import ConfigError
    from tune._job import TuneJob
    from tune._space import DEFAULT_MAX_EPOCHS, default_space, load_space

    method = args.method
    max_epochs = args.max_epochs or DEFAULT_MAX_EPOCHS[method]
    space = load_space(args.space) if args.space else default_space(method, max(max_epochs, 1))
    search = args.search or ("random" if args.scheduler == "pbt" else "optuna")
    values = dict(
        tenant=args.tenant, data=args.data, base=args.base or settings.base, method=method,
        num_workers=args.workers or settings.num_workers,
        zero_stage=settings.zero_stage if args.zero_stage is None else args.zero_stage,
        max_seq_len=args.max_seq_len, seed=args.seed, patience=args.patience,
        max_failures=settings.max_failures if args.max_failures is None else args.max_failures,
        max_train_rows=args.max_train_rows, head_warmup_steps=args.head_warmup_steps,
        max_epochs=max_epochs, trials=args.trials,
        scheduler=args.scheduler, grace_period=args.grace_period, reduction_factor=args.reduction_factor,
        search=search, max_concurrent=args.max_concurrent,
        time_budget_s=args.time_budget_s, metric=args.metric, promote=not args.no_promote,
        promotion_margin=args.promotion_margin, promotion_floor=args.promotion_floor, space=space,
    )
    try:
        return TuneJob(**values)
    except ValidationError as exc:
        raise ConfigError(flag_errors(exc, "tune options", FLAGS)) from None


FLAGS = {"num_workers": "--workers", "promote": "--no-promote"}


def _run_tune(args: argparse.Namespace) -> int:
    from cluster import emit, get_settings, shutdown_ray
    from tune._tune import tune_tenant

    settings = get_settings(home=args.home, log_level=args.log_level)
    job = job_from_args(args, settings)
    try:
        summary = tune_tenant(job, settings=settings, resume=args.resume)
    finally:
        shutdown_ray()
    payload = {k: summary[k] for k in ("tenant", "best_config", "best_metric", "trials", "stopped_early",
                                       "model_version", "alias", "promotion")}
    payload.update({k: v for k, v in summary.items() if k not in payload})
    return emit(args, payload, _text(summary))


def _text(summary: dict) -> str:
    lines = [f"{'trial':<14} {'status':<14} {summary['metric']:>14} {'epochs':>6} {'steps':>7}  config"]
    for row in summary["trial_results"]:
        score = "-" if row[summary["metric"]] is None else f"{row[summary['metric']]:.4f}"
        config = " ".join(f"{k[6:]}={v:.3g}" if isinstance(v, float) else f"{k[6:]}={v}"
                          for k, v in row.items() if k.startswith("param."))
        lines.append(f"{row['trial_id']:<14} {row['status']:<14} {score:>14} {row['epochs']:>6} "
                     f"{row['train_steps']:>7}  {config}")
    promo = summary["promotion"]
    lines += [f"best trial {summary['best_trial_id']}: {summary['metric']} {summary['best_metric']:.4f} "
              f"({summary['trials']} trials, {summary['stopped_early']} stopped early, {summary['failed']} failed, "
              f"{summary['search_seconds']:.0f}s)",
              f"registered {summary['tenant']} version {summary['model_version']} as {summary['alias']}: "
              f"{promo['reason']}"]
    return "\n".join(lines)
