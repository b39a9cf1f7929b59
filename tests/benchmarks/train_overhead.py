"""Throughput of an attune fine-tune (Ray Train + DeepSpeed, 2 workers) vs a plain torchrun DDP loop.

    .venv/bin/python -m tests.benchmarks.train_overhead [--repeats 2] [--rows 1024] [--zero-stage 2] [--json PATH]

Both sides run the same work: the same tenant rows, model (MiniLM), batches, fused
AdamW and schedule, 2 CPU workers with gloo, one epoch. Runs alternate
(attune, baseline, attune, ...). Training samples/s is measured inside each loop
(startup, evaluation and export excluded); wall time is the whole command.
The last line is the ratio of medians: attune / baseline throughput (goal >= 0.87).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _data_file(rows_dir: Path) -> Path:
    """The newsdesk tenant when the shared data is present, else the demo tenant john."""
    from train._data import write_jsonl
    from train._demo_data import default_newsdesk_source, demo_rows, newsdesk_rows

    source = default_newsdesk_source()
    rows = newsdesk_rows(source) if source else demo_rows()[0]
    path = rows_dir / ("newsdesk.jsonl" if source else "john.jsonl")
    return write_jsonl(path, rows)


def run_attune(data: Path, args, workdir: Path) -> dict:
    out = workdir / f"attune-{time.monotonic_ns()}"
    cmd = [sys.executable, "-m", "cluster.cli", "finetune", "--tenant", "bench", "--data", str(data),
           "--workers", "2", "--zero-stage", str(args.zero_stage), "--epochs", "1",
           "--batch-size", str(args.batch_size), "--max-seq-len", str(args.max_seq_len),
           "--max-train-rows", str(args.rows), "--out", str(out), "--json"]
    env = dict(os.environ, ATTUNE_HOME=str(workdir / "home"))
    started = time.monotonic()
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    wall = time.monotonic() - started
    if proc.returncode != 0:
        raise SystemExit(f"attune run failed:\n{proc.stderr[-3000:]}")
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    return {"samples_per_s": summary["metrics"]["train_samples_per_s"], "wall_s": wall}


def run_baseline(data: Path, args, workdir: Path) -> dict:
    out = workdir / f"ddp-{time.monotonic_ns()}.json"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "tests.benchmarks._ddp_baseline", "--data", str(data), "--out", str(out),
           "--batch-size", str(args.batch_size), "--max-seq-len", str(args.max_seq_len),
           "--max-train-rows", str(args.rows)]
    env = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1")
    started = time.monotonic()
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    wall = time.monotonic() - started
    if proc.returncode != 0:
        raise SystemExit(f"baseline run failed:\n{proc.stderr[-3000:]}")
    return {"samples_per_s": json.loads(out.read_text())["train_samples_per_s"], "wall_s": wall}


def _table(results: dict) -> list[str]:
    lines = [f"{'path':<28} {'runs':>4} {'median samples/s':>17} {'min':>8} {'max':>8} {'median wall s':>14}"]
    for name, runs in results.items():
        rates = [r["samples_per_s"] for r in runs]
        walls = [r["wall_s"] for r in runs]
        lines.append(f"{name:<28} {len(runs):>4} {statistics.median(rates):>17.2f} {min(rates):>8.2f} "
                     f"{max(rates):>8.2f} {statistics.median(walls):>14.1f}")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--rows", type=int, default=1024, help="training rows per run")
    parser.add_argument("--zero-stage", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-seq-len", type=int, default=64)
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="attune-bench-") as tmp:
        workdir = Path(tmp)
        data = _data_file(workdir)
        results = {f"attune (Ray Train + ZeRO-{args.zero_stage})": [], "baseline (torchrun DDP)": []}
        for i in range(args.repeats):
            for name, runner in zip(results, (run_attune, run_baseline)):
                results[name].append(runner(data, args, workdir))
                print(f"run {i + 1}/{args.repeats} {name}: {results[name][-1]['samples_per_s']:.2f} samples/s",
                      file=sys.stderr, flush=True)
    attune, baseline = ([r["samples_per_s"] for r in runs] for runs in results.values())
    ratio = statistics.median(attune) / statistics.median(baseline)
    wall_ratio = (statistics.median(r["wall_s"] for r in results[next(iter(results))])
                  / statistics.median(r["wall_s"] for r in results["baseline (torchrun DDP)"]))
    for line in _table(results):
        print(line)
    print(f"data: {data.name}, {args.rows} rows, batch {args.batch_size}/worker, 2 workers, 1 epoch")
    if args.json:
        args.json.write_text(json.dumps({"results": results, "ratio": ratio, "wall_ratio": wall_ratio}, indent=2))
    print(f"whole-command wall time ratio attune/baseline: {wall_ratio:.2f}x")
    print(f"throughput ratio attune/baseline: {ratio:.3f}x (goal >= 0.87x)")


if __name__ == "__main__":
    main()
