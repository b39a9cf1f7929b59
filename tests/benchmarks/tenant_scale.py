"""A fleet on one replica: 1,000 LoRA tenants, Zipf traffic, cross-tenant batching vs per-tenant batching.

    .venv/bin/python -m tests.benchmarks.tenant_scale [--tenants 1000] [--clients 16] [--seconds 60]
        [--rank 16] [--home DIR] [--json OUT]

Everything goes through attune's own commands on an embedded local head, as a user would run them:

1. ``--tenants`` LoRA exports on MiniLM (``attune finetune``'s format; random adapters and heads, so
   every tenant answers differently) are registered with ``attune registry import DIR --promote``.
2. ``attune serve up --detach`` with one replica (autoscaling off) and the default serve config
   otherwise; an admin key (``attune keys create --admin``) authenticates every request.
3. Warm-up: every tenant is called once, so all adapters are loaded: the first 100 one at a time
   (cold loads on an idle replica), the rest from ``--clients`` clients at once. The replica reports
   its cold loads' times and its resident memory (RSS) with one adapter and with all.
4. Arms, ``--clients`` concurrent HTTP clients for ``--seconds`` each, one text per request, in
   ``--rounds`` rounds (2 x 30 s each by default; the deployments alternate, and the table shows each
   arm's medians over the rounds):
   ``single``   every request to one tenant (what one tenant alone gets);
   ``fleet``    tenants drawn from Zipf(1.1) over the fleet, cross-tenant batching on;
   ``baseline`` the same request sequence with ``model.cross_tenant_batching: false`` (each tenant's
                requests batched alone, as Ray Serve's per-model batching does), on a fresh deployment.
5. Correctness: every (tenant, text) answered in both ``fleet`` and ``baseline`` must agree to 1e-5
   (the baseline computes each tenant apart), and a sample of tenants is checked against training's
   predictor.

The table shows req/s, p50/p99 latency, failures, wrong answers and the cache hit rate per arm; the
last line is the ratio of the fleet's req/s to the per-tenant baseline's.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
SAMPLE_CHECKED = 12  # tenants also checked against training's predictor
SEQUENTIAL = 100  # tenants loaded one at a time in the warm-up (cold loads on an idle replica)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tenants", type=int, default=1000)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=30.0, help="per arm and round")
    parser.add_argument("--rounds", type=int, default=2, help="rounds of the three arms (medians are reported)")
    parser.add_argument("--rank", type=int, default=16, help="LoRA rank of every tenant")
    parser.add_argument("--zipf", type=float, default=1.1)
    parser.add_argument("--home", type=Path, default=None, help="ATTUNE_HOME to use (default: a temp folder)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    home = args.home or Path(tempfile.mkdtemp(prefix="attune-tenant-scale-"))
    bench = _Bench(args, home)
    try:
        result = bench.run()
    finally:
        bench.attune("serve", "down", check=False)
    _print(result)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


class _Bench:
    def __init__(self, args, home: Path):
        self.args, self.home = args, home
        self.env = {**os.environ, "ATTUNE_HOME": str(home), "ATTUNE_LOG_LEVEL": "WARNING"}
        self.texts = _headlines()
        rng = random.Random(0)
        self.tenants = [f"t{i:04d}" for i in range(args.tenants)]
        ranked = self.tenants[:]
        rng.shuffle(ranked)
        weights = 1.0 / np.arange(1, len(ranked) + 1) ** args.zipf
        draws = rng.choices(range(len(ranked)), weights=weights.tolist(), k=200_000)
        self.sequence = [(ranked[d], rng.randrange(len(self.texts))) for d in draws]

    def attune(self, *argv: str, check: bool = True) -> dict:
        proc = subprocess.run([sys.executable, "-m", "cluster.cli", *argv, "--json"], cwd=REPO, env=self.env,
                              capture_output=True, text=True)
        if check and proc.returncode != 0:
            raise SystemExit(f"attune {' '.join(argv)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
        lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
        return json.loads(lines[-1]) if lines else {}

    def run(self) -> dict:
        exports = self.home / "exports"
        started = time.monotonic()
        _write_exports(exports, self.tenants, self.args.rank)
        print(f"wrote {len(self.tenants)} exports in {time.monotonic() - started:.0f}s", flush=True)
        imported = self.attune("registry", "import", str(exports), "--promote")
        print(f"attune registry import: {len(imported['imported'])} versions in {imported['seconds']:.0f}s",
              flush=True)
        self.key = self.attune("keys", "create", "--admin")["key"]
        runs: dict[str, list] = {"single": [], "fleet": [], "baseline": []}
        memory = None
        single = [(self.tenants[0], i % len(self.texts)) for i in range(200_000)]
        for _ in range(self.args.rounds):  # the deployments alternate: the machine's speed drifts
            on = self.deploy(cross_tenant=True)
            warmed = self.warm(on)
            memory = memory or warmed
            runs["single"].append(self.arm(on, single))
            runs["fleet"].append(self.arm(on, self.sequence))
            self.attune("serve", "down")
            off = self.deploy(cross_tenant=False)
            self.warm(off)
            runs["baseline"].append(self.arm(off, self.sequence))
            self.attune("serve", "down")
        fleet_answers = {k: v for run in runs["fleet"] for k, v in run.pop("answers").items()}
        wrong = _disagreements(fleet_answers, {k: v for run in runs["baseline"] for k, v in run.pop("answers").items()})
        for run in runs["single"]:
            run.pop("answers")
        sample = _check_sample(exports, fleet_answers, self.texts)
        arms = {name: _median_arm(rounds) for name, rounds in runs.items()}
        return {"settings": {k: str(v) for k, v in vars(self.args).items()}, "import_seconds": imported["seconds"],
                "memory": memory, "arms": arms, "rounds": runs, "wrong_fleet_vs_baseline": wrong,
                "sample_checked": sample,
                "ratio_fleet_vs_baseline": arms["fleet"]["req_per_s"] / arms["baseline"]["req_per_s"],
                "ratio_fleet_vs_single": arms["fleet"]["req_per_s"] / arms["single"]["req_per_s"]}

    def deploy(self, cross_tenant: bool) -> str:
        config = self.home / f"serve-{'on' if cross_tenant else 'off'}.yaml"
        config.write_text(f"model:\n  cross_tenant_batching: {str(cross_tenant).lower()}\n"
                          "  autoscaling: {min_replicas: 1, max_replicas: 1}\n")
        port = _free_port()
        return self.attune("serve", "up", "--detach", "--port", str(port), "--config", str(config))["url"]

    def status(self) -> dict:
        (replica,) = self.attune("serve", "status")["replicas"]
        return replica

    def warm(self, url: str) -> dict:
        """Every tenant once: the first alone (the base loads), the next ``SEQUENTIAL`` one at a time
        (cold loads on an idle replica), the rest from ``--clients`` clients at once. The replica's
        memory with one adapter and with all, and its cold-load times."""
        asyncio.run(self.requests(url, [(self.tenants[0], 0)], 1, 600))
        first = self.status()
        asyncio.run(self.requests(url, [(t, 0) for t in self.tenants[1:1 + SEQUENTIAL]], 1, 600))
        alone = self.status()["loads"]
        asyncio.run(self.requests(url, [(t, 0) for t in self.tenants[1 + SEQUENTIAL:]], self.args.clients, 3600))
        full = self.status()
        loads = full["loads"]
        return {"rss_with_one_adapter_mib": first["rss_bytes"] / 2**20,
                "rss_with_all_adapters_mib": full["rss_bytes"] / 2**20,
                "rss_above_base_mib": (full["rss_bytes"] - first["rss_bytes"]) / 2**20,
                "adapter_bytes_mib": full["adapter_bytes"] / 2**20, "adapters": full["num_models"],
                "cold_load_alone_p50_ms": 1000 * alone["p50_s"], "cold_load_alone_p99_ms": 1000 * alone["p99_s"],
                "cold_load_p50_ms": 1000 * loads["p50_s"], "cold_load_p99_ms": 1000 * loads["p99_s"],
                "cold_loads": loads["count"]}

    def arm(self, url: str, sequence: list) -> dict:
        before = self.status()
        records = asyncio.run(self.requests(url, sequence, self.args.clients, self.args.seconds))
        after = self.status()
        ok = [r for r in records if r["status"] == 200]
        latencies = [r["ms"] for r in ok]
        lookups = (after["hits"] + after["misses"]) - (before["hits"] + before["misses"])
        return {"requests": len(records), "failed": len(records) - len(ok),
                "req_per_s": len(ok) / self.args.seconds,
                "p50_ms": statistics.median(latencies), "p99_ms": _p99(latencies),
                "hit_rate": (after["hits"] - before["hits"]) / lookups if lookups else None,
                "answers": {(r["tenant"], r["text"]): r["scores"] for r in ok}}

    async def requests(self, url: str, sequence: list, clients: int, seconds: float) -> list[dict]:
        import httpx

        feed = iter(sequence)
        records: list[dict] = []
        deadline = time.monotonic() + seconds
        headers = {"Authorization": f"Bearer {self.key}"}

        async def client(http):
            for tenant, text in feed:
                if time.monotonic() > deadline:
                    return
                started = time.perf_counter()
                resp = await http.post(f"/v1/tenants/{tenant}/predict", json={"texts": [self.texts[text]]},
                                       headers=headers)
                record = {"tenant": tenant, "text": text, "status": resp.status_code,
                          "ms": (time.perf_counter() - started) * 1000}
                if resp.status_code == 200:
                    record["scores"] = resp.json()["predictions"][0]["scores"]
                records.append(record)

        limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
        async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as http:
            await asyncio.gather(*(client(http) for _ in range(clients)))
        return records


def _check_sample(exports: Path, answers: dict, texts: list[str]) -> dict:
    """The most-called tenants' answers against training's predictor (each tenant's model alone)."""
    from train import Predictor

    by_tenant: dict[str, list] = {}
    for (tenant, text), scores in answers.items():
        by_tenant.setdefault(tenant, []).append((text, scores))
    chosen = sorted(by_tenant, key=lambda t: -len(by_tenant[t]))[:SAMPLE_CHECKED]
    worst, checked = 0.0, 0
    for tenant in chosen:
        predictor = Predictor(exports / tenant)
        for text, scores in by_tenant[tenant]:
            reference = predictor.predict([texts[text]])[0]["scores"]
            worst = max(worst, max(abs(reference[k] - scores[k]) for k in reference))
            checked += 1
    return {"tenants": len(chosen), "answers": checked, "max_abs_diff": worst}


def _median_arm(rounds: list[dict]) -> dict:
    """One arm over the rounds: the median of each figure, the requests and failures summed."""
    out = {"requests": sum(r["requests"] for r in rounds), "failed": sum(r["failed"] for r in rounds)}
    for key in ("req_per_s", "p50_ms", "p99_ms", "hit_rate"):
        values = [r[key] for r in rounds if r[key] is not None]
        out[key] = statistics.median(values) if values else None
    return out


def _p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))] if ordered else float("nan")


def _disagreements(a: dict, b: dict) -> dict:
    shared = a.keys() & b.keys()
    worst = max((max(abs(a[k][label] - b[k][label]) for label in a[k]) for k in shared), default=0.0)
    wrong = sum(max(abs(a[k][label] - b[k][label]) for label in a[k]) > 1e-5 for k in shared)
    return {"compared": len(shared), "wrong": wrong, "max_abs_diff": worst}


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _headlines() -> list[str]:
    from train._demo_data import default_newsdesk_source, demo_rows, newsdesk_rows

    source = default_newsdesk_source()
    rows = newsdesk_rows(source) if source else demo_rows()[0]
    return [row["text"] for row in rows[:500]]


def _write_exports(root: Path, tenants: list[str], rank: int) -> None:
    """One real LoRA export on MiniLM, then one copy per tenant with its own random adapter and head
    (the tokenizer files are hard links: they are the base's, the same for every tenant)."""
    import torch
    from safetensors.torch import load_file, save_file

    from train import resolve_base
    from train._base import load_tokenizer
    from train.finetune.export import build_manifest, export_model
    from train.finetune.model import build_classifier

    if root.exists():
        shutil.rmtree(root)
    template = root.parent / "template"
    shutil.rmtree(template, ignore_errors=True)
    base = resolve_base("minilm")
    labels = ["negative", "neutral", "positive"]
    model = build_classifier(base, labels, method="lora", lora_rank=rank, lora_alpha=2 * rank)
    manifest = build_manifest(tenant="template", labels=labels, base="minilm", method="lora", data_hash="bench",
                              metrics={}, temperature=1.0, max_seq_len=64)
    export_model(model, load_tokenizer(base), template, manifest)
    weights = load_file(str(template / "adapter_model.safetensors"))
    generator = torch.Generator()
    for i, tenant in enumerate(tenants):
        directory = root / tenant
        directory.mkdir(parents=True)
        for f in template.iterdir():
            if f.name not in ("adapter_model.safetensors", "attune.json"):
                os.link(f, directory / f.name)
        generator.manual_seed(i)
        save_file({k: torch.randn(v.shape, generator=generator) * (0.5 if "classifier" in k else 0.05)
                   for k, v in weights.items()}, str(directory / "adapter_model.safetensors"))
        (directory / "attune.json").write_text(json.dumps({**manifest, "tenant": tenant}, indent=2))


def _print(result: dict) -> None:
    memory = result["memory"]
    print(f"\nimport: {result['settings']['tenants']} tenants in {result['import_seconds']:.0f}s")
    print(f"memory: {memory['adapters']} adapters, RSS {memory['rss_with_one_adapter_mib']:.0f} MiB with one -> "
          f"{memory['rss_with_all_adapters_mib']:.0f} MiB with all ({memory['rss_above_base_mib']:.0f} MiB above "
          f"the base; the cache counts {memory['adapter_bytes_mib']:.0f} MiB)")
    print(f"cold load, one at a time ({SEQUENTIAL} tenants): p50 {memory['cold_load_alone_p50_ms']:.1f} ms, "
          f"p99 {memory['cold_load_alone_p99_ms']:.1f} ms; all {memory['cold_loads']} loads, most of them "
          f"{result['settings']['clients']} at a time: p50 {memory['cold_load_p50_ms']:.1f} ms, "
          f"p99 {memory['cold_load_p99_ms']:.1f} ms")
    print(f"\n{'arm':<9} {'requests':>8} {'failed':>6} {'req/s':>7} {'p50 ms':>7} {'p99 ms':>7} {'hit rate':>8}")
    for name, arm in result["arms"].items():
        hit = "-" if arm["hit_rate"] is None else f"{arm['hit_rate']:.3f}"
        print(f"{name:<9} {arm['requests']:>8} {arm['failed']:>6} {arm['req_per_s']:>7.1f} {arm['p50_ms']:>7.1f} "
              f"{arm['p99_ms']:>7.1f} {hit:>8}")
    wrong, sample = result["wrong_fleet_vs_baseline"], result["sample_checked"]
    print(f"wrong answers: {wrong['wrong']} of {wrong['compared']} compared with the per-tenant baseline "
          f"(max diff {wrong['max_abs_diff']:.2e}); {sample['answers']} answers of {sample['tenants']} tenants "
          f"against training's predictor, max diff {sample['max_abs_diff']:.2e}")
    print(f"fleet vs one tenant alone: {result['ratio_fleet_vs_single']:.2f}")
    print(f"ratio fleet (cross-tenant batching) / baseline (per-tenant batching) req/s: "
          f"{result['ratio_fleet_vs_baseline']:.2f}")


if __name__ == "__main__":
    main()
