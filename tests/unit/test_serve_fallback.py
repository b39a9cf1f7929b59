"""A champion that fails to load is answered by the tenant's previous version (without Ray): the real
model cache over a real SQLite registry and real exports, one of them a LoRA export whose base no
replica has (it registers and promotes, and the loader refuses it)."""
from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest

from serve._backoff import LoadBackoff
from serve._batch import Request, run_batch
from serve._cache import ModelCache
from serve._errors import ModelUnavailableError
from serve._fallback import LastGood, _before, short_reason
from tests.registry_helpers import sqlite_registry
from tests.serve_helpers import constant_export, register

TEXTS = ["gold is up 150% in after-hours trading"]


@pytest.fixture(scope="module")
def exports(tiny_base, tmp_path_factory):
    root = tmp_path_factory.mktemp("fallback-exports")
    out = {answer: constant_export(tiny_base, root / answer, answer) for answer in ("positive", "negative")}
    broken = constant_export(tiny_base, root / "broken", "negative", method="lora")
    manifest = broken / "attune.json"
    manifest.write_text(manifest.read_text().replace('"base": "', '"base": "/nope/'))
    out["broken"] = broken
    return out


class _Counting:
    """The registry, counting the reads the fallback makes."""

    def __init__(self, registry):
        self.registry, self.reads = registry, []

    def get_version(self, tenant, version):
        self.reads.append(("get_version", tenant, version))
        return self.registry.get_version(tenant, version)

    def show(self, tenant):
        self.reads.append(("show", tenant))
        return self.registry.show(tenant)


class _Replica:
    """One replica's model cache and fallback over ``registry``; ``ask`` serves one request as the
    endpoint does: acquire (with fallback), run the batch, record the success, release."""

    def __init__(self, registry, ttl_s: float = 60.0):
        self.registry, self.downloads = _Counting(registry), []
        self.models = ModelCache(self._download, adapter_budget_bytes=2**30, max_full_models=8,
                                 load_timeout_s=30.0, backoff=LoadBackoff(30.0, 60.0))
        self.fallback = LastGood(self.models, self.registry, ttl_s)

    def _download(self, tenant: str, version: str, dest: Path) -> Path:
        self.downloads.append((tenant, version))
        return self.registry.registry.download(tenant, version, dest)[0]

    async def ask(self, tenant: str) -> tuple[str, str, object]:
        """(label, version that answered, fallback note)."""
        served = await self.fallback.acquire(tenant, self.registry.registry.champion(tenant))
        try:
            [[row]] = run_batch([Request(served.model, TEXTS, served.info.temperature)])
            self.fallback.succeeded(tenant, served.info)
            return row["label"], served.info.version, served.note
        finally:
            self.models.release(served.model)

    def retain(self) -> list[str]:
        champions = self.registry.registry.champion_versions()
        return self.models.retain(champions, self.fallback.keep(champions))


def test_a_champion_that_fails_to_load_is_answered_by_the_last_version_served(exports, tmp_path, caplog):
    reg = sqlite_registry(tmp_path / "store")
    register(reg, "john", exports["positive"])
    replica = _Replica(reg)

    async def go():
        assert await replica.ask("john") == ("positive", "1", None)
        register(reg, "john", exports["broken"])  # v2: the loader refuses it
        with caplog.at_level(logging.WARNING, logger="attune.serve"):
            answers = await asyncio.gather(*(replica.ask("john") for _ in range(5)))
            answers.append(await replica.ask("john"))  # in the back-off: answered at once by v1 too
        return answers

    answers = asyncio.run(go())
    assert {(label, version) for label, version, _ in answers} == {("positive", "1")}
    notes = {note for _, _, note in answers}
    assert len(notes) == 1
    (note,) = notes
    assert note.startswith("champion v2 failed to load (the LoRA base '/nope/") and note.endswith("); served v1")
    assert note.isascii() and "next attempt" not in note and "john:2" not in note
    assert replica.registry.reads == [("get_version", "john", "1")]  # one read for six failed requests
    assert replica.downloads.count(("john", "2")) == 1  # tried once per back-off, not per request
    logged = [r for r in caplog.records if "serving v1 until it loads" in r.getMessage()]
    assert len(logged) == 1, [r.getMessage() for r in caplog.records]


def test_retain_keeps_the_fallback_model_until_the_new_champion_has_served(exports, tmp_path):
    reg = sqlite_registry(tmp_path / "store")
    register(reg, "john", exports["positive"])
    register(reg, "jane", exports["negative"])
    replica = _Replica(reg)

    async def go():
        await replica.ask("john")
        await replica.ask("jane")
        register(reg, "john", exports["broken"])  # john v2 fails to load
        assert replica.retain() == []  # john v1 serves until v2 loads: kept
        label, version, note = await replica.ask("john")
        assert (label, version) == ("positive", "1") and note.endswith("; served v1")
        assert replica.retain() == [] and replica.downloads.count(("john", "1")) == 1  # never reloaded
        register(reg, "john", exports["negative"])  # v3 loads
        assert replica.retain() == []  # v3 has not served yet: v1 stays
        assert await replica.ask("john") == ("negative", "3", None)
        return replica.retain()

    evicted = asyncio.run(go())
    assert [key.rsplit(":", 1)[0] for key in evicted] == ["john:1"]
    assert sorted(m.version for m in replica.models.models.values() if m.tenant == "john") == ["3"]
    assert replica.fallback.keep(reg.champion_versions()) == {}


def test_a_fresh_replica_falls_back_to_the_previous_champion_in_the_registry(exports, tmp_path):
    reg = sqlite_registry(tmp_path / "store")
    register(reg, "john", exports["positive"])
    register(reg, "john", exports["negative"])
    register(reg, "john", exports["broken"])  # champion history: 1, 2, 3
    replica = _Replica(reg)  # never served john

    label, version, note = asyncio.run(replica.ask("john"))
    assert (label, version) == ("negative", "2") and note.endswith("; served v2")
    assert [r[0] for r in replica.registry.reads] == ["show", "get_version"]
    assert replica.fallback.served["john"][0] == "2"


def test_without_an_earlier_version_that_loads_the_champions_503_stands(exports, tmp_path):
    reg = sqlite_registry(tmp_path / "store")
    register(reg, "john", exports["broken"])
    replica = _Replica(reg)
    with pytest.raises(ModelUnavailableError, match="john:1:.*the LoRA base") as first:
        asyncio.run(replica.ask("john"))  # no earlier version at all
    assert first.value.retry_after_s == 30.0
    register(reg, "john", exports["broken"])  # v2 broken too: v1, its fallback, fails as well
    with pytest.raises(ModelUnavailableError, match="john:2:") as second:
        asyncio.run(replica.ask("john"))
    assert second.value.headers()["retry-after"] == "30"


def test_a_remembered_version_whose_checksum_changed_is_never_served(exports, tmp_path):
    """An erased tenant id given to a new customer: the replica's memory of "john v1" is the old john's
    model, whose checksum the registry's v1 no longer has."""
    reg = sqlite_registry(tmp_path / "store")
    register(reg, "john", exports["positive"])
    register(reg, "john", exports["broken"])
    replica = _Replica(reg)
    replica.fallback.served["john"] = ("1", "0" * 64)  # what the old john's v1 was
    with pytest.raises(ModelUnavailableError, match="john:2:"):
        asyncio.run(replica.ask("john"))
    assert ("john", "1") not in replica.downloads


def test_keep_forgets_tenants_without_a_champion(exports, tmp_path):
    replica = _Replica(sqlite_registry(tmp_path / "store"))
    for tenant, version in (("john", "1"), ("jane", "4"), ("gone", "2")):
        replica.fallback.served[tenant] = (version, "sum")
    assert replica.fallback.keep({"john": "2", "jane": "4"}) == {"john": "1"}
    assert sorted(replica.fallback.served) == ["jane", "john"]


@pytest.mark.parametrize("message, reason", [
    ("model john:2:ab failed to load (attempt 1, retry in 1.0s): checksum mismatch", "checksum mismatch"),
    ("model john:2:ab failed to load (3 attempt(s)): checksum mismatch; next attempt in 2.5s", "checksum mismatch"),
    ("model john:2:ab failed to load (attempt 2, retry in 2.0s): loading took longer than 30s",
     "loading took longer than 30s"),
    ("something else: caf\u00e9\r\nsee log", "something else: caf???see log"),
    ("x" * 300, "x" * 117 + "..."),
])
def test_short_reason(message, reason):
    assert short_reason(ModelUnavailableError(message)) == reason


@pytest.mark.parametrize("history, champion, previous", [
    (["1", "2", "3"], "3", "2"), (["1", "2", "3"], "2", "1"),  # 3 sits above: a promotion that never took effect
    (["1"], "1", None), ([], "4", None), (["1", "2"], "5", "2"), (["1", "2", "1"], "1", "2")])
def test_the_previous_champion_in_the_history(history, champion, previous):
    assert _before(history, champion) == previous


def test_the_openapi_document_describes_the_headers_of_a_prediction():
    from openapi_spec_validator import validate

    from serve._endpoint import FALLBACK_HEADER, VERSION_HEADER, app

    doc = app.openapi()
    ok = doc["paths"]["/v1/tenants/{tenant}/predict"]["post"]["responses"]["200"]
    assert set(ok["headers"]) == {VERSION_HEADER, FALLBACK_HEADER}
    assert "PredictResponse" in ok["content"]["application/json"]["schema"]["$ref"]
    validate(doc)
