"""MiniLM against MPNet, per tenant: test macro-F1 and ECE, training time, serving latency and memory.

    .venv/bin/python -m tests.benchmarks.base_compare [--bases minilm mpnet] [--tenants john jane newsdesk]
        [--methods full lora] [--labels 200 500] [--seed 0] [--json OUT]
    .venv/bin/python -m tests.benchmarks.base_compare --serving-from OUT.json ... [--json OUT2]
    .venv/bin/python -m tests.benchmarks.base_compare --combine A.json B.json ...

MPNet must be installed first (``attune bases install mpnet``; ``ATTUNE_BASES_DIR`` says where).

**Tenants.** Every run is the command a user types, ``attune finetune --tenant T --data FILE --base B
--method M --seed S --no-promote --json``, on the embedded local Ray (2 workers, ZeRO-2), with the
recipe ``attune demo`` uses for that tenant (``cluster.demo.TRAINING``: john and jane 3 epochs at 32
tokens; newsdesk 1 epoch at 48 tokens on 2,000 of its 9,602 train rows), the same for both bases. It
reports test macro-F1 and accuracy, ECE before and after calibration, and training seconds per
epoch (the run's ``train_seconds`` over its epochs).

**Few labels.** newsdesk's train split shuffled by the seed, its first N rows (``--labels``), trained
in this process with the small-data recipe attune picks for N rows (``train.finetune.crossval.recipe_for``)
and scored on newsdesk's whole test split, as ``tests.benchmarks.few_labels`` does.

**Serving.** For each export of one tenant (``--serving-tenant``, default john),
what one replica (1 torch thread) pays for it: p50/p95 latency of one headline and of a batch of 16,
through serve's own model classes (a full model: ``serve._full.FullModel``; a LoRA tenant: a slot of
``serve._lora.LoraBank``), without HTTP; and its memory: a full model's parameters, or a LoRA
tenant's slot in a bank whose base is shared by every LoRA tenant on it (the base's bytes listed
apart).

The named baseline is MiniLM: the last lines give MPNet minus MiniLM in points of test macro-F1 per
tenant (issue "A stronger base on demand": at least +3 on newsdesk), and MPNet's cost as a multiple.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

BASELINE = "minilm"
SERVING_TEXTS = [
    "gold is up 150% in after-hours trading", "gold futures tumble 3% on profit-taking",
    "oil slumps 4% after OPEC meeting", "Barrick Gold names new chief financial officer",
    "spot gold climbs to a fresh record on safe-haven demand", "bullion drops to a two-month low",
    "copper rallies on Chinese stimulus hopes", "the S&P 500 ends flat ahead of earnings",
]


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bases", nargs="+", default=["minilm", "mpnet"])
    parser.add_argument("--tenants", nargs="+", default=["john", "jane", "newsdesk"])
    parser.add_argument("--methods", nargs="+", default=["full", "lora"], choices=["full", "lora"])
    parser.add_argument("--labels", type=int, nargs="*", default=[200, 500],
                        help="newsdesk few-label sizes (none: skip that part)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--serving-tenant", default="john", help="whose exports the serving measure loads")
    parser.add_argument("--serving-repeats", type=int, default=30)
    parser.add_argument("--no-serving", action="store_true", help="skip the serving measure")
    parser.add_argument("--serving-from", nargs="+", type=Path, default=None,
                        help="measure serving only, for the exports saved --json runs list")
    parser.add_argument("--combine", nargs="+", type=Path, default=None, help="print saved --json runs together")
    parser.add_argument("--json", type=Path, default=None)
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    if args.combine:
        report(combine(args.combine))
        return
    if args.serving_from:
        result = combine(args.serving_from)
        result["serving"] = serving(result["tenants"], args)
        save(args, result)
        report(result)
        return
    home = Path(tempfile.mkdtemp(prefix="attune-base-compare-"))
    env = {**os.environ, "ATTUNE_HOME": str(home), "ATTUNE_LOG_LEVEL": "WARNING"}
    if "ATTUNE_BASES_DIR" not in os.environ:  # the user's installed bases, not the scratch home's
        env["ATTUNE_BASES_DIR"] = str(Path(os.environ.get("ATTUNE_HOME", ".attune")).resolve() / "bases")
    os.environ["ATTUNE_BASES_DIR"] = env["ATTUNE_BASES_DIR"]
    check_bases(args.bases)
    result = {"benchmark": "base_compare", "seed": args.seed, "home": str(home), "tenants": [],
              "few_labels": [], "serving": []}
    result["tenants"] = tenants(env, home, args, result)
    result["few_labels"] = few_labels(args, result)
    if not args.no_serving:
        result["serving"] = serving(result["tenants"], args)
        save(args, result)
    report(result)


def combine(paths: list[Path]) -> dict:
    """Saved --json runs as one result (their rows in order)."""
    result = {"benchmark": "base_compare", "tenants": [], "few_labels": [], "serving": []}
    for path in paths:
        saved = json.loads(path.read_text())
        for key in ("tenants", "few_labels", "serving"):
            result[key] += saved.get(key, [])
    return result


def check_bases(bases: list[str]) -> None:
    from train._base import resolve_base

    for base in bases:
        try:
            print(f"{base}: {resolve_base(base)}", flush=True)
        except Exception as exc:  # noqa: BLE001 - the product's own message says what to do
            raise SystemExit(f"base {base!r}: {exc}") from None


def save(args, result: dict) -> None:
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")


# -- tenants -----------------------------------------------------------------------------------------

def tenants(env: dict, home: Path, args, result: dict) -> list[dict]:
    from cluster.demo import COMMON, TRAINING
    from tests.benchmarks.lora_vs_full import attune

    data = json.loads(attune(env, "data", "demo", "--out", str(home / "data"))[-1])["files"]
    runs = result["tenants"]
    for tenant in args.tenants:
        if tenant not in data:
            print(f"{tenant}: no data (newsdesk needs ../shared/data); skipped", file=sys.stderr)
            continue
        for method in args.methods:
            for base in args.bases:  # the bases alternate, so both see the same machine
                summary = json.loads(attune(env, "finetune", "--tenant", f"{tenant}-{base}-{method}", "--data",
                                            data[tenant], "--base", base, "--method", method, "--seed",
                                            str(args.seed), "--no-promote", *COMMON, *TRAINING[tenant])[-1])
                m = summary["metrics"]
                row = {"tenant": tenant, "base": base, "method": method, "recipe": TRAINING[tenant],
                       "test_macro_f1": m["test_macro_f1"], "test_accuracy": m["test_accuracy"],
                       "ece_before": m["ece_before"], "ece_after": m["ece_after"],
                       "temperature": m.get("temperature"), "epochs_run": m["epochs_run"],
                       "train_seconds": summary["train_seconds"],
                       "seconds_per_epoch": summary["train_seconds"] / max(1, m["epochs_run"]),
                       "model_dir": summary["model_dir"]}
                runs.append(row)
                print(f"{tenant} {method} {base}: macro-F1 {row['test_macro_f1']:.4f} accuracy "
                      f"{row['test_accuracy']:.4f} ECE {row['ece_before']:.3f} -> {row['ece_after']:.3f} "
                      f"({row['epochs_run']} epochs, {row['seconds_per_epoch']:.0f} s/epoch)", flush=True)
                save(args, result)
    return runs


# -- few labels --------------------------------------------------------------------------------------

def few_labels(args, result: dict) -> list[dict]:
    if not args.labels:
        return []
    import numpy as np
    import torch

    from tests.benchmarks.few_labels import newsdesk_splits, run_cell
    from train._base import resolve_base
    from train.finetune.crossval import recipe_for

    torch.set_num_threads(2)
    data, train_texts, train_y, test_texts, y_test = newsdesk_splits()
    labels = data.labels
    order = np.random.default_rng(args.seed).permutation(len(train_texts))
    cell_args = argparse.Namespace(max_seq_len=48)
    rows = result["few_labels"]
    for n in args.labels:
        picked = order[:n]
        texts, y = [train_texts[i] for i in picked], train_y[picked]
        for base in args.bases:
            recipe = recipe_for(n)
            row = {"labels": n, "base": base, "recipe": recipe, "seed": args.seed}
            row.update(run_cell(recipe, resolve_base(base), labels, texts, y, test_texts, y_test, cell_args,
                                args.seed, base_cache={}))
            rows.append(row)
            print(f"newsdesk {n} labels {base} ({recipe}): macro-F1 {row['test_macro_f1']:.4f} "
                  f"accuracy {row['test_accuracy']:.4f} ({row['seconds']:.0f} s)", flush=True)
            save(args, result)
    return rows


# -- serving -----------------------------------------------------------------------------------------

def serving(runs: list[dict], args) -> list[dict]:
    import torch

    torch.set_num_threads(1)  # as a replica with one CPU
    out = []
    for run in (r for r in runs if r["tenant"] == args.serving_tenant):
        row = {"tenant": run["tenant"], "base": run["base"], "method": run["method"]}
        row.update(measure(Path(run["model_dir"]), run["method"], args.serving_repeats))
        out.append(row)
        print(f"serving {run['tenant']} {run['method']} {run['base']}: 1 row p50 {row['p50_ms_1']:.1f} ms, "
              f"16 rows p50 {row['p50_ms_16']:.1f} ms, tenant {row['tenant_mib']:.2f} MiB "
              f"(+ shared base {row['shared_base_mib']:.0f} MiB)", flush=True)
    return out


def measure(model_dir: Path, method: str, repeats: int) -> dict:
    from registry import max_seq_len, read_lora_adapter, read_manifest, resolve_base
    from serve._full import FullModel
    from serve._lora import LoraBank

    manifest = read_manifest(model_dir)
    seq = int(max_seq_len(manifest))
    if method == "full":
        model = FullModel(model_dir)
        call = model.logits
        tenant_bytes, shared = model.bytes, 0
    else:
        bank = LoraBank(resolve_base(manifest["base"]))
        slot = bank.add(read_lora_adapter(model_dir))
        call = lambda texts, seqs: bank.logits([slot] * len(texts), texts, seqs)  # noqa: E731
        tenant_bytes = bank.slot_bytes
        shared = sum(p.numel() * p.element_size() for p in bank.encoder.parameters())
    row = {"tenant_mib": tenant_bytes / 2**20, "shared_base_mib": shared / 2**20}
    for size in (1, 16):
        texts = [SERVING_TEXTS[i % len(SERVING_TEXTS)] for i in range(size)]
        call(texts, [seq] * size)  # warm-up
        times = []
        for _ in range(repeats):
            started = time.perf_counter()
            call(texts, [seq] * size)
            times.append(1000 * (time.perf_counter() - started))
        times.sort()
        row[f"p50_ms_{size}"] = statistics.median(times)
        row[f"p95_ms_{size}"] = times[min(len(times) - 1, int(0.95 * len(times)))]
    return row


# -- report ------------------------------------------------------------------------------------------

def report(result: dict) -> None:
    runs, few, serve_rows = result["tenants"], result["few_labels"], result["serving"]
    if runs:
        print(f"\n{'tenant':<9} {'method':<6} {'base':<7} {'macro-F1':>8} {'accuracy':>8} {'ECE before':>10} "
              f"{'ECE after':>9} {'epochs':>6} {'s/epoch':>8}")
        for r in runs:
            print(f"{r['tenant']:<9} {r['method']:<6} {r['base']:<7} {r['test_macro_f1']:>8.4f} "
                  f"{r['test_accuracy']:>8.4f} {r['ece_before']:>10.4f} {r['ece_after']:>9.4f} "
                  f"{r['epochs_run']:>6} {r['seconds_per_epoch']:>8.0f}")
    if few:
        print(f"\n{'newsdesk labels':<15} {'base':<7} {'recipe':<6} {'macro-F1':>8} {'95% CI':<14} {'ECE (T=1)':>9}")
        for r in few:
            low, high = r["test_macro_f1_ci95"]
            print(f"{r['labels']:<15} {r['base']:<7} {r['recipe']:<6} {r['test_macro_f1']:>8.4f} "
                  f"[{low:.3f}, {high:.3f}] {r['ece_before']:>9.4f}")
    if serve_rows:
        print(f"\n{'serving':<9} {'method':<6} {'base':<7} {'1 row p50/p95 ms':>17} {'16 rows p50/p95 ms':>19} "
              f"{'per tenant MiB':>14} {'shared base MiB':>15}")
        for r in serve_rows:
            print(f"{r['tenant']:<9} {r['method']:<6} {r['base']:<7} "
                  f"{r['p50_ms_1']:>8.1f}/{r['p95_ms_1']:<8.1f} {r['p50_ms_16']:>9.1f}/{r['p95_ms_16']:<9.1f} "
                  f"{r['tenant_mib']:>14.2f} {r['shared_base_mib']:>15.0f}")
    print()
    for line in ratios(runs, few, serve_rows):
        print(line)


def ratios(runs: list[dict], few: list[dict], serve_rows: list[dict]) -> list[str]:
    """MPNet (or any other base) against the baseline: points of macro-F1, cost multiples."""
    lines = []
    for key, rows in (("tenant", runs), ("labels", few)):
        for group in dict.fromkeys((r[key], r.get("method", r.get("recipe"))) for r in rows):
            cell = {r["base"]: r for r in rows if (r[key], r.get("method", r.get("recipe"))) == group}
            if BASELINE not in cell:
                continue
            for base, r in cell.items():
                if base == BASELINE:
                    continue
                gain = 100 * (r["test_macro_f1"] - cell[BASELINE]["test_macro_f1"])
                cost = (f", {r['seconds_per_epoch'] / cell[BASELINE]['seconds_per_epoch']:.1f}x the training time "
                        "per epoch" if "seconds_per_epoch" in r else "")
                what = f"newsdesk {group[0]} labels" if key == "labels" else f"{group[0]} {group[1]}"
                lines.append(f"{what}: {base} - {BASELINE} = {gain:+.2f} points of test macro-F1{cost}")
    for method in dict.fromkeys(r["method"] for r in serve_rows):
        cell = {r["base"]: r for r in serve_rows if r["method"] == method}
        for base, r in cell.items():
            if base != BASELINE and BASELINE in cell:
                base_row = cell[BASELINE]
                lines.append(f"serving {method}: {base} / {BASELINE} = {r['p50_ms_1'] / base_row['p50_ms_1']:.1f}x "
                             f"the latency of one row, {r['p50_ms_16'] / base_row['p50_ms_16']:.1f}x of 16 rows, "
                             f"{r['tenant_mib'] / base_row['tenant_mib']:.1f}x the memory per tenant")
    return lines


if __name__ == "__main__":
    main()
