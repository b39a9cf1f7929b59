"""A replica's models without Ray: scores as training's predictor gives them, LoRA tenants in one bank,
mixed-tenant batches, capacity by bytes, pinning, single-flight loads, back-off and load timeouts."""
from __future__ import annotations

import asyncio
import shutil
import time
from pathlib import Path

import numpy as np
import pytest

from serve._artifacts import softmax
from serve._backoff import LoadBackoff
from serve._batch import Request, run_batch
from serve._cache import ModelCache
from serve._errors import ModelUnavailableError
from tests.serve_helpers import LABELS, calibrated_top_score, constant_export, random_lora_export

TEXTS = ["gold is up 150% in after-hours trading", "oil slumps", "a much longer headline " * 5]


@pytest.fixture(scope="module")
def exports(tiny_base, tmp_path_factory):
    root = tmp_path_factory.mktemp("serve-exports")
    out = {(method, answer): constant_export(tiny_base, root / f"{method}-{answer}", answer, method)
           for method in ("full", "lora") for answer in LABELS}
    for seed in range(8):  # adapters that all matter, of two ranks and two label sets
        labels = ("bearish", "bullish", "neutral") if seed % 2 else tuple(LABELS)
        out[("random", seed)] = random_lora_export(tiny_base, root / f"random-{seed}", seed, labels,
                                                   rank=4 if seed % 3 else 8, max_seq_len=12 + seed)
    return out


class _Store:
    """The registry's download, from a dict of export folders; counts calls, can fail or stall."""

    def __init__(self, exports: dict[str, Path]):
        self.exports, self.calls, self.fail, self.delay_s = exports, [], set(), 0.0

    def __call__(self, tenant: str, version: str, dest: Path) -> Path:
        self.calls.append((tenant, version))
        time.sleep(self.delay_s)
        if tenant in self.fail:
            raise ModelUnavailableError(f"checksum mismatch for {tenant}")
        shutil.copytree(self.exports[f"{tenant}:{version}"], dest)
        return dest


def _cache(store, budget_bytes=2**30, **kw) -> ModelCache:
    kw.setdefault("max_full_models", 8)
    kw.setdefault("load_timeout_s", 30.0)
    kw.setdefault("backoff", LoadBackoff(0.5, 2.0))
    return ModelCache(store, adapter_budget_bytes=budget_bytes, **kw)


def _predict(cache, requests: list[tuple[str, str, list]], cross_tenant=True, temperature=1.7, slopes=None):
    """Acquire every (tenant, version, texts), run them as one batch, release; the predictions.
    ``slopes``: each request's temperature slope (default 0)."""
    slopes = slopes or [0.0] * len(requests)

    async def go():
        models = [await cache.acquire(t, v, "sum") for t, v, _ in requests]
        try:
            return run_batch([Request(m, texts, temperature, slope)
                              for m, (_, _, texts), slope in zip(models, requests, slopes)], cross_tenant)
        finally:
            for m in models:
                cache.release(m)
    return asyncio.run(go())


@pytest.mark.parametrize("method", ["full", "lora"])
def test_scores_match_training_predictor_with_the_registry_temperature(exports, tiny_base, method):
    from train import Predictor

    model_dir = exports[(method, "positive")]
    reference = Predictor(model_dir, base_dir=tiny_base, temperature=1.7).predict(TEXTS)
    [served] = _predict(_cache(_Store({"t:1": model_dir})), [("t", "1", TEXTS)])
    assert [p["label"] for p in served] == [p["label"] for p in reference] == ["positive"] * 3
    for ours, theirs in zip(served, reference):
        assert ours["scores"] == pytest.approx(theirs["scores"], abs=1e-5)
    assert served[0]["scores"]["positive"] == pytest.approx(calibrated_top_score(), abs=1e-4)


def test_temperature_flattens_scores(exports):
    cache = _cache(_Store({"a:1": exports[("full", "negative")]}))
    [[sharp]] = _predict(cache, [("a", "1", TEXTS[:1])], temperature=1.0)
    [[flat]] = _predict(cache, [("a", "1", TEXTS[:1])], temperature=4.0)
    assert sharp["label"] == flat["label"] == "negative"
    assert 0.5 < flat["scores"]["negative"] < sharp["scores"]["negative"]
    assert softmax(np.array([0.0, 0.0]), 2.0).tolist() == [0.5, 0.5]


def test_a_mixed_batch_gives_every_row_its_own_tenants_scores(exports, tiny_base):
    """Rows of eight tenants (two ranks, two label sets, different max_seq_len, their own temperature
    slopes) in one forward pass score as each tenant's own model does alone, through training's
    predictor and through the bank."""
    from train import Predictor

    store = _Store({f"t{s}:1": exports[("random", s)] for s in range(8)})
    cache = _cache(store)
    requests = [(f"t{s}", "1", [TEXTS[(s + i) % 3] for i in range(1 + s % 3)]) for s in range(8)]
    slopes = [-0.1 * (s % 4) for s in range(8)]
    mixed = _predict(cache, requests, slopes=slopes)
    alone = [_predict(cache, [request], slopes=[slope])[0] for request, slope in zip(requests, slopes)]
    per_tenant = _predict(cache, requests, cross_tenant=False, slopes=slopes)
    (bank,) = cache.banks.values()
    assert len(bank.used) == 8 and bank.rank == 8
    for (tenant, _, texts), ours, solo, separate, slope in zip(requests, mixed, alone, per_tenant, slopes):
        reference = Predictor(store.exports[f"{tenant}:1"], base_dir=tiny_base, temperature=1.7,
                              temperature_slope=slope).predict(texts)
        for a, b, c, d in zip(ours, solo, separate, reference):
            assert a["label"] == b["label"] == c["label"] == d["label"]
            for other in (b, c, d):
                assert a["scores"] == pytest.approx(other["scores"], abs=1e-5)


def test_lora_tenants_share_one_base_and_add_only_their_adapters(exports):
    cache = _cache(_Store({"john:1": exports[("lora", "positive")], "jane:1": exports[("lora", "negative")]}))
    _predict(cache, [("john", "1", TEXTS[:1])])
    (bank,) = cache.banks.values()
    base_bytes = sum(p.numel() * p.element_size() for p in bank.encoder.parameters())
    [[john], [jane]] = _predict(cache, [("john", "1", TEXTS[:1]), ("jane", "1", TEXTS[:1])])
    assert (john["label"], jane["label"]) == ("positive", "negative")
    assert len(cache.banks) == 1 and len(bank.used) == 2
    assert sum(p.numel() * p.element_size() for p in bank.encoder.parameters()) == base_bytes
    assert cache.stats()["adapter_bytes"] == 2 * bank.slot_bytes


def test_adapters_are_bounded_by_bytes_and_the_least_recently_used_idle_one_makes_room(exports):
    store = _Store({f"t{s}:1": exports[("random", s)] for s in range(8)})
    _predict(_cache(store), [("t0", "1", TEXTS[:1])])
    probe = _cache(store)
    _predict(probe, [(f"t{s}", "1", TEXTS[:1]) for s in range(8)])
    slot_bytes = next(iter(probe.banks.values())).slot_bytes
    cache = _cache(store, budget_bytes=3 * slot_bytes)
    for s in range(8):
        _predict(cache, [(f"t{s}", "1", TEXTS[:1])])
        assert cache.stats()["adapter_bytes"] <= 3 * slot_bytes
    assert sorted(m.tenant for m in cache.models.values()) == ["t5", "t6", "t7"]  # the three most recent


def test_a_pinned_adapter_is_never_evicted_a_load_waits_for_a_release(exports):
    store = _Store({f"t{s}:1": exports[("random", s)] for s in range(4)})
    probe = _cache(store)
    _predict(probe, [(f"t{s}", "1", TEXTS[:1]) for s in range(4)])
    slot_bytes = next(iter(probe.banks.values())).slot_bytes
    cache = _cache(store, budget_bytes=2 * slot_bytes)

    async def go():
        a = await cache.acquire("t0", "1", "sum")
        b = await cache.acquire("t1", "1", "sum")
        waiting = asyncio.ensure_future(cache.acquire("t2", "1", "sum"))
        await asyncio.sleep(0.5)
        assert not waiting.done() and {"t0", "t1"} == {m.tenant for m in cache.models.values()}
        before = [row["scores"] for row in run_batch([Request(a, TEXTS[:1], 1.0)])[0]]
        cache.release(b)  # t1 is idle now: it makes room
        c = await waiting
        after = [row["scores"] for row in run_batch([Request(a, TEXTS[:1], 1.0)])[0]]
        assert before == after and {"t0", "t2"} == {m.tenant for m in cache.models.values()}
        cache.release(a)
        cache.release(c)

    asyncio.run(go())


def test_a_load_that_cannot_get_room_in_time_is_503_with_retry_after(exports):
    store = _Store({f"t{s}:1": exports[("random", s)] for s in range(2)})
    probe = _cache(store)
    _predict(probe, [("t0", "1", TEXTS[:1]), ("t1", "1", TEXTS[:1])])
    cache = _cache(store, budget_bytes=next(iter(probe.banks.values())).slot_bytes, load_timeout_s=60.0)

    async def go():
        held = await cache.acquire("t0", "1", "sum")  # room for one: t0 takes it, however slow the machine
        cache.load_timeout_s = 1.0  # t1 then waits 1 s for room that never comes
        with pytest.raises(ModelUnavailableError, match="longer than 1s") as info:
            await cache.acquire("t1", "1", "sum")
        assert info.value.retry_after_s is not None and info.value.headers()["retry-after"] == "1"
        cache.release(held)

    asyncio.run(go())


def test_many_waiters_share_one_load_and_a_failing_model_is_tried_once_per_back_off(exports):
    store = _Store({"ok:1": exports[("lora", "positive")], "bad:1": exports[("lora", "negative")]})
    store.delay_s, store.fail = 0.3, {"bad"}
    cache = _cache(store)

    async def go():
        results = await asyncio.gather(*(cache.acquire(t, "1", "sum") for t in ["ok"] * 10 + ["bad"] * 10),
                                       return_exceptions=True)
        assert store.calls.count(("ok", "1")) == 1 and store.calls.count(("bad", "1")) == 1
        assert all(r.tenant == "ok" for r in results[:10])
        assert all(isinstance(r, ModelUnavailableError) and r.retry_after_s == 0.5 for r in results[10:])
        with pytest.raises(ModelUnavailableError, match="next attempt") as again:  # backing off: no new try
            await cache.acquire("bad", "1", "sum")
        assert store.calls.count(("bad", "1")) == 1 and 0 < again.value.retry_after_s <= 0.5
        for model in results[:10]:
            cache.release(model)

    asyncio.run(go())


def test_a_new_version_gets_its_own_slot_while_the_old_one_is_still_answering(exports):
    store = _Store({"john:1": exports[("lora", "positive")], "john:2": exports[("lora", "negative")]})
    cache = _cache(store)

    async def go():
        old = await cache.acquire("john", "1", "sum-one")
        new = await cache.acquire("john", "2", "sum-two")
        assert old.slot != new.slot
        [[a], [b]] = run_batch([Request(old, TEXTS[:1], 1.0), Request(new, TEXTS[:1], 1.0)])
        assert (a["label"], b["label"]) == ("positive", "negative")
        cache.release(old)
        cache.release(new)

    asyncio.run(go())


def test_unusable_directories_are_503(tmp_path, exports):
    (tmp_path / "empty").mkdir()
    broken = tmp_path / "half-pair"
    shutil.copytree(exports[("lora", "positive")], broken)
    from safetensors.torch import load_file, save_file

    path = broken / "adapter_model.safetensors"
    weights = load_file(str(path))
    save_file({k: v for k, v in weights.items() if k != next(k for k in weights if "lora_B" in k)}, str(path))
    nobase = tmp_path / "nobase"
    shutil.copytree(exports[("lora", "positive")], nobase)
    text = (nobase / "attune.json").read_text()
    (nobase / "attune.json").write_text(text.replace('"base": "', '"base": "/nope/'))
    store = _Store({"empty:1": tmp_path / "empty", "half:1": broken, "nobase:1": nobase,
                    "ok:1": exports[("lora", "negative")]})
    cache = _cache(store)
    for tenant, message in (("empty", "attune.json is missing"), ("half", "lora_A/lora_B pairs"),
                            ("nobase", "not available on this replica")):
        with pytest.raises(ModelUnavailableError, match=message):
            _predict(cache, [(tenant, "1", TEXTS[:1])])
    assert _predict(cache, [("ok", "1", TEXTS[:1])])[0][0]["label"] == "negative"
    (bank,) = cache.banks.values()
    assert len(bank.used) == 1  # the failed tenants left nothing behind


def test_a_model_evicted_before_its_waiter_ran_is_loaded_again_never_served_from_a_reused_slot(exports):
    """Between a load's end and its waiter's turn, another load may evict the new model (it is idle until
    pinned). The waiter must not pin the freed slot, which the next adapter fills: here the eviction
    happens right at the end of the first load, then another tenant takes the slot."""
    store = _Store({"pos:1": exports[("lora", "positive")], "neg:1": exports[("lora", "negative")]})
    evicted = []

    def evict_once(tenant, seconds, ok):
        if tenant == "pos" and not evicted:
            evicted.append(cache.models[next(k for k in cache.models if k.startswith("pos:"))])
            cache.evict(evicted[0])

    cache = _cache(store, on_load=evict_once)

    async def go():
        pos = await cache.acquire("pos", "1", "sum")
        neg = await cache.acquire("neg", "1", "sum")  # the first free slot: pos's, if pos still pointed at it
        [[a], [b]] = run_batch([Request(pos, TEXTS[:1], 1.0), Request(neg, TEXTS[:1], 1.0)])
        assert pos is not evicted[0] and pos.slot != neg.slot
        return a["label"], b["label"]

    assert asyncio.run(go()) == ("positive", "negative")
    assert store.calls.count(("pos", "1")) == 2  # loaded again after the eviction


@pytest.mark.parametrize("method", ["full", "lora"])
def test_a_recreated_tenant_never_gets_its_predecessors_model(exports, method):
    """An erased tenant id given to a new customer starts again at version 1 (MLflow numbers a
    re-created model from 1): the checksum in the model's identity makes it another model."""
    store = _Store({"acme:1": exports[(method, "positive")]})
    cache = _cache(store)

    async def label(checksum: str) -> str:
        model = await cache.acquire("acme", "1", checksum)
        try:
            return run_batch([Request(model, TEXTS[:1], 1.0)], True)[0][0]["label"]
        finally:
            cache.release(model)

    assert asyncio.run(label("9f" * 32)) == "positive"
    store.exports["acme:1"] = exports[(method, "negative")]  # acme erased; a new acme registered as v1
    assert asyncio.run(label("3c" * 32)) == "negative"
    assert store.calls == [("acme", "1"), ("acme", "1")]


def test_concurrent_loads_never_take_the_adapters_past_their_budget(exports):
    """Loads of different tenants at once, on a replica's first requests: each finds (or creates) its
    base's bank and checks for room in worker threads, then writes its slot. Racing, the first loads
    each created a bank of their own (a copy of the base the budget never counted), and two loads that
    each saw room for one more adapter both added theirs, past the budget."""
    store = _Store({f"t{s}:1": exports[("random", s)] for s in range(8)})
    probe = _cache(store)
    _predict(probe, [(f"t{s}", "1", TEXTS[:1]) for s in range(8)])
    budget = 2 * next(iter(probe.banks.values())).slot_bytes
    cache = _cache(store, budget_bytes=budget, load_timeout_s=20.0)
    seen = []

    async def one(tenant: str) -> None:
        model = await cache.acquire(tenant, "1", "sum")
        seen.append(cache.stats()["adapter_bytes"])
        await asyncio.sleep(0.01)
        cache.release(model)

    async def go():
        for _ in range(3):
            await asyncio.gather(*(one(f"t{s}") for s in range(8)))

    asyncio.run(go())
    assert len({id(m.bank) for m in cache.models.values()}) == len(cache.banks) == 1  # one base, one bank
    assert len(seen) == 24 and max(seen) <= budget
    assert cache.stats()["adapter_bytes"] <= budget and cache.misses > 8


def test_concurrent_full_loads_never_hold_more_models_than_allowed(exports):
    store = _Store({f"{answer}:1": exports[("full", answer)] for answer in LABELS})
    cache = _cache(store, max_full_models=1, load_timeout_s=20.0)
    counts = []

    async def one(tenant: str) -> None:
        model = await cache.acquire(tenant, "1", "sum")
        counts.append(sum(m.kind == "full" for m in cache.models.values()))
        cache.release(model)

    async def go():
        await asyncio.gather(*(one(answer) for answer in LABELS))

    asyncio.run(go())
    assert counts == [1] * len(LABELS)


def test_retain_drops_the_idle_models_no_champion_needs_and_keeps_pinned_ones(exports):
    store = _Store({"john:1": exports[("lora", "positive")], "john:2": exports[("lora", "negative")],
                    "acme:1": exports[("full", "positive")], "jane:1": exports[("lora", "negative")]})
    cache = _cache(store)

    async def go():
        loaded = {f"{t}:{v}": await cache.acquire(t, v, "sum") for t, v in
                  (("john", "1"), ("john", "2"), ("acme", "1"), ("jane", "1"))}
        for key in ("john:1", "acme:1", "jane:1"):
            cache.release(loaded[key])
        # john's champion is v2 (v1 was demoted), acme was erased, jane is unchanged; john v2 is in use
        assert cache.retain({"john": "2", "jane": "1"}) == ["john:1:sum", "acme:1:sum"]
        assert sorted(cache.models) == ["jane:1:sum", "john:2:sum"]
        assert cache.retain({"jane": "1"}) == []  # john v2 is pinned: it stays until its batch ran
        cache.release(loaded["john:2"])
        assert cache.retain({"jane": "1"}) == ["john:2:sum"]

    asyncio.run(go())
    (bank,) = cache.banks.values()
    assert len(bank.used) == 1 and cache.stats()["adapter_bytes"] == bank.slot_bytes
