"""The ServeError tree, registry error mapping, load back-off and the champion TTL cache (no Ray)."""
from __future__ import annotations

import pickle

import pytest

from registry import (
    ArtifactIntegrityError,
    InvalidTenantError,
    NoChampionError,
    RegistryError,
    TenantNotFoundError,
    VersionNotFoundError,
)
from serve._backoff import LoadBackoff
from serve._champions import ChampionCache
from serve._errors import ModelUnavailableError, ServeError, UnknownTenantError, as_serve_error, from_registry_error


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize("exc, status, code", [
    (TenantNotFoundError("x"), 404, "unknown_tenant"), (InvalidTenantError("x"), 404, "unknown_tenant"),
    (NoChampionError("x"), 409, "no_champion"), (ArtifactIntegrityError("x"), 503, "model_unavailable"),
    (VersionNotFoundError("x"), 404, "unknown_tenant"), (RegistryError("x"), 500, "internal"),
])
def test_registry_errors_map_to_http_statuses(exc, status, code):
    mapped = from_registry_error(exc)
    assert (mapped.http_status, mapped.code, mapped.message) == (status, code, "x")
    assert mapped.body() == {"error": {"code": code, "message": "x"}}


def test_errors_pickle_across_actor_boundaries():
    err = pickle.loads(pickle.dumps(ModelUnavailableError("tenant bob failed")))
    assert isinstance(err, ModelUnavailableError) and err.message == "tenant bob failed"


def test_wrapped_replica_errors_are_unwrapped():
    class RayTaskErrorLike(Exception):  # Ray's wrapper exposes the original error as ``cause``
        def __init__(self, cause):
            super().__init__("traceback text")
            self.cause = cause

    inner = UnknownTenantError("nope")
    assert as_serve_error(RayTaskErrorLike(inner)) is inner
    fallback = as_serve_error(RuntimeError("replica died"))
    assert isinstance(fallback, ModelUnavailableError) and "replica died" in fallback.message


def test_failed_loads_back_off_then_retry():
    clock = Clock()
    backoff = LoadBackoff(initial_s=1.0, max_s=3.0, clock=clock)
    backoff.check("bob:1")  # nothing recorded yet
    first = backoff.failed("bob:1", ArtifactIntegrityError("checksum mismatch"))
    assert first.http_status == 503 and "checksum mismatch" in first.message and "retry in 1.0s" in first.message
    with pytest.raises(ModelUnavailableError, match="next attempt in 1.0s"):
        backoff.check("bob:1")
    backoff.check("john:1")  # other models are unaffected
    clock.now += 1.0
    backoff.check("bob:1")  # the back-off is over: a new attempt may run
    assert "retry in 2.0s" in backoff.failed("bob:1", RuntimeError("again")).message
    clock.now += 2.0
    assert "retry in 3.0s" in backoff.failed("bob:1", RuntimeError("again")).message  # capped at max_s
    backoff.succeeded("bob:1")
    backoff.check("bob:1")
    assert backoff.snapshot() == {}


class Info:
    def __init__(self, version):
        self.version = version


def test_champion_cache_follows_the_registry_within_the_ttl():
    clock, answers, calls = Clock(), {"john": Info("1")}, []

    def resolve(tenant):
        calls.append(tenant)
        value = answers[tenant]
        if isinstance(value, Exception):
            raise value
        return value

    cache = ChampionCache(resolve, ttl_s=5.0, clock=clock)
    assert cache.get("john").version == "1"
    answers["john"] = Info("2")
    clock.now += 4.9
    assert cache.get("john").version == "1" and cache.fresh("john") and len(calls) == 1
    clock.now += 0.2
    assert cache.get("john").version == "2" and len(calls) == 2
    answers["john"] = OSError("database is locked")  # transient: keep serving the last champion
    clock.now += 5.1
    assert cache.get("john").version == "2"
    answers["ghost"] = TenantNotFoundError("no such tenant")
    with pytest.raises(UnknownTenantError):
        cache.get("ghost")
    with pytest.raises(UnknownTenantError):
        cache.get("ghost")  # the negative answer is cached too
    assert calls.count("ghost") == 1
    answers["new"] = OSError("could not connect to postgresql://attune:s3cret@db/registry")
    with pytest.raises(ServeError, match="cannot read the model registry") as unavailable:
        cache.get("new")
    assert (unavailable.value.http_status, unavailable.value.code) == (503, "registry_unavailable")
    assert unavailable.value.headers()["retry-after"] == "5" and "s3cret" not in str(unavailable.value.body())


def test_an_unexpected_error_answers_internal_error_with_an_id_that_the_log_carries(caplog):
    import asyncio
    import json
    import logging

    from serve._endpoint import REQUEST_ID_HEADER, _unexpected

    secret = "postgresql://attune:s3cret@db:5432/registry"
    with caplog.at_level(logging.ERROR, logger="attune.serve"):
        resp = asyncio.run(_unexpected(None, RuntimeError(f"could not connect to {secret}")))
    body, request_id = json.loads(resp.body), resp.headers[REQUEST_ID_HEADER]
    assert resp.status_code == 500 and body["error"]["code"] == "internal"
    assert request_id in body["error"]["message"]
    assert "s3cret" not in resp.body.decode() and "RuntimeError" not in resp.body.decode()
    logged = [r for r in caplog.records if request_id in r.getMessage()]
    assert logged and logged[0].exc_info and secret in str(logged[0].exc_info[1])
