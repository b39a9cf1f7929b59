"""A killed replica recovers: SIGKILL the endpoint replica's process while clients send requests;
requests succeed again within 30 s, answered by a new replica process.

One constant-answer tenant on the tiny base, auth off, HTTP on 127.0.0.1; the load loop is bounded
in both request count and time.
"""
from __future__ import annotations

import os
import signal
import threading
import time

import httpx
import pytest
import ray
from ray import serve as ray_serve
from ray.util.state import list_actors

from serve._app import APP_NAME, DEPLOYMENT
from tests.registry_helpers import sqlite_registry
from tests.serve_helpers import app_spec, constant_export, register, running_app
from tests.waiting import wait_for

RECOVERY_S = 30.0
REPLICA_CLASS = f"ServeReplica:{APP_NAME}:{DEPLOYMENT}"
NUM_CLIENTS = 2
MAX_REQUESTS_PER_CLIENT = 400
REQUEST_INTERVAL_S = 0.1  # about 10 req/s per client while the replica is up


@pytest.fixture(scope="module")
def app(ray_session, tiny_base, tmp_path_factory):
    root = tmp_path_factory.mktemp("serve-recovery")
    reg = sqlite_registry(root / "store")
    version = register(reg, "john", constant_export(tiny_base, root / "john", "positive"))
    with running_app(app_spec(reg, root)) as client:
        yield client, version


def _alive_replica_pids() -> list[int]:
    actors = list_actors(address=ray.get_runtime_context().gcs_address,
                         filters=[("class_name", "=", REPLICA_CLASS), ("state", "=", "ALIVE")])
    return [int(actor.pid) for actor in actors]


def _replica_pid() -> int:
    handle = ray_serve.get_deployment_handle(DEPLOYMENT, app_name=APP_NAME)
    return int(handle.stats.remote().result(timeout_s=30)["pid"])


def _label_or_error(resp: httpx.Response):
    try:
        body = resp.json()
    except ValueError:  # not our JSON: keep the text for the failure message
        return resp.text[:200]
    return body["predictions"][0]["label"] if resp.status_code == 200 else body.get("error", body)


class LoadLoop:
    """``NUM_CLIENTS`` threads posting predictions until stopped, a request cap or a deadline;
    each result is ``(sent_at, done_at, status or exception name, label)``."""

    def __init__(self, base_url: str, limit_s: float):
        self.base_url, self.deadline = base_url, time.monotonic() + limit_s
        self.results: list[tuple[float, float, object, object]] = []
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._client, daemon=True) for _ in range(NUM_CLIENTS)]

    def __enter__(self) -> LoadLoop:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=RECOVERY_S + 15)

    def _client(self) -> None:
        with httpx.Client(base_url=self.base_url, timeout=RECOVERY_S + 10) as client:
            for _ in range(MAX_REQUESTS_PER_CLIENT):
                if self.stop.is_set() or time.monotonic() > self.deadline:
                    return
                sent = time.monotonic()
                try:
                    resp = client.post("/v1/tenants/john/predict", json={"texts": ["gold is up 150%"]})
                    outcome = resp.status_code
                    label = _label_or_error(resp)
                except httpx.HTTPError as exc:
                    outcome, label = type(exc).__name__, None
                self.results.append((sent, time.monotonic(), outcome, label))
                self.stop.wait(max(0.0, REQUEST_INTERVAL_S - (time.monotonic() - sent)))

    def first_success_sent_after(self, moment: float):
        done = [r for r in list(self.results) if r[0] > moment and r[2] == 200]
        return min(done, key=lambda r: r[1]) if done else None


def test_killed_replica_recovers_within_30s(app):
    client, version = app
    old_pid = wait_for(lambda: _alive_replica_pids() == [_replica_pid()] and _replica_pid(), 30,
                       "one live endpoint replica whose actor pid matches its own os.getpid()")
    with LoadLoop(str(client.base_url), limit_s=RECOVERY_S + 20) as load:
        wait_for(lambda: sum(r[2] == 200 for r in load.results) >= 10, 15, "10 answered requests before the kill")
        killed_at = time.monotonic()
        os.kill(old_pid, signal.SIGKILL)
        first = wait_for(lambda: load.first_success_sent_after(killed_at), RECOVERY_S + 5,
                         "a request sent after the kill to succeed")
    recovered_s = first[1] - killed_at
    assert recovered_s <= RECOVERY_S, f"first success {recovered_s:.1f}s after the kill"
    assert first[3] == "positive"
    with pytest.raises(ProcessLookupError):
        os.kill(old_pid, 0)
    new_pid = _replica_pid()
    assert new_pid != old_pid and _alive_replica_pids() == [new_pid]
    # Requests sent after the kill failed only with the contract's 503 (or waited at the proxy and
    # succeeded). The replica serves HTTP itself (one hop), so a request that was running inside the
    # killed process died with it and got Serve's 500: at most one per client, sent before the kill.
    failures = [r for r in load.results if r[2] != 200]
    sent_after = [r for r in failures if r[0] > killed_at]
    assert all(r[2] == 503 and isinstance(r[3], dict) and r[3].get("code") == "model_unavailable"
               for r in sent_after), sent_after[:5]
    in_flight = [r for r in failures if r[0] <= killed_at]
    assert len(in_flight) <= NUM_CLIENTS and all(r[2] == 500 and r[1] >= killed_at for r in in_flight), in_flight
    # and it keeps answering: the requests after recovery all succeed with the tenant's version
    after = [client.post("/v1/tenants/john/predict", json={"texts": ["oil slumps"]}) for _ in range(5)]
    assert [(r.status_code, r.headers.get("x-attune-model-version")) for r in after] == [(200, version)] * 5
