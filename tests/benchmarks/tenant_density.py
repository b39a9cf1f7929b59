"""How many tenants one TenantModel replica holds: LoRA tenants on a shared MiniLM base vs full-model
tenants (the baseline), measured in-process through serve's own loading and caching code.

    .venv/bin/python -m tests.benchmarks.tenant_density [--tenants 50] [--full-resident 8] [--cache-size 8]
        [--requests 500] [--zipf-s 1.1] [--threads 1] [--json PATH]

Setup: ``--tenants`` LoRA tenants (r=8 on query/key/value, each with its own random adapter and head)
and as many full tenants (all-MiniLM-L6-v2 + head, about 87 MiB each) are exported as ``attune
finetune`` exports them and registered in a temporary SQLite registry. No training.

A "replica" here is ``TenantModel``'s state outside Ray: the registry, ``serve._loader.ModelLoader``
and a cache directory, loaded through ``TenantModel._load_sync`` itself (download, checksum, load).
  memory     RSS growth of this process per resident tenant: all LoRA tenants at once above the
             shared base (goal: 50 within 1 GiB), then --full-resident full tenants.
  cold load  wall time of ``_load_sync`` per tenant (registry download + checksum + load), and the
             loader's share of it; the shared base is loaded once beforehand and reported apart.
  Zipf       --requests single-text predictions, tenant ranks drawn from Zipf(s) over the tenants,
             through Ray Serve's own multiplexed LRU (the class behind ``@serve.multiplexed``) with
             ``max_num_models_per_replica=--cache-size`` (attune's default 8): hit rate, p50 and p99
             per request (cache lookup or load, then predict). The same sequence for LoRA and full.
HTTP and the ingress are not included (``serve_overhead`` measures them).
The last line gives the ratios LoRA / full.
"""
from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np

MIB = 1024 * 1024
TEXT = "gold is up 150% in after-hours trading"


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def memory() -> dict:
    """This process's resident memory in bytes (after a garbage collection)."""
    gc.collect()
    fields = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "RssAnon", "RssFile"):
            fields[key] = int(value.split()[0]) * 1024
    return fields


# -- exports and registry ---------------------------------------------------------------------------

def make_exports(root: Path, labels: list[str]) -> tuple[Path, Path]:
    """One full MiniLM export and one LoRA export (templates; tenants get their own weights)."""
    import torch

    from train._base import load_tokenizer, resolve_base
    from train.finetune.export import build_manifest, export_model
    from train.finetune.model import build_classifier

    base = resolve_base("minilm")
    out = {}
    for method in ("full", "lora"):
        torch.manual_seed(0)
        model = build_classifier(base, labels, method=method)
        manifest = build_manifest(tenant="bench", labels=labels, base="minilm", method=method, data_hash="none",
                                  metrics={}, temperature=1.0, max_seq_len=128)
        out[method] = export_model(model, load_tokenizer(base), root / f"template-{method}", manifest)
    return out["full"], out["lora"]


def lora_tenant(template: Path, directory: Path, seed: int) -> Path:
    """A copy of the LoRA template with random (trained-looking) adapter matrices and head."""
    import torch
    from safetensors.torch import load_file, save_file

    shutil.copytree(template, directory)
    path = directory / "adapter_model.safetensors"
    generator = torch.Generator().manual_seed(seed)
    weights = {k: torch.randn(v.shape, generator=generator) * 0.02 for k, v in load_file(str(path)).items()}
    save_file(weights, str(path))
    return directory


def register_tenants(reg, full_template: Path, lora_template: Path, count: int, work: Path) -> dict:
    from tests.serve_helpers import register

    ids = {"lora": [], "full": []}
    for i in range(count):
        tenant = f"lora-{i:03d}"
        version = register(reg, tenant, lora_tenant(lora_template, work / "lora-exports" / tenant, seed=i))
        ids["lora"].append(f"{tenant}:{version}")
        tenant = f"full-{i:03d}"
        ids["full"].append(f"{tenant}:{register(reg, tenant, full_template)}")
        if (i + 1) % 10 == 0:
            log(f"registered {i + 1}/{count} LoRA and full tenants")
    return ids


# -- the replica outside Ray ------------------------------------------------------------------------

class TimedRegistry:
    """The registry, remembering how long the last ``download`` (copy + checksum) took."""

    def __init__(self, reg):
        self.reg, self.last_download_s = reg, 0.0

    def download(self, *args, **kwargs):
        started = time.perf_counter()
        try:
            return self.reg.download(*args, **kwargs)
        finally:
            self.last_download_s = time.perf_counter() - started


class Replica:
    """What ``TenantModel._load_sync`` reads from ``self``: registry, loader and cache directory."""

    def __init__(self, reg, cache_dir: Path):
        from serve._loader import ModelLoader
        from serve._model import TenantModel, _warm_imports

        _warm_imports()  # as TenantModel.__init__ does
        self.registry = TimedRegistry(reg)
        self.loader = ModelLoader(device="cpu")
        self.cache_dir = cache_dir
        self._load_sync = TenantModel.func_or_class._load_sync

    def load(self, model_id: str) -> tuple[object, float, float]:
        """(model, seconds for the whole load, seconds of it spent downloading and verifying)."""
        from serve._model import split_model_id

        tenant, version = split_model_id(model_id)
        started = time.perf_counter()
        model = self._load_sync(self, tenant, version, model_id)
        return model, time.perf_counter() - started, self.registry.last_download_s


class _NoMetric:
    def __getattr__(self, name):
        return lambda *args, **kwargs: None


def multiplexed_lru(load, max_models: int):
    """Ray Serve's ``_ModelMultiplexWrapper`` (the LRU behind ``@serve.multiplexed``) outside a replica.

    It reads the replica context only for names, so a stand-in is given while it is built; its Ray
    metrics are replaced by no-ops (recording one would start a whole local Ray in this process)."""
    from ray.serve import multiplex

    original = multiplex._get_internal_replica_context
    multiplex._get_internal_replica_context = lambda: SimpleNamespace(
        app_name="attune", deployment="TenantModel", replica_id=None)
    try:
        cache = multiplex._ModelMultiplexWrapper(load, None, max_models)
    finally:
        multiplex._get_internal_replica_context = original
    for name, value in list(vars(cache).items()):
        if type(value).__module__.startswith(("ray.serve.metrics", "ray.util.metrics")):
            setattr(cache, name, _NoMetric())
    for task in cache.metrics_pusher._async_tasks.values():  # no controller to tell which models are here
        task.cancel()
    cache.metrics_pusher.stop_tasks()
    return cache


# -- measurements -----------------------------------------------------------------------------------

def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def param_bytes(model) -> int:
    """Bytes of the parameters a loaded tenant holds for itself (LoRA: its adapter and head only)."""
    def size(params):
        return sum(p.numel() * p.element_size() for p in params)

    if hasattr(model, "base"):
        own = [p for n, p in model.base.encoder.named_parameters() if f".{model.model_id}." in n]
        return size(own) + size(model.head.parameters())
    return size(model.model.parameters())


def residency(replica: Replica, model_ids: list[str], before: dict) -> dict:
    """Load every id (all stay resident), then the RSS growth and load times; releases them after."""
    models, totals, downloads = [], [], []
    for model_id in model_ids:
        model, total_s, download_s = replica.load(model_id)
        models.append(model)
        totals.append(total_s * 1000)
        downloads.append(download_s * 1000)
    # every resident tenant answers (which also pages in weights that loading only mapped), then measure
    answers = [model.predict([TEXT])[0] for model in models]
    after = memory()
    grown = after["VmRSS"] - before["VmRSS"]
    result = {"tenants": len(models), "rss_growth_mib": grown / MIB, "mib_per_tenant": grown / MIB / len(models),
              "param_mib_per_tenant": statistics.mean(param_bytes(m) for m in models) / MIB,
              "anon_growth_mib": (after["RssAnon"] - before["RssAnon"]) / MIB,
              "file_growth_mib": (after["RssFile"] - before["RssFile"]) / MIB,
              "load_ms": totals, "download_ms": downloads,
              "load_p50_ms": statistics.median(totals), "load_p99_ms": percentile(totals, 0.99),
              "loader_p50_ms": statistics.median(t - d for t, d in zip(totals, downloads)),
              "distinct_answers": len({json.dumps(a["scores"], sort_keys=True) for a in answers})}
    for model in models:
        model.release()
    del models
    return result


async def zipf_run(replica: Replica, model_ids: list[str], ranks: np.ndarray, cache_size: int) -> dict:
    async def load(model_id: str):
        model, _, _ = await asyncio.to_thread(replica.load, model_id)
        return model

    cache = multiplexed_lru(load, cache_size)
    latencies, hits = [], []
    for rank in ranks:
        model_id = model_ids[int(rank)]
        hits.append(model_id in cache.models)
        started = time.perf_counter()
        model = await cache.load_model(model_id)
        await asyncio.to_thread(model.predict, [TEXT])
        latencies.append((time.perf_counter() - started) * 1000)
    await cache.shutdown()  # unloads (and releases) what is left, as a replica does when it stops
    miss = [lat for lat, hit in zip(latencies, hits) if not hit]
    hit = [lat for lat, was_hit in zip(latencies, hits) if was_hit]
    return {"requests": len(latencies), "cache_size": cache_size, "hit_rate": sum(hits) / len(hits),
            "p50_ms": statistics.median(latencies), "p99_ms": percentile(latencies, 0.99),
            "hit_p50_ms": statistics.median(hit) if hit else None,
            "miss_p50_ms": statistics.median(miss) if miss else None}


def zipf_ranks(tenants: int, requests: int, s: float, seed: int = 0) -> np.ndarray:
    weights = np.arange(1, tenants + 1, dtype=float) ** -s
    return np.random.default_rng(seed).choice(tenants, size=requests, p=weights / weights.sum())


# -- report -----------------------------------------------------------------------------------------

def table(res: dict) -> list[str]:
    lines = [f"{'tenants':<34} {'RSS MiB/tenant':>14} {'param MiB':>9} {'cold p50 ms':>11} {'cold p99 ms':>11} "
             f"{'loader p50':>10} {'zipf hit':>8} {'zipf p50 ms':>11} {'zipf p99 ms':>11}"]
    for kind, name in (("lora", "LoRA r=8 on shared base"), ("full", "full model (baseline)")):
        mem, zipf = res["resident"][kind], res["zipf"][kind]
        lines.append(f"{name:<34} {mem['mib_per_tenant']:>14.2f} {mem['param_mib_per_tenant']:>9.2f} "
                     f"{mem['load_p50_ms']:>11.1f} "
                     f"{mem['load_p99_ms']:>11.1f} {mem['loader_p50_ms']:>10.1f} {zipf['hit_rate']:>8.3f} "
                     f"{zipf['p50_ms']:>11.1f} {zipf['p99_ms']:>11.1f}")
    return lines


def report(res: dict, args) -> list[str]:
    lora, full, zipf = res["resident"]["lora"], res["resident"]["full"], res["zipf"]
    return table(res) + [
        f"shared MiniLM base (once per replica): load {res['base']['load_ms']:.0f} ms, RSS "
        f"+{res['base']['rss_mib']:.0f} MiB ({res['base']['param_mib']:.0f} MiB of parameters)",
        f"{lora['tenants']} LoRA tenants resident at once: +{lora['rss_growth_mib']:.0f} MiB above the base "
        f"(goal <= 1024 MiB), {lora['distinct_answers']} distinct answers; LoRA cold load p50 "
        f"{lora['load_p50_ms']:.0f} ms (goal <= 100 ms), of which loading {lora['loader_p50_ms']:.0f} ms",
        f"full tenants' weights are memory-mapped: RSS counts the pages serving touched (RssFile "
        f"+{full['file_growth_mib']:.0f} MiB, RssAnon +{full['anon_growth_mib']:.0f} MiB for {full['tenants']}); "
        "param MiB is what a tenant holds once every page is touched",
        f"Zipf s={args.zipf_s} over {args.tenants} tenants, {args.requests} requests, cache {args.cache_size} "
        f"(Ray Serve's LRU; the same request sequence for both kinds): miss p50 LoRA "
        f"{zipf['lora']['miss_p50_ms']:.0f} ms vs full {zipf['full']['miss_p50_ms']:.0f} ms; "
        f"torch threads {args.threads}, {os.cpu_count()} CPUs"]


def ratios(res: dict) -> str:
    lora, full, zipf = res["resident"]["lora"], res["resident"]["full"], res["zipf"]
    return (f"ratios LoRA/full: RSS per tenant {lora['mib_per_tenant'] / full['mib_per_tenant']:.3f}x, "
            f"params per tenant {lora['param_mib_per_tenant'] / full['param_mib_per_tenant']:.4f}x, "
            f"cold load p50 {lora['load_p50_ms'] / full['load_p50_ms']:.3f}x, "
            f"Zipf p99 {zipf['lora']['p99_ms'] / zipf['full']['p99_ms']:.3f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tenants", type=int, default=50, help="LoRA tenants, and full tenants for Zipf")
    parser.add_argument("--full-resident", type=int, default=8, help="full tenants held at once for memory")
    parser.add_argument("--cache-size", type=int, default=8, help="max_num_models_per_replica for Zipf")
    parser.add_argument("--requests", type=int, default=500, help="requests per Zipf run")
    parser.add_argument("--zipf-s", type=float, default=1.1)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args()
    if not 1 <= args.full_resident <= args.tenants:
        parser.error(f"--full-resident must be between 1 and --tenants ({args.tenants})")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # as on a replica (cluster's worker env)
    import torch
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    torch.set_num_threads(args.threads)
    from tests.registry_helpers import sqlite_registry
    from tests.serve_helpers import LABELS

    res: dict = {"args": {k: str(v) for k, v in vars(args).items()}, "resident": {}, "zipf": {}}
    with tempfile.TemporaryDirectory(prefix="attune-density-") as tmp:
        work = Path(tmp)
        full_template, lora_template = make_exports(work, LABELS)
        reg = sqlite_registry(work / "store")
        ids = register_tenants(reg, full_template, lora_template, args.tenants, work)
        replica = Replica(reg, work / "replica-cache")

        start = memory()
        started = time.perf_counter()
        base = replica.loader.base("minilm")
        load_ms = (time.perf_counter() - started) * 1000
        with torch.no_grad():  # page in the weights a request touches (embeddings: only the rows it uses)
            base.encoder(**base.tokenizer([TEXT], return_tensors="pt"))
        res["base"] = {"load_ms": load_ms,
                       "rss_mib": (memory()["VmRSS"] - start["VmRSS"]) / MIB,
                       "param_mib": sum(p.numel() * p.element_size() for p in base.encoder.parameters()) / MIB}
        log(f"shared base loaded in {res['base']['load_ms']:.0f} ms")
        res["resident"]["lora"] = residency(replica, ids["lora"], memory())
        log("LoRA residency measured")
        res["resident"]["full"] = residency(replica, ids["full"][:args.full_resident], memory())
        log("full residency measured")
        ranks = zipf_ranks(args.tenants, args.requests, args.zipf_s)
        for kind in ("lora", "full"):
            res["zipf"][kind] = asyncio.run(zipf_run(replica, ids[kind], ranks, args.cache_size))
            log(f"Zipf over {kind} tenants done")

    for line in report(res, args):
        print(line)
    if args.json:
        args.json.write_text(json.dumps(res, indent=2))
    print(ratios(res))


if __name__ == "__main__":
    main()
