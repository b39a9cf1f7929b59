"""The user's serve commands as subprocesses: keys, `serve up --detach` on a local head attune starts,
HTTP on 127.0.0.1, `serve status --json`, other commands reuse that head, `serve down` stops it."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.registry_helpers import sqlite_registry
from tests.serve_helpers import constant_export, free_port, register

pytestmark = pytest.mark.e2e
ATTUNE = str(Path(sys.executable).with_name("attune"))


def attune(env, *args, timeout=240, check=True) -> subprocess.CompletedProcess:
    proc = subprocess.run([ATTUNE, *args], env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0 or not check, f"attune {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr[-3000:]}"
    return proc


def last_json(proc) -> dict:
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_serve_up_detached_status_and_down(tmp_path, tiny_base):
    home = tmp_path / "home"
    reg = sqlite_registry(home)  # the embedded default store of this ATTUNE_HOME
    version = register(reg, "john", constant_export(tiny_base, tmp_path / "john", "positive"))
    config = tmp_path / "serve.yaml"
    config.write_text(f"model: {{num_cpus: 0.25}}\ningress: {{num_cpus: 0.25}}\ncache_dir: {tmp_path / 'cache'}\n")
    env = {**os.environ, "ATTUNE_HOME": str(home), "ATTUNE_RAY_NUM_CPUS": "2", "ATTUNE_SERVE_REFRESH_S": "1"}
    env.pop("RAY_ADDRESS", None)
    port = free_port()

    key = last_json(attune(env, "keys", "create", "--tenant", "john", "--json"))
    assert key["tenant"] == "john" and key["key"].startswith("atn_")
    try:
        up = last_json(attune(env, "serve", "up", "--port", str(port), "--config", str(config), "--detach",
                              "--json"))
        assert up["url"] == f"http://127.0.0.1:{port}" and up["started_head"] is True
        head = json.loads((home / "ray-head.json").read_text())
        resp = httpx.post(f"{up['url']}/v1/tenants/john/predict", json={"texts": ["gold is up"]},
                          headers={"Authorization": f"Bearer {key['key']}"}, timeout=60)
        assert resp.status_code == 200 and resp.headers["x-attune-model-version"] == version
        assert resp.json()["predictions"][0]["label"] == "positive"

        shown = last_json(attune(env, "serve", "status", "--json"))
        assert shown["running"] and shown["readyz"] == 200
        assert {"Ingress", "TenantModel"} == set(shown["deployments"])
        assert [list(r["models"]) for r in shown["replicas"]] == [[f"john:{version}"]]

        probe = subprocess.run([sys.executable, "-c", "from cluster import get_settings, init_ray; "
                                "print(init_ray(get_settings()))"], env=env, capture_output=True, text=True,
                               timeout=120)
        assert f"local Ray head at {head['address']}" in probe.stdout, probe.stderr[-2000:]
    finally:  # always stop what this test started, even when an assertion above failed
        down = attune(env, "serve", "down", "--json", check=False)
    assert down.returncode == 0 and last_json(down) == {"removed": True, "stopped_head": True}, down.stderr[-2000:]
    assert not (home / "ray-head.json").exists()
    with pytest.raises(ProcessLookupError):
        os.kill(head["pid"], 0)
    assert last_json(attune(env, "serve", "status", "--json")) == {"running": False}
