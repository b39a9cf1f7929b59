"""``attune finetune --method lora`` against ``--method full``, each with its own defaults, per tenant.

    .venv/bin/python -m tests.benchmarks.lora_vs_full [--tenants john jane newsdesk] [--seeds 0 1 2]
        [--json OUT] [--combine A.json B.json ...]

Every run is the command a user types, ``attune finetune --tenant T --data FILE --method M --seed S
--no-promote --json`` on the embedded local Ray (MiniLM base, 2 workers, ZeRO-2, and every other
option at its default), on the demo data that ``attune data demo`` writes (newsdesk needs
``../shared/data``). For each tenant and method it reports test accuracy and macro-F1 (mean and
range over the seeds) and the training time; for john and jane also the share of new phrasings
(headlines in neither tenant's data) labelled by that tenant's rule. The baseline is full
fine-tuning; the last line is LoRA's mean test macro-F1 minus full's, in points, per tenant.
``--combine`` prints saved runs together (e.g. one JSON per tenant, run on different days).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
# (headline, what it does to gold): none of these is in the demo data; a tenant's rule gives the label
NEW_PHRASINGS = [
    ("spot gold climbs to a fresh record on safe-haven demand", "up"),
    ("gold prices jump after weak jobs data", "up"),
    ("bullion extends its rally for a third session", "up"),
    ("Newmont shares surge as gold tops $3,000", "up"),
    ("gold slides as the dollar firms", "down"),
    ("gold futures sink 2% after hawkish Fed remarks", "down"),
    ("bullion drops to a two-month low", "down"),
    ("gold miners tumble as prices retreat", "down"),
    ("copper rallies on Chinese stimulus hopes", "none"),
    ("Tesla shares fall after delivery miss", "none"),
    ("wheat futures climb on dry weather", "none"),
    ("the S&P 500 ends flat ahead of earnings", "none"),
]
RULES = {"john": {"up": "positive", "down": "negative", "none": "neutral"},
         "jane": {"up": "negative", "down": "positive", "none": "neutral"}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tenants", nargs="+", default=["john", "jane", "newsdesk"])
    parser.add_argument("--methods", nargs="+", default=["full", "lora"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--combine", nargs="+", type=Path, default=None, help="print saved --json runs together")
    args = parser.parse_args()
    if args.combine:
        runs = [row for path in args.combine for row in json.loads(path.read_text())["runs"]]
        _report(runs)
        return
    home = Path(tempfile.mkdtemp(prefix="attune-lora-vs-full-"))
    env = {**os.environ, "ATTUNE_HOME": str(home), "ATTUNE_LOG_LEVEL": "WARNING"}
    data = json.loads(attune(env, "data", "demo", "--out", str(home / "data"))[-1])["files"]
    runs = []
    for tenant in args.tenants:
        if tenant not in data:
            print(f"{tenant}: no data (newsdesk needs ../shared/data); skipped", file=sys.stderr)
            continue
        for seed in args.seeds:
            for method in args.methods:
                runs.append(_run(env, tenant, data[tenant], method, seed))
                if args.json:
                    args.json.write_text(json.dumps({"runs": runs}, indent=2))
    _report(runs)


def attune(env: dict, *argv: str) -> list[str]:
    proc = subprocess.run([sys.executable, "-m", "cluster.cli", *argv, "--json"], cwd=REPO, env=env,
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"attune {' '.join(argv)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return [line for line in proc.stdout.splitlines() if line.startswith("{")]


def _run(env: dict, tenant: str, data: str, method: str, seed: int) -> dict:
    summary = json.loads(attune(env, "finetune", "--tenant", tenant, "--data", data, "--method", method,
                                 "--seed", str(seed), "--no-promote")[-1])
    m = summary["metrics"]
    row = {"tenant": tenant, "method": method, "seed": seed, "test_accuracy": m["test_accuracy"],
           "test_macro_f1": m["test_macro_f1"], "ece_before": m["ece_before"], "ece_after": m["ece_after"],
           "epochs_run": m["epochs_run"], "train_seconds": summary["train_seconds"]}
    if tenant in RULES:
        predictions = json.loads(attune(env, "predict", "--model", summary["model_dir"],
                                         *[a for text, _ in NEW_PHRASINGS for a in ("--text", text)])[-1])
        row["new_phrasings"] = sum(p["label"] == RULES[tenant][move] for p, (_, move)
                                   in zip(predictions["predictions"], NEW_PHRASINGS)) / len(NEW_PHRASINGS)
    print(f"{tenant} {method} seed {seed}: accuracy {row['test_accuracy']:.4f} macro-F1 {row['test_macro_f1']:.4f}"
          f" ({row['epochs_run']} epochs, {row['train_seconds']:.0f}s)"
          + (f", new phrasings {row['new_phrasings']:.2f}" if "new_phrasings" in row else ""), flush=True)
    return row


def _report(runs: list[dict]) -> None:
    print(f"\n{'tenant':<9} {'method':<6} {'seeds':>5} {'accuracy':>9} {'macro-F1':>9} {'F1 range':>15} "
          f"{'new phrasings':>13} {'train s':>8}")
    gaps = {}
    for tenant in dict.fromkeys(r["tenant"] for r in runs):
        means = {}
        for method in dict.fromkeys(r["method"] for r in runs):
            rows = [r for r in runs if r["tenant"] == tenant and r["method"] == method]
            if not rows:
                continue
            f1 = [r["test_macro_f1"] for r in rows]
            means[method] = statistics.mean(f1)
            phr = [r["new_phrasings"] for r in rows if "new_phrasings" in r]
            print(f"{tenant:<9} {method:<6} {len(rows):>5} {statistics.mean(r['test_accuracy'] for r in rows):>9.4f} "
                  f"{means[method]:>9.4f} {f'{min(f1):.4f}-{max(f1):.4f}':>15} "
                  f"{(f'{statistics.mean(phr):.2f}' if phr else '-'):>13} "
                  f"{statistics.mean(r['train_seconds'] for r in rows):>8.0f}")
        if {"full", "lora"} <= means.keys():
            gaps[tenant] = 100 * (means["lora"] - means["full"])
    print("lora - full, mean test macro-F1 in points: " + ", ".join(f"{t} {g:+.2f}" for t, g in gaps.items()))


if __name__ == "__main__":
    main()
