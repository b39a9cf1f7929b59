"""A fleet on one endpoint, over real HTTP on 127.0.0.1: mixed-tenant batches under a tiny adapter cache
never mix weights, a full queue answers 429 with Retry-After, and the endpoint scales out under a
burst and back in after it, without a failed request.

Tenants are LoRA exports on the tiny base with random adapters and heads (so every tenant answers
differently), registered in a SQLite registry; load loops are bounded in count and time.
"""
from __future__ import annotations

import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from serve._app import replica_stats
from tests.registry_helpers import sqlite_registry
from tests.serve_helpers import TEMPERATURE, app_spec, random_lora_export, register, running_app
from tests.waiting import wait_for

TEXTS = ["gold is up 150% in after-hours trading", "oil slumps 4% after OPEC meeting", "Barrick Gold names a CFO",
         "bullion holds steady", "the Nasdaq closes higher as chip stocks rally"]
NUM_TENANTS = 12


@pytest.fixture(scope="module")
def fleet(ray_session, tiny_base, tmp_path_factory):
    """Twelve LoRA tenants (two ranks, two label sets), registered as champions, with each tenant's
    own predictions for every text, computed alone by training's predictor."""
    from train import Predictor

    root = tmp_path_factory.mktemp("serve-fleet")
    reg = sqlite_registry(root / "store")
    expected, versions = {}, {}
    for i in range(NUM_TENANTS):
        labels = ("bearish", "bullish", "neutral") if i % 2 else ("negative", "positive")
        export = random_lora_export(tiny_base, root / "exports" / f"t{i}", seed=100 + i, labels=labels,
                                    rank=4 if i % 3 else 8)
        tenant = f"t{i}"
        versions[tenant] = register(reg, tenant, export)
        predictor = Predictor(export, base_dir=tiny_base, temperature=TEMPERATURE)
        expected[tenant] = {text: predictor.predict([text])[0] for text in TEXTS}
    return {"reg": reg, "root": root, "expected": expected, "versions": versions}


def _post(client: httpx.Client, tenant: str, texts: list[str]) -> httpx.Response:
    return client.post(f"/v1/tenants/{tenant}/predict", json={"texts": texts})


def test_a_tiny_cache_under_concurrent_load_never_mixes_weights(fleet):
    """Eight clients, mixed tenants, adapters evicted and reloaded all the while (the cache holds about
    four of the twelve): every answer is that tenant's own, to within 1e-5."""
    spec = app_spec(fleet["reg"], fleet["root"] / "tiny-cache", adapter_cache_mib=0.05, max_batch_size=8,
                    batch_wait_timeout_s=0.003)
    rng = random.Random(0)
    plan = [[(f"t{rng.randrange(NUM_TENANTS)}", rng.sample(TEXTS, rng.randint(1, 3))) for _ in range(25)]
            for _ in range(8)]
    wrong, failed = [], []

    def client_loop(url: str, requests: list) -> None:
        with httpx.Client(base_url=url, timeout=60) as client:
            for tenant, texts in requests:
                resp = _post(client, tenant, texts)
                if resp.status_code != 200:
                    failed.append((tenant, resp.status_code, resp.text[:200]))
                    continue
                if resp.headers["x-attune-model-version"] != fleet["versions"][tenant]:
                    wrong.append((tenant, "version", resp.headers["x-attune-model-version"]))
                for text, got in zip(texts, resp.json()["predictions"]):
                    want = fleet["expected"][tenant][text]
                    if got["label"] != want["label"] or got["scores"] != pytest.approx(want["scores"], abs=1e-5):
                        wrong.append((tenant, text, got, want))

    with running_app(spec) as client:
        url = str(client.base_url)
        threads = [threading.Thread(target=client_loop, args=(url, requests)) for requests in plan]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=240)
        (stats,) = replica_stats()
    assert failed == [] and wrong == []
    assert sum(len(requests) for requests in plan) == 200
    assert stats["misses"] > NUM_TENANTS  # adapters were evicted and loaded again while others ran
    assert stats["adapter_bytes"] <= stats["adapter_budget_bytes"] < 0.06 * 2**20


def test_a_full_queue_answers_429_with_retry_after(fleet):
    """One request in the replica at a time and two waiting at the proxy: a burst of twelve slow
    requests (a MiniLM tenant, 32 long texts each) gets 429s with Retry-After for the rest, and every
    request let in is answered."""
    from train import resolve_base

    export = random_lora_export(resolve_base("minilm"), fleet["root"] / "exports" / "big", seed=7, max_seq_len=128)
    register(fleet["reg"], "big", export)
    spec = app_spec(fleet["reg"], fleet["root"] / "queue", max_batch_size=1, max_ongoing_requests=1,
                    max_queued_requests=2, queue_full_retry_after_s=3.0)
    texts = [" ".join(TEXTS * 4)] * 32
    with running_app(spec) as client:
        assert _post(client, "big", texts[:1]).status_code == 200  # loaded: the burst waits on inference only
        url = str(client.base_url)

        def one(_: int) -> httpx.Response:
            with httpx.Client(base_url=url, timeout=120) as own:
                return _post(own, "big", texts)

        with ThreadPoolExecutor(12) as pool:
            responses = list(pool.map(one, range(12)))
    statuses = sorted(r.status_code for r in responses)
    assert set(statuses) == {200, 429} and statuses.count(200) >= 2, statuses
    assert all(r.headers.get("retry-after") == "3" for r in responses if r.status_code == 429)


def test_the_endpoint_scales_out_under_a_burst_and_back_in_after_it(fleet):
    spec = app_spec(fleet["reg"], fleet["root"] / "autoscale", max_batch_size=4,
                    autoscaling={"min_replicas": 1, "max_replicas": 2, "target_ongoing_requests": 1,
                                 "upscale_delay_s": 0, "downscale_delay_s": 2, "look_back_period_s": 2})
    statuses: list[int] = []
    stop = threading.Event()
    deadline = time.monotonic() + 120

    def burst(url: str, seed: int) -> None:
        rng = random.Random(seed)
        with httpx.Client(base_url=url, timeout=60) as client:
            for _ in range(2000):
                if stop.is_set() or time.monotonic() > deadline:
                    return
                statuses.append(_post(client, f"t{rng.randrange(NUM_TENANTS)}", TEXTS[:2]).status_code)

    with running_app(spec) as client:
        url = str(client.base_url)
        threads = [threading.Thread(target=burst, args=(url, i)) for i in range(6)]
        for thread in threads:
            thread.start()
        try:
            serving = wait_for(lambda: _serving_replicas(2), 90, "a second replica serving requests", interval_s=1)
        finally:
            stop.set()
            for thread in threads:
                thread.join(timeout=60)
        assert len(serving) == 2 and all(r["served"] > 0 for r in serving)
        wait_for(lambda: len(replica_stats()) == 1, 90, "the endpoint back at one replica", interval_s=1)
        after = [_post(client, "t0", TEXTS[:1]).status_code for _ in range(5)]
    assert statuses and set(statuses) == {200}, sorted(set(statuses))
    assert after == [200] * 5


def _serving_replicas(count: int):
    stats = [r for r in replica_stats() if "error" not in r]
    return stats if len(stats) >= count and all(r["served"] > 0 for r in stats) else None
