"""`attune registry ui` serves the MLflow UI on attune's stores; the REST API shows tenants and aliases."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from registry import Registry
from tests.registry_helpers import fake_model_dir, record
from tests.services.s3 import _free_ports
from tests.waiting import wait_for

pytestmark = pytest.mark.e2e
REPO = Path(__file__).resolve().parents[2]


def _get(url: str):
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read()
    except OSError:
        return None, b""


def test_ui_serves_the_registry_with_aliases(tmp_path):
    home = (tmp_path / "home").resolve()
    reg = Registry(f"sqlite:///{home / 'mlflow.db'}", str(home / "artifacts"))
    for _ in range(2):
        reg.register_candidate("john", fake_model_dir(tmp_path / "m"), record())
    reg.promote("john", "1", reason="first")
    [port] = _free_ports(1)
    env = dict(os.environ, ATTUNE_HOME=str(home))
    env.pop("ATTUNE_MLFLOW_TRACKING_URI", None)
    proc = subprocess.Popen([sys.executable, "-m", "cluster.cli", "registry", "ui", "--port", str(port)],
                            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: _get(f"{base}/health")[0] == 200, 120, "the MLflow UI to answer /health")
        status, page = _get(f"{base}/")
        assert status == 200 and b"<html" in page.lower()
        _, body = _get(f"{base}/api/2.0/mlflow/registered-models/search?max_results=100")
        [model] = json.loads(body)["registered_models"]
        assert model["name"] == "tenant.john"
        assert {(a["alias"], a["version"]) for a in model["aliases"]} == {("champion", "1"), ("challenger", "2")}
        _, body = _get(f"{base}/api/2.0/mlflow/model-versions/get?name=tenant.john&version=1")
        tags = {t["key"]: t["value"] for t in json.loads(body)["model_version"]["tags"]}
        assert tags["attune.promotion.reason"] == "first" and tags["attune.base"] == "minilm"
        assert float(tags["attune.metric.test_macro_f1"]) == pytest.approx(0.9)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=15)
