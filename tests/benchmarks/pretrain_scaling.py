"""Masked-LM pretraining throughput: 1 vs 2 workers and every ZeRO stage, on the same work.

    .venv/bin/python -m tests.benchmarks.pretrain_scaling [--preset small] [--steps 8] [--seq-len 64]
        [--global-batch 16] [--repeats 1] [--json PATH]

Every configuration trains the same preset from the same initial weights on the same WikiText-2
text (the MiniLM vocabulary), with the same global batch per optimizer step (``--global-batch``
sequences: one worker takes all of it, two workers half each) for the same number of steps.
Configurations alternate within each repeat, on one embedded Ray. Tokens/s is measured inside
the training loop (startup, evaluation, checkpointing and export excluded); memory is rank 0's
peak resident set after training. The baseline is 1 worker with ZeRO-0 (plain data-parallel
DeepSpeed); the last line is the ratio of 2-worker ZeRO-2 tokens/s to it.
"""
from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
WIKI = REPO.parent / "shared" / "data" / "wikitext-2"
BASELINE = "1 worker, ZeRO-0"
CONFIGS = [  # (label, workers, zero stage, offload)
    (BASELINE, 1, 0, "none"),
    ("2 workers, ZeRO-0", 2, 0, "none"),
    ("2 workers, ZeRO-1", 2, 1, "none"),
    ("2 workers, ZeRO-2", 2, 2, "none"),
    ("2 workers, ZeRO-3", 2, 3, "none"),
    ("2 workers, ZeRO-2 + offload", 2, 2, "cpu"),
]


def run_one(label: str, workers: int, stage: int, offload: str, args, settings, index: int) -> dict:
    from train.pretrain.config import PretrainConfig
    from train.pretrain.driver import pretrain

    config = PretrainConfig(name=f"bench-{index}", corpus=str(WIKI / "valid.txt"), eval_corpus=str(WIKI / "test.txt"),
                            preset=args.preset, tokenizer="minilm", num_workers=workers, zero_stage=stage,
                            offload=offload, max_steps=args.steps, seq_len=args.seq_len,
                            batch_size=args.global_batch // workers, eval_every=args.steps,
                            checkpoint_every=10**6, eval_sequences=8, track=False, max_failures=0,
                            out=Path(settings.home) / "out" / f"bench-{index}")
    started = time.monotonic()
    summary = pretrain(config, settings=settings)
    shutil.rmtree(summary["model_dir"], ignore_errors=True)
    return {"label": label, "tokens_per_s": summary["tokens_per_s"], "wall_s": round(time.monotonic() - started, 1),
            "peak_host_memory_mb": summary["peak_host_memory_mb"], "train_tokens": summary["train_tokens"],
            "zero3_shards": summary.get("zero3_shards") or []}


def _table(results: dict, baseline: float) -> list[str]:
    lines = [f"{'configuration':<30} {'runs':>4} {'median tokens/s':>16} {'vs baseline':>12} "
             f"{'rank-0 peak RSS MiB':>20} {'median wall s':>14}"]
    for label, runs in results.items():
        rate = statistics.median(r["tokens_per_s"] for r in runs)
        rss = statistics.median(r["peak_host_memory_mb"] for r in runs)
        wall = statistics.median(r["wall_s"] for r in runs)
        lines.append(f"{label:<30} {len(runs):>4} {rate:>16.0f} {rate / baseline:>11.2f}x {rss:>20.0f} {wall:>14.1f}")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="small", choices=["tiny", "small", "base", "large"])
    parser.add_argument("--steps", type=int, default=8, help="optimizer steps per run")
    parser.add_argument("--seq-len", type=int, default=64)
    parser.add_argument("--global-batch", type=int, default=16, help="sequences per optimizer step (even)")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args()
    if not (WIKI / "valid.txt").is_file():
        raise SystemExit(f"WikiText-2 not found at {WIKI}")

    from cluster import get_settings, init_ray, shutdown_ray

    home = Path(tempfile.mkdtemp(prefix="attune-bench-pretrain-"))
    settings = get_settings(home=str(home), log_level="WARNING")
    init_ray(settings)
    results: dict = {label: [] for label, *_ in CONFIGS}
    try:
        index = 0
        for _ in range(args.repeats):
            for label, workers, stage, offload in CONFIGS:
                run = run_one(label, workers, stage, offload, args, settings, index)
                index += 1
                results[label].append(run)
                print(f"  {label:<30} {run['tokens_per_s']:>8.0f} tokens/s  ({run['wall_s']:.0f} s)", flush=True)
    finally:
        shutdown_ray()
        shutil.rmtree(home, ignore_errors=True)
    baseline = statistics.median(r["tokens_per_s"] for r in results[BASELINE])
    print(f"\npreset {args.preset}, {args.steps} steps of {args.global_batch} x {args.seq_len} tokens, "
          f"{args.repeats} repeat(s); baseline: {BASELINE}")
    print("\n".join(_table(results, baseline)))
    z2 = statistics.median(r["tokens_per_s"] for r in results["2 workers, ZeRO-2"])
    print(f"ratio 2 workers ZeRO-2 / {BASELINE} tokens/s: {z2 / baseline:.2f}")
    for shard in results["2 workers, ZeRO-3"][-1]["zero3_shards"]:  # what each rank holds between steps
        held = shard["partition_numel"] + shard["resident_full_numel"]
        print(f"ZeRO-3 rank {shard.get('rank', '?')}: holds {held:,} of {shard['total_numel']:,} parameters "
              f"({held / shard['total_numel']:.3f}; 1/N = {1 / 2:.3f})")
    if args.json:
        args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "results": results},
                                        indent=2))


if __name__ == "__main__":
    main()
