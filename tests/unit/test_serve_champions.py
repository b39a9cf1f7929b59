"""A fleet's champions: one registry query per refresh for every tenant, each version read once, the
rest looked up alone; promotions followed within the refresh time; an outage serves the last known."""
from __future__ import annotations

import asyncio

import pytest

from registry import TenantNotFoundError
from serve._champions import ChampionDirectory
from serve._errors import UnknownTenantError


class Clock:
    now = 100.0

    def __call__(self) -> float:
        return self.now


class Info:
    def __init__(self, tenant, version):
        self.tenant, self.version = tenant, version


class FakeRegistry:
    """``champion_versions`` (one query for all), ``get_version`` and ``champion`` (one tenant), counted."""

    def __init__(self, champions: dict):
        self.champions_map, self.calls, self.down = champions, [], False

    def champion_versions(self):
        self.calls.append("all")
        if self.down:
            raise OSError("connection refused")
        return dict(self.champions_map)

    def get_version(self, tenant, version):
        self.calls.append(("version", tenant, version))
        return Info(tenant, version)

    def champion(self, tenant):
        self.calls.append(("one", tenant))
        if tenant not in self.champions_map:
            raise TenantNotFoundError(f"tenant {tenant!r} has no registered model")
        return Info(tenant, self.champions_map[tenant])


def test_a_thousand_tenants_cost_one_query_per_refresh_and_one_read_per_version():
    clock, registry = Clock(), FakeRegistry({f"t{i}": "1" for i in range(1000)})
    directory = ChampionDirectory(registry, ttl_s=5.0, clock=clock)

    async def go():
        for _ in range(3):
            for i in range(1000):
                assert (await directory.get(f"t{i}")).version == "1"

    asyncio.run(go())
    assert registry.calls.count("all") == 1
    kinds = [c[0] for c in registry.calls if c != "all"]
    assert kinds.count("version") == 1000 and "one" not in kinds


def test_a_promotion_is_followed_within_the_refresh_time_and_an_outage_serves_the_last_champions():
    clock, registry = Clock(), FakeRegistry({"john": "1"})
    directory = ChampionDirectory(registry, ttl_s=5.0, clock=clock)

    async def get(tenant):
        value = await directory.get(tenant)
        await asyncio.sleep(0.01)  # let a background refresh finish
        return value

    async def go():
        assert (await get("john")).version == "1"
        registry.champions_map["john"] = "2"
        clock.now += 4.9
        assert (await get("john")).version == "1"  # within the refresh time: the snapshot still holds v1
        clock.now += 0.2
        await get("john")  # stale: this request starts the refresh in the background
        assert (await get("john")).version == "2"
        registry.down = True
        clock.now += 6
        await get("john")
        assert (await get("john")).version == "2"  # the registry is down: the last snapshot serves
        with pytest.raises(UnknownTenantError):
            await directory.get("ghost")  # not in the snapshot: looked up alone, and unknown

    asyncio.run(go())


def test_a_registry_down_at_the_first_snapshot_answers_503_without_the_stores_error():
    from serve._errors import RegistryUnavailableError

    registry = FakeRegistry({"john": "1"})
    registry.down = True
    directory = ChampionDirectory(registry, ttl_s=5.0, clock=Clock())
    with pytest.raises(RegistryUnavailableError) as err:
        asyncio.run(directory.get("john"))
    assert (err.value.http_status, err.value.code, err.value.headers()["retry-after"]) == (
        503, "registry_unavailable", "5")
    assert "connection refused" not in str(err.value.body())


def test_an_erased_tenant_leaves_the_directory_and_its_re_creation_is_read_again():
    """Erased: the next snapshot lacks the tenant, the replica is told (it drops the models) and the
    version details go; re-created, its version 1 is read from the registry again, never reused."""
    clock, registry = Clock(), FakeRegistry({"acme": "1", "john": "1"})
    snapshots = []
    directory = ChampionDirectory(registry, ttl_s=5.0, clock=clock, on_snapshot=snapshots.append)

    async def refresh():
        clock.now += 5.1
        await directory.get("john")
        await asyncio.sleep(0.01)

    async def go():
        first = await directory.get("acme")
        del registry.champions_map["acme"]
        await refresh()
        assert snapshots[-1] == {"john": "1"} and ("acme", "1") not in directory.infos
        with pytest.raises(UnknownTenantError):
            await directory.get("acme")
        registry.champions_map["acme"] = "1"
        await refresh()
        again = await directory.get("acme")
        assert again is not first and again.version == "1"

    asyncio.run(go())
    assert registry.calls.count(("version", "acme", "1")) == 2


def test_made_up_tenants_cannot_grow_the_lookup_cache_without_end():
    """An admin key may ask for any tenant id: each unknown one is a cached 404, in a bounded cache."""
    from serve._champions import ChampionCache

    registry = FakeRegistry({"john": "1"})
    cache = ChampionCache(registry.champion, ttl_s=60.0, clock=Clock(), max_entries=100)
    for i in range(1000):
        with pytest.raises(UnknownTenantError):
            cache.get(f"ghost-{i}")
    assert cache.get("john").version == "1"
    assert len(cache._entries) == 100 and cache.fresh("john")
