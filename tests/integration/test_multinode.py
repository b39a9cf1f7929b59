"""Multi-node behaviour on one machine: a `ray start` head (0 CPUs) and two one-CPU worker nodes
on 127.0.0.1, started once for this module and driven only through the attune CLI as a user would
(RAY_ADDRESS), since this test process is connected to the shared local Ray of the other tests.

- `attune submit --wait -- finetune --workers 2` succeeds, its two workers ran on the two different
  worker nodes (one CPU each, so no node can hold both), and the new version is in the registry.
- A Serve application with an endpoint replica on each worker node keeps answering when the node
  whose replica holds the tenant's model is SIGKILLed: requests succeed again within 30 s.
"""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from serve._app import APP_NAME, DEPLOYMENT
from tests.services.ray_cluster import LocalCluster, free_port
from tests.waiting import wait_for

ATTUNE = str(Path(sys.executable).with_name("attune"))
RECOVERY_S = 30.0
REPLICA_CLASS = f"ServeReplica:{APP_NAME}:{DEPLOYMENT}"


@pytest.fixture(scope="module")
def cluster():
    local = LocalCluster(num_workers=2, cpus_per_worker=1)
    try:
        yield local.start()
    finally:
        local.stop()


def attune(env: dict, *args: str, timeout: float = 300, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([ATTUNE, *args], env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0 or not check, \
        f"attune {' '.join(args)} exited {proc.returncode}:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    return proc


def json_lines(text: str) -> list[dict]:
    out = []
    for line in text.splitlines():
        if line.startswith("{"):
            try:
                out.append(json.loads(line))
            except ValueError:
                pass
    return out


def test_submitted_finetune_runs_on_two_nodes_and_registers(cluster, tiny_base, demo_dir, tmp_path):
    from cluster import get_settings
    from registry import Registry

    home = tmp_path / "home"
    env = cluster.client_env(ATTUNE_HOME=str(home), ATTUNE_PROGRESS_INTERVAL_S="5")
    proc = attune(env, "submit", "--wait", "--json", "--name", "finetune-john-2nodes", "--",
                  "finetune", "--tenant", "john", "--data", str(demo_dir / "john.jsonl"), "--base", str(tiny_base),
                  "--workers", "2", "--zero-stage", "2", "--epochs", "1", "--max-seq-len", "16",
                  "--max-train-rows", "64", "--batch-size", "16", "--json", timeout=400)
    assert proc.stdout.splitlines()[0] == f"submitted job finetune-john-2nodes to {cluster.dashboard}"
    *logged, result = json_lines(proc.stdout)
    assert result["status"] == "SUCCEEDED" and result["exit_code"] == 0 and result["job_id"] == "finetune-john-2nodes"
    summary = next(s for s in logged if s.get("tenant") == "john")  # the job's own --json line, streamed

    workers = {cluster.node_id("worker-1"), cluster.node_id("worker-2")}
    assert len(summary["worker_nodes"]) == 2 and set(summary["worker_nodes"]) == workers

    versions = Registry.from_settings(get_settings(home=str(home))).versions("john")
    assert [v.version for v in versions] == [summary["model_version"]]
    assert Path(summary["model_dir"]).is_relative_to(home) and (Path(summary["model_dir"]) / "attune.json").is_file()

    status = json_lines(attune(env, "jobs", "status", "finetune-john-2nodes", "--json").stdout)[-1]
    assert (status["status"], status["driver_exit_code"]) == ("SUCCEEDED", 0)
    assert "finetune --tenant john" in status["entrypoint"]
    assert '"tenant": "john"' in attune(env, "jobs", "logs", "finetune-john-2nodes").stdout
    again = attune(env, "submit", "--name", "finetune-john-2nodes", "--", "registry", "list", check=False)
    assert again.returncode == 2 and "already exists on this cluster; choose another --name" in again.stderr


def test_serving_survives_losing_a_worker_node(cluster, tiny_base, tmp_path):
    from tests.registry_helpers import sqlite_registry
    from tests.serve_helpers import constant_export, register

    home = tmp_path / "home"
    version = register(sqlite_registry(home), "john", constant_export(tiny_base, tmp_path / "john", "positive"))
    config = tmp_path / "serve.yaml"
    config.write_text(  # one endpoint replica per worker node (1 CPU each)
        "model: {num_cpus: 1, autoscaling: {min_replicas: 2, max_replicas: 2}, load_retry_initial_s: 0.5,"
        " load_retry_max_s: 2.0}\n"
        f"cache_dir: {tmp_path / 'cache'}\n")
    env = cluster.client_env(ATTUNE_HOME=str(home), ATTUNE_SERVE_REFRESH_S="1")
    port = free_port()
    _start_serve_on_head_only(env, port)
    up = json_lines(attune(env, "serve", "up", "--detach", "--insecure-no-auth", "--port", str(port),
                           "--config", str(config), "--json").stdout)[-1]
    url = up["url"]
    replicas = wait_for(lambda: _replicas_on_two_nodes(cluster), 90, "an endpoint replica on each worker node",
                        interval_s=0.5)
    with httpx.Client(base_url=url, timeout=RECOVERY_S + 10) as client:
        assert _predict(client) == (200, "positive", version)
        holder = _replica_holding(env, replicas, f"john:{version}")
        victim = next(n["node_name"] for n in cluster.nodes() if n["node_id"] == holder["node_id"])
        assert victim.startswith("worker-")

        killed_at = time.monotonic()
        killed = cluster.kill_node(victim)
        first_ok, failures = _first_success_after(client, killed_at)
        assert first_ok is not None, f"no request succeeded within {RECOVERY_S}s of losing {victim}: {failures[-5:]}"
        assert first_ok - killed_at <= RECOVERY_S
        print(f"lost {victim}: answering again after {first_ok - killed_at:.1f}s; failures meanwhile: {failures}")
        # the replica died with its node, and the one left on the other node keeps answering
        assert holder["pid"] in killed and not _running(holder["pid"])
        survivor = next(r for r in replicas if r["node_id"] != holder["node_id"])
        assert _running(survivor["pid"])
        assert [_predict(client) for _ in range(5)] == [(200, "positive", version)] * 5


def _start_serve_on_head_only(env: dict, port: int) -> None:
    """Serve's HTTP proxy on the head only: every node of this cluster shares 127.0.0.1, so proxies on
    each node (Serve's default) would contend for one port. `attune serve up` then finds Serve running."""
    code = ("import ray; from ray import serve; ray.init(); "
            f"serve.start(proxy_location='HeadOnly', http_options={{'host': '127.0.0.1', 'port': {port}}})")
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]


def _running(pid: int) -> bool:
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _replicas_on_two_nodes(cluster) -> list[dict]:
    replicas = cluster.actors(REPLICA_CLASS)
    workers = {cluster.node_id("worker-1"), cluster.node_id("worker-2")}
    return replicas if len(replicas) == 2 and {r["node_id"] for r in replicas} == workers else []


def _replica_holding(env: dict, replicas: list[dict], model_id: str) -> dict:
    """The replica (name, pid, node) that has loaded ``model_id``, from `attune serve status`."""
    shown = json_lines(attune(env, "serve", "status", "--json").stdout)[-1]
    pids = {r["pid"] for r in shown["replicas"] if any(k.startswith(f"{model_id}:") for k in r.get("models", {}))}
    holders = [r for r in replicas if r["pid"] in pids]
    assert holders, f"no replica reports {model_id}: {shown['replicas']}"
    return holders[0]


def _predict(client: httpx.Client) -> tuple:
    resp = client.post("/v1/tenants/john/predict", json={"texts": ["gold is up 150%"]})
    label = resp.json()["predictions"][0]["label"] if resp.status_code == 200 else resp.text[:200]
    return resp.status_code, label, resp.headers.get("x-attune-model-version")


def _first_success_after(client: httpx.Client, since: float, max_requests: int = 400):
    """Requests every 0.1 s (bounded in count and in time) until one sent after ``since`` succeeds;
    returns (the moment it completed or None, the failures seen)."""
    failures = []
    for _ in range(max_requests):
        if time.monotonic() - since > RECOVERY_S:
            break
        sent = time.monotonic()
        try:
            outcome = _predict(client)
        except httpx.HTTPError as exc:
            outcome = (type(exc).__name__,)
        if outcome[0] == 200:
            return time.monotonic(), failures
        failures.append(outcome)
        time.sleep(max(0.0, 0.1 - (time.monotonic() - sent)))
    return None, failures
