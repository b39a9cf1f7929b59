"""ASHA + Optuna TPE (attune tune's default) vs FIFO + random search, same trials, on newsdesk.

    .venv/bin/python -m tests.benchmarks.tune_asha_vs_random [--trials 8] [--max-train-rows 512]
        [--epochs 8] [--head-warmup-steps N] [--max-seq-len 32] [--workers 1] [--seed 0] [--json PATH]
        [--grace-period 1] [--reduction-factor 2] [--baseline-from RUN.json]
    .venv/bin/python -m tests.benchmarks.tune_asha_vs_random --combine RUN.json [RUN.json ...]

Both searches run `attune tune` on the same tenant data (the newsdesk tweets, a train-split
subsample; validation and test splits are whole), from MiniLM, with the same space (learning
rate, weight decay, warm-up; batch size and epochs fixed, so a training step is the same work
in every trial) and the same trial count, one after the other, each in its own ATTUNE_HOME.
Every trial first trains its new head alone (``--head-warmup-steps``, LP-FT; by default one pass
over the train rows), so that its first epoch already ranks the learning rates: without it, at
512 rows, every trial is still at the majority-class baseline after epoch 1.

Compute is the training steps every trial took (trials that ASHA stopped count the steps they
ran; a trial that ASHA paused at a rung and resumed counts each step once, as its Train run
restarts from the rung's checkpoint; the few steps a trial trains past a rung before its pause
takes effect are thrown away and not counted) plus every trial's head-only warm-up steps,
each counted as a whole step although it only
runs the frozen encoder forward. The last line compares the best validation macro-F1 (the
metric both searches select by) and the compute: ASHA's target is within 1 point of random
search at <= 0.5x the steps.

Why 8 epochs: ASHA's rungs are at epochs 1, 2, 4 (reduction factor 2), so with 4-epoch trials
even synchronous successive halving spends exactly 0.5x of a full search (8 + 4 + 2x2 of 32
trial-epochs), and ASHA, which decides while a rung is still filling, spends a little more. The
0.5x target needs trials longer than the last rung.

One run compares two maxima of noisy scores (at 512 rows a trial's validation macro-F1 moves 2-4
points between epochs), so one seed cannot settle a 1-point target. ``--combine`` reads the
``--json`` files of several runs (e.g. seeds 0..4) and prints each run's row and the mean gap and
compute ratio over them, with the target checked on the means.

``--baseline-from RUN.json`` takes the FIFO + random arm from an earlier run with the same
settings and seed instead of running it again (22 of a run's 32 minutes here). Random search
with FIFO is deterministic for a seed (two runs on different commits agreed to four decimals in
every trial they shared), so this is only valid while nothing on its path (the fine-tuning
loop, the data, FIFO, random sampling) has changed since; every run's JSON records its commit.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _newsdesk(directory: Path) -> Path:
    from train._data import write_jsonl
    from train._demo_data import default_newsdesk_source, newsdesk_rows

    source = default_newsdesk_source()
    if source is None:
        raise SystemExit("the newsdesk data (Twitter Financial News CSVs) was not found; set ATTUNE_NEWSDESK_DATA")
    return write_jsonl(directory / "newsdesk.jsonl", newsdesk_rows(source))


def _space(directory: Path, epochs: int, batch_size: int) -> Path:
    path = directory / "space.yaml"
    path.write_text(f"lr: {{loguniform: [1.0e-5, 3.0e-4]}}\nweight_decay: {{uniform: [0.0, 0.1]}}\n"
                    f"warmup_ratio: {{uniform: [0.0, 0.2]}}\nbatch_size: {batch_size}\nepochs: {epochs}\n")
    return path


def run_search(name: str, scheduler: str, search: str, data: Path, space: Path, args, workdir: Path) -> dict:
    home = workdir / name
    cmd = [sys.executable, "-m", "cluster.cli", "tune", "--tenant", "newsdesk", "--data", str(data),
           "--space", str(space), "--trials", str(args.trials), "--scheduler", scheduler, "--search", search,
           "--workers", str(args.workers), "--max-seq-len", str(args.max_seq_len), "--seed", str(args.seed),
           "--max-train-rows", str(args.max_train_rows), "--patience", str(args.epochs),
           "--head-warmup-steps", str(args.head_warmup_steps), "--no-promote", "--json"]
    if scheduler == "asha":
        cmd += ["--grace-period", str(args.grace_period), "--reduction-factor", str(args.reduction_factor)]
    env = dict(os.environ, ATTUNE_HOME=str(home))
    env.pop("RAY_ADDRESS", None)
    started = time.monotonic()
    with open(workdir / f"{name}.log", "w") as log:
        proc = subprocess.run(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=log, text=True)
    wall = time.monotonic() - started
    if proc.returncode != 0:
        raise SystemExit(f"{name} failed; see {workdir / f'{name}.log'}")
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    best = next(r for r in summary["trial_results"] if r["trial_id"] == summary["best_trial_id"])
    return {"name": name, "trials": summary["trials"], "completed": summary["completed"],
            "stopped_early": summary["stopped_early"], "failed": summary["failed"],
            "best_val_macro_f1": summary["best_metric"], "best_config": summary["best_config"],
            "best_test_macro_f1": _test_f1(summary), "train_steps": summary["train_steps"],
            "head_warmup_steps": summary["head_warmup_steps"],
            "compute_steps": summary["train_steps"] + summary["head_warmup_steps"],
            "best_trial_steps": best["train_steps"], "wall_s": round(wall, 1),
            "trial_results": summary["trial_results"]}


def _test_f1(summary: dict) -> float | None:
    """The chosen model's test macro-F1, from its export's manifest."""
    manifest = Path(summary["model_dir"]) / "attune.json"
    return json.loads(manifest.read_text())["metrics"]["test_macro_f1"] if manifest.is_file() else None


def _table(results: list[dict]) -> list[str]:
    lines = [f"{'search':<22} {'trials':>6} {'done':>5} {'stopped':>7} {'best val F1':>11} {'its test F1':>11} "
             f"{'train steps':>11} {'head steps':>10} {'wall s':>7}"]
    for r in results:
        test = "-" if r["best_test_macro_f1"] is None else f"{r['best_test_macro_f1']:.4f}"
        lines.append(f"{r['name']:<22} {r['trials']:>6} {r['completed']:>5} {r['stopped_early']:>7} "
                     f"{r['best_val_macro_f1']:>11.4f} {test:>11} {r['train_steps']:>11} {r['head_warmup_steps']:>10} "
                     f"{r['wall_s']:>7.0f}")
    return lines


# options that change nothing either search does, and those that change only the ASHA arm
BOOKKEEPING = ("json", "combine", "baseline_from")
ASHA_ONLY = ("grace_period", "reduction_factor", *BOOKKEEPING)


def _saved_baseline(args) -> dict:
    """The FIFO + random arm of an earlier run, if it used this run's settings and seed."""
    saved = json.loads(args.baseline_from.read_text())
    ours = {k: v for k, v in vars(args).items() if k not in ASHA_ONLY}
    theirs = {k: saved["args"].get(k) for k in ours}
    if theirs != ours:
        differ = ", ".join(f"{k}: {theirs[k]!r} there, {ours[k]!r} here" for k in ours if theirs[k] != ours[k])
        raise SystemExit(f"--baseline-from {args.baseline_from}: that run's settings differ ({differ}); "
                         "run the baseline again instead")
    baseline = saved["results"][1]
    print(f"baseline arm reused from {args.baseline_from} (commit {saved.get('commit', 'not recorded')})",
          file=sys.stderr)
    return baseline | {"name": "fifo+random (saved)"}


def _commit() -> str:
    proc = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=REPO, capture_output=True, text=True)
    return proc.stdout.strip() or "unknown"


def _verdict(gap: float, ratio: float) -> str:
    return f"target: >= -1.00 points at <= 0.50x: {'met' if gap >= -1.0 and ratio <= 0.5 else 'not met'}"


def _test_gap(run: dict) -> float:
    """ASHA's chosen model's test macro-F1 minus random search's, in points."""
    asha, rand = run["results"]
    return (asha["best_test_macro_f1"] - rand["best_test_macro_f1"]) * 100


def combine(paths: list[Path]) -> None:
    """Each saved run's comparison, then the means over them."""
    runs = [json.loads(path.read_text()) for path in paths]
    print(f"{'run':<28} {'seed':>4} {'ASHA val':>8} {'random val':>10} {'gap pts':>7} {'ASHA test':>9} "
          f"{'random test':>11} {'compute':>7}")
    for path, run in zip(paths, runs):
        asha, rand = run["results"]
        print(f"{path.name:<28} {run['args']['seed']:>4} {asha['best_val_macro_f1']:>8.4f} "
              f"{rand['best_val_macro_f1']:>10.4f} {run['val_f1_gap_points']:>+7.2f} "
              f"{asha['best_test_macro_f1']:>9.4f} {rand['best_test_macro_f1']:>11.4f} "
              f"{run['compute_ratio']:>6.2f}x  (test gap {_test_gap(run):+.2f})")
    defaults = {"grace_period": 1, "reduction_factor": 2.0}  # runs saved before these options existed
    settings = {json.dumps({k: v for k, v in (defaults | run["args"]).items() if k not in ("seed", *BOOKKEEPING)},
                           sort_keys=True) for run in runs}
    if len(settings) > 1:
        print("warning: these runs used different settings:\n  " + "\n  ".join(sorted(settings)))
    commits = sorted({run.get("commit", "not recorded") for run in runs})
    if len(commits) > 1:
        print(f"note: these runs' ASHA arms come from different commits: {', '.join(commits)}")
    gap = sum(run["val_f1_gap_points"] for run in runs) / len(runs)
    ratio = sum(run["compute_ratio"] for run in runs) / len(runs)
    test_gap = sum(_test_gap(run) for run in runs) / len(runs)
    print(f"mean over {len(runs)} runs: best val macro-F1 {gap:+.2f} points (test {test_gap:+.2f}), "
          f"compute {ratio:.2f}x ({_verdict(gap, ratio)})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--max-train-rows", type=int, default=512, help="train rows per trial")
    parser.add_argument("--epochs", type=int, default=8, help="epochs of every trial (ASHA rungs at 1, 2, 4)")
    parser.add_argument("--head-warmup-steps", type=int, default=None,
                        help="every trial's head-only warm-up (default: one pass over the train rows; 0: off)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-seq-len", type=int, default=32)
    parser.add_argument("--workers", type=int, default=1, help="workers per trial (1: two trials at a time on 2 CPUs)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--grace-period", type=int, default=1, help="ASHA's first rung (attune tune's default 1)")
    parser.add_argument("--reduction-factor", type=float, default=2.0, help="ASHA's reduction factor (default 2)")
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    parser.add_argument("--baseline-from", type=Path, default=None,
                        help="reuse the FIFO + random arm of this earlier --json run (same settings and seed)")
    parser.add_argument("--combine", type=Path, nargs="+", default=None,
                        help="run nothing: summarize the --json files of earlier runs")
    args = parser.parse_args()
    if args.combine:
        combine(args.combine)
        return
    if args.head_warmup_steps is None:
        args.head_warmup_steps = -(-args.max_train_rows // (args.batch_size * args.workers))

    workdir = Path(tempfile.mkdtemp(prefix="attune-tune-bench-"))  # kept when a search fails: its log is there
    data, space = _newsdesk(workdir), _space(workdir, args.epochs, args.batch_size)
    results = [run_search("asha+optuna (attune)", "asha", "optuna", data, space, args, workdir),
               _saved_baseline(args) if args.baseline_from else
               run_search("fifo+random (baseline)", "fifo", "random", data, space, args, workdir)]
    shutil.rmtree(workdir, ignore_errors=True)
    asha, rand = results
    print(f"newsdesk, MiniLM, {args.trials} trials each, {args.max_train_rows} train rows, {args.epochs} epochs, "
          f"seq {args.max_seq_len}, batch {args.batch_size}, {args.workers} worker(s)/trial, "
          f"head warm-up {args.head_warmup_steps} steps/trial")
    print("\n".join(_table(results)))
    for r in results:
        print(f"{r['name']}: best config {json.dumps(r['best_config'])}")
    gap = (asha["best_val_macro_f1"] - rand["best_val_macro_f1"]) * 100
    ratio = asha["compute_steps"] / rand["compute_steps"]
    if args.json:
        paths = {k: str(v) for k, v in vars(args).items() if isinstance(v, Path)}
        args.json.write_text(json.dumps({"args": vars(args) | paths, "commit": _commit(), "results": results,
                                         "val_f1_gap_points": gap, "compute_ratio": ratio}, indent=2))
    print(f"ASHA+Optuna vs FIFO+random: best val macro-F1 {gap:+.2f} points, compute {ratio:.2f}x the steps "
          f"(optimizer steps alone {asha['train_steps'] / rand['train_steps']:.2f}x) "
          f"({_verdict(gap, ratio)})")


if __name__ == "__main__":
    main()
