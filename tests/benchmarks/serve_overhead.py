"""Latency and throughput of attune's serving path vs a bare FastAPI + transformers server, same model.

    .venv/bin/python -m tests.benchmarks.serve_overhead [--rounds 3] [--sequential 200] [--clients 4]
        [--per-client 50] [--threads 1] [--insecure-no-auth] [--config FILE] [--json PATH]

attune: the real Serve application (the Endpoint deployment; the default serve config, or
``--config FILE`` as ``attune serve up --config`` takes it) on an
embedded local Ray, HTTP on 127.0.0.1, one tenant whose champion is a full MiniLM classifier
(all-MiniLM-L6-v2 with an untrained head, exported as ``attune finetune`` exports it and registered
in a temporary SQLite registry), called with an API key (auth on, unless --insecure-no-auth).
baseline: ``tests.benchmarks._bare_server`` (uvicorn, one process) on the same exported directory.

Both sides run torch with the same number of intra-op threads: ``OMP_NUM_THREADS=--threads`` is set
before Ray starts (Ray keeps it for the replica; the benchmark checks the replica's environment) and
the baseline calls ``torch.set_num_threads(--threads)``. Before measuring, both answer one text and
their scores must agree. Each round measures, alternating which side goes first:
  sequential  one client, --sequential requests one after another (latency);
  concurrent  --clients threads, --per-client requests each (throughput = requests / wall time).
Every request is ``{"texts": [one headline]}``, the same headlines in the same order on both sides.
The table shows medians over rounds; the last line is the ratio against the baseline.

Serve's own hop, in the same run: each round also sends --sequential requests with the same body
(``{"texts": [one headline]}``) to a trivial FastAPI deployment on the same Serve instance
(``/floor``, a second app that only counts the texts: no model, no auth) and to the bare server's
``POST /echo``, which does the same. Their p50 difference is what any Serve application pays on this
machine for such a request (HTTP proxy to replica, the body included); the rest of the added p50 is
attune's own per-request work.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
TENANT = "bench"


def headlines(count: int = 400) -> list[str]:
    """Real financial headlines (the newsdesk tweets) when the shared data is present, else the demo's."""
    from train._demo_data import default_newsdesk_source, demo_rows, newsdesk_rows

    source = default_newsdesk_source()
    rows = newsdesk_rows(source) if source else demo_rows()[0]
    return [row["text"] for row in rows[:count]]


def minilm_export(directory: Path, labels: list[str]) -> Path:
    """A full MiniLM classifier in the export format (no training: the head keeps its seeded init)."""
    import torch

    from train._base import load_tokenizer, resolve_base
    from train.finetune.export import build_manifest, export_model
    from train.finetune.model import build_classifier

    torch.manual_seed(0)
    base = resolve_base("minilm")
    model = build_classifier(base, labels, method="full")
    manifest = build_manifest(tenant=TENANT, labels=labels, base="minilm", method="full", data_hash="none",
                              metrics={}, temperature=1.0, max_seq_len=128)
    return export_model(model, load_tokenizer(base), directory, manifest)


def start_attune(work: Path, model_dir: Path, threads: int, insecure: bool,
                 config_file: Path | None = None) -> tuple[str, dict, dict]:
    """Register the export, deploy the app on a fresh local Ray; returns (url, request headers, model config)."""
    from cluster import get_settings, init_ray
    from serve._app import deploy, wait_ready
    from serve._config import AppSpec, load_config
    from serve._keys import KeyStore
    from tests.registry_helpers import sqlite_registry
    from tests.serve_helpers import free_port, register

    reg = sqlite_registry(work / "store")
    register(reg, TENANT, model_dir)
    store = None if insecure else KeyStore(f"sqlite:///{work / 'keys.db'}")
    headers = {} if insecure else {"Authorization": f"Bearer {store.create(TENANT)['key']}"}
    os.environ["OMP_NUM_THREADS"] = str(threads)  # inherited by Ray's workers, which then keep it
    settings = get_settings(home=str(work / "home"), ray_num_cpus=max(2, os.cpu_count() or 2))
    init_ray(settings)
    config = load_config(config_file)
    if config.cache_dir is None:
        config = config.model_copy(update={"cache_dir": str(work / "replica-cache")})
    spec = AppSpec(config=config, tracking_uri=reg.tracking_uri,
                   artifact_root=reg.artifact_root, keys_url=None if insecure else store.url,
                   refresh_s=settings.serve_refresh_s, keys_refresh_s=settings.serve_keys_refresh_s,
                   insecure_no_auth=insecure)
    url = deploy(spec, host="127.0.0.1", port=free_port())
    if not wait_ready(url, 300):
        raise SystemExit(f"attune did not become ready at {url}/readyz")
    return url, headers, {**config.model.model_dump(), "access_log": config.access_log}


def process_env(pid: int) -> dict:
    return dict(item.split("=", 1) for item in Path(f"/proc/{pid}/environ").read_text().split("\0") if "=" in item)


def replica_threads() -> str:
    """OMP_NUM_THREADS in the endpoint replica's environment (what its torch thread pool follows)."""
    from ray import serve as ray_serve

    pid = ray_serve.get_deployment_handle("Endpoint", app_name="attune").stats.remote().result()["pid"]
    return process_env(pid).get("OMP_NUM_THREADS", "unset")


def serve_flags() -> dict:
    """The ``RAY_SERVE_*`` variables each Serve process of the app sees (controller, proxy, replicas)."""
    import ray
    from ray.util.state import list_actors

    out = {}
    for actor in list_actors(address=ray.get_runtime_context().gcs_address, filters=[("state", "=", "ALIVE")]):
        name = actor.class_name.removeprefix("ServeReplica:attune:")
        if actor.class_name in ("ServeController", "ProxyActor") or actor.class_name.startswith("ServeReplica:"):
            out[name] = {k: v for k, v in sorted(process_env(actor.pid).items()) if k.startswith("RAY_SERVE_")}
    return out


def start_baseline(model_dir: Path, threads: int, temperature: float) -> tuple[subprocess.Popen, str]:
    import httpx

    from tests.serve_helpers import free_port
    from tests.waiting import wait_for

    port = free_port()
    cmd = [sys.executable, "-m", "tests.benchmarks._bare_server", "--model-dir", str(model_dir), "--port", str(port),
           "--threads", str(threads), "--temperature", str(temperature)]
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1")
    proc = subprocess.Popen(cmd, cwd=REPO, env=env)
    url = f"http://127.0.0.1:{port}"

    def healthz():
        try:
            return httpx.get(f"{url}/healthz", timeout=2).json()
        except httpx.HTTPError:
            if proc.poll() is not None:
                raise SystemExit(f"the baseline server exited with {proc.returncode}") from None
            return None

    health = wait_for(healthz, 120, "the baseline server", interval_s=0.5, raise_on_timeout=False)
    if health is None:
        proc.kill()
        raise SystemExit("the baseline server did not start within 120 s")
    if health["torch_threads"] != threads:
        raise SystemExit(f"baseline runs {health['torch_threads']} torch threads, not {threads}")
    return proc, url


FLOOR_ROUTE = "/floor"


def start_floor_app() -> None:
    """A trivial FastAPI deployment beside attune's app (``/floor``): Serve's hop with nothing behind it."""
    from fastapi import FastAPI
    from pydantic import BaseModel
    from ray import serve as ray_serve

    class Body(BaseModel):  # the bare server's, defined here: the replica cannot import this package
        texts: list[str]

    app = FastAPI()

    def echo(body) -> dict:
        return {"texts": len(body.texts)}

    echo.__annotations__["body"] = Body  # a class, not the string this module's annotations would leave
    app.post("/")(echo)

    @ray_serve.deployment(num_replicas=1, ray_actor_options={"num_cpus": 0})
    @ray_serve.ingress(app)
    class Floor:
        pass

    ray_serve.run(Floor.bind(), name="floor", route_prefix=FLOOR_ROUTE, blocking=False)


def _answers(url: str) -> bool:
    import httpx

    try:
        return httpx.post(url, json={"texts": ["ready?"]}, timeout=5).status_code == 200
    except httpx.HTTPError:
        return False


class Side:
    """One server under test: where to POST, with which headers."""

    def __init__(self, name: str, url: str, headers: dict):
        self.name, self.url, self.headers = name, url, headers

    def post(self, client, text: str) -> dict:
        resp = client.post(self.url, json={"texts": [text]}, headers=self.headers)
        if resp.status_code != 200:
            raise SystemExit(f"{self.name}: HTTP {resp.status_code}: {resp.text[:500]}")
        return resp.json()


def sequential(side: Side, texts: list[str], count: int) -> dict:
    import httpx

    latencies = []
    with httpx.Client(timeout=60) as client:
        started = time.perf_counter()
        for i in range(count):
            tick = time.perf_counter()
            side.post(client, texts[i % len(texts)])
            latencies.append((time.perf_counter() - tick) * 1000)
        wall = time.perf_counter() - started
    return summarize(latencies, wall)


def concurrent(side: Side, texts: list[str], clients: int, per_client: int) -> dict:
    import httpx

    latencies: list[float] = []
    errors: list[BaseException] = []
    start = threading.Barrier(clients + 1)

    def client_loop(offset: int) -> None:
        with httpx.Client(timeout=60) as client:
            start.wait()
            try:
                for i in range(per_client):
                    tick = time.perf_counter()
                    side.post(client, texts[(offset + i) % len(texts)])
                    latencies.append((time.perf_counter() - tick) * 1000)
            except BaseException as exc:  # reported by the main thread
                errors.append(exc)

    threads = [threading.Thread(target=client_loop, args=(c * per_client,)) for c in range(clients)]
    for thread in threads:
        thread.start()
    start.wait()
    started = time.perf_counter()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - started
    if errors:
        raise SystemExit(f"{side.name}: {errors[0]}")
    return summarize(latencies, wall)


def summarize(latencies: list[float], wall_s: float) -> dict:
    ordered = sorted(latencies)
    return {"requests": len(ordered), "p50_ms": statistics.median(ordered),
            "p99_ms": ordered[min(len(ordered) - 1, int(round(0.99 * (len(ordered) - 1))))],
            "req_per_s": len(ordered) / wall_s, "wall_s": wall_s}


def check_same_answers(sides: list[Side], text: str) -> None:
    import httpx

    with httpx.Client(timeout=60) as client:
        answers = [side.post(client, text)["predictions"][0] for side in sides]
    first, second = answers
    same = first["label"] == second["label"] and all(
        abs(first["scores"][k] - second["scores"][k]) < 1e-4 for k in first["scores"])
    if not same:
        raise SystemExit(f"the two servers disagree, so they are not doing the same work: {answers}")


def median_of(rounds: list[dict], key: str) -> float:
    return statistics.median(r[key] for r in rounds)


def table(results: dict) -> list[str]:
    lines = [f"{'path':<40} {'seq p50 ms':>10} {'seq p99 ms':>10} {'seq req/s':>9} "
             f"{'conc p50 ms':>11} {'conc p99 ms':>11} {'conc req/s':>10}"]
    for name, res in results.items():
        seq, conc = res["sequential"], res["concurrent"]
        lines.append(f"{name:<40} {median_of(seq, 'p50_ms'):>10.2f} {median_of(seq, 'p99_ms'):>10.2f} "
                     f"{median_of(seq, 'req_per_s'):>9.1f} {median_of(conc, 'p50_ms'):>11.2f} "
                     f"{median_of(conc, 'p99_ms'):>11.2f} {median_of(conc, 'req_per_s'):>10.1f}")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--sequential", type=int, default=200, help="requests per sequential run")
    parser.add_argument("--clients", type=int, default=4, help="concurrent client threads")
    parser.add_argument("--per-client", type=int, default=50, help="requests per concurrent client")
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads on both sides")
    parser.add_argument("--insecure-no-auth", action="store_true", help="attune without API keys")
    parser.add_argument("--config", type=Path, default=None, help="serve config YAML (default: every default)")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    import ray

    from cluster import shutdown_ray
    from serve._app import teardown
    from tests.serve_helpers import LABELS, TEMPERATURE
    from tests.waiting import wait_for

    texts = headlines()
    with tempfile.TemporaryDirectory(prefix="attune-serve-bench-") as tmp:
        work = Path(tmp)
        model_dir = minilm_export(work / "export", LABELS)
        baseline_proc = None
        try:
            url, headers, model_cfg = start_attune(work, model_dir, args.threads, args.insecure_no_auth, args.config)
            attune = Side(f"attune (Serve, HTTP{', no auth' if args.insecure_no_auth else ', key'})",
                          f"{url}/v1/tenants/{TENANT}/predict", headers)
            baseline_proc, base_url = start_baseline(model_dir, args.threads, TEMPERATURE)
            baseline = Side("baseline (bare FastAPI + transformers)", f"{base_url}/predict", {})
            sides = [attune, baseline]
            threads_seen = replica_threads()
            if threads_seen != str(args.threads):
                raise SystemExit(f"the attune replica has OMP_NUM_THREADS={threads_seen}, not {args.threads}")
            flags = serve_flags()
            check_same_answers(sides, texts[0])
            start_floor_app()
            floor_sides = {"serve": Side("trivial Serve app", f"{url}{FLOOR_ROUTE}/", {}),
                           "bare": Side("bare /echo", f"{base_url}/echo", {})}
            wait_for(lambda: _answers(floor_sides["serve"].url), 120, "the trivial Serve app")
            for side in sides:  # warm both (attune loads the tenant's model on its first request)
                sequential(side, texts, args.warmup)
            for side in floor_sides.values():
                sequential(side, texts, args.warmup)
            results = {side.name: {"sequential": [], "concurrent": []} for side in sides}
            floor = {name: [] for name in floor_sides}
            for r in range(args.rounds):
                order = sides if r % 2 == 0 else sides[::-1]
                for side in order:
                    results[side.name]["sequential"].append(sequential(side, texts, args.sequential))
                for side in order:
                    results[side.name]["concurrent"].append(
                        concurrent(side, texts, args.clients, args.per_client))
                for name in (floor_sides if r % 2 == 0 else list(floor_sides)[::-1]):
                    floor[name].append(sequential(floor_sides[name], texts, args.sequential))
                print(f"round {r + 1}/{args.rounds} done", file=sys.stderr, flush=True)
        finally:
            if baseline_proc is not None:
                baseline_proc.terminate()
                baseline_proc.wait(timeout=30)
            if ray.is_initialized():
                teardown()
                shutdown_ray()

    att, base = results[attune.name], results[baseline.name]
    added_p50 = median_of(att["sequential"], "p50_ms") - median_of(base["sequential"], "p50_ms")
    ratio = median_of(att["concurrent"], "req_per_s") / median_of(base["concurrent"], "req_per_s")
    hop = median_of(floor["serve"], "p50_ms") - median_of(floor["bare"], "p50_ms")
    for line in table(results):
        print(line)
    print(f"same body to a handler without a model, p50 (medians over rounds): Serve app "
          f"{median_of(floor['serve'], 'p50_ms'):.2f} ms, bare /echo {median_of(floor['bare'], 'p50_ms'):.2f} ms: "
          f"Serve's own hop {hop:+.2f} ms; "
          f"attune's own work above it {added_p50 - hop:+.2f} ms")
    print(f"model: all-MiniLM-L6-v2 classifier (full), 1 text per request; torch threads {args.threads} on both "
          f"sides; {args.rounds} rounds x ({args.sequential} sequential + {args.clients} clients x "
          f"{args.per_client}); medians over rounds; {os.cpu_count()} CPUs")
    print(f"attune serve config: {args.config or 'defaults'} (model.max_batch_size {model_cfg['max_batch_size']}, "
          f"model.batch_wait_timeout_s {model_cfg['batch_wait_timeout_s']}, model.num_cpus {model_cfg['num_cpus']}, "
          f"access_log {model_cfg['access_log']})")
    for process, env in flags.items():
        print(f"  {process}: {' '.join(f'{k}={v}' for k, v in env.items()) or 'no RAY_SERVE_* variables'}")
    if args.json:
        args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "results": results,
                                         "attune_model_config": model_cfg, "serve_flags": flags,
                                         "added_p50_ms": added_p50, "floor": floor,
                                         "serve_hop_p50_ms": hop, "attune_work_p50_ms": added_p50 - hop,
                                         "throughput_ratio": ratio}, indent=2))
    print(f"attune vs baseline: added p50 {added_p50:+.2f} ms (goal <= 5 ms); "
          f"throughput ratio attune/baseline {ratio:.3f}x (goal >= 0.8x)")


if __name__ == "__main__":
    main()
