"""`attune demo` as a user runs it: the whole flow on the embedded default, then a re-run that reuses it.

A tiny random base keeps this to the mechanics (the labels are meaningless); the real-model run is
`make demo`. The first run keeps the endpoint up so `attune serve status` can look at it.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from cluster._demo import SEED_SENTENCE
from tests.serve_helpers import free_port

pytestmark = pytest.mark.e2e
ATTUNE = str(Path(sys.executable).with_name("attune"))


def attune(env, *args, timeout=600) -> subprocess.CompletedProcess:
    proc = subprocess.run([ATTUNE, *args], env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"attune {' '.join(args)} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    return proc


def last_json(proc) -> dict:
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_demo_runs_end_to_end_and_a_rerun_reuses_the_champions(tmp_path, tiny_base):
    home = tmp_path / "home"
    env = {**os.environ, "ATTUNE_HOME": str(home), "ATTUNE_RAY_NUM_CPUS": "2",
           "ATTUNE_PROMOTION_FLOOR": "0"}  # a random tiny base cannot clear the default floor
    env.pop("RAY_ADDRESS", None)
    port = free_port()
    demo = ["demo", "--base", str(tiny_base), "--port", str(port), "--json"]

    first = attune(env, *demo, "--keep-running")
    try:
        out = last_json(first)
        assert set(out) == {"results", "endpoint", "seconds"} and out["endpoint"] == f"http://127.0.0.1:{port}"
        assert out["results"][0]["text"] == SEED_SENTENCE and len(out["results"]) >= 3
        for row in out["results"]:
            for tenant in ("john", "jane"):
                answer = row[tenant]
                assert answer["model_version"] == "1" and answer["label"] in answer["scores"]
                assert set(answer["scores"]) == {"positive", "negative", "neutral"}
                assert abs(sum(answer["scores"].values()) - 1) < 1e-3
        for step in ("attune data demo", "attune finetune --tenant newsdesk", "attune keys create --tenant jane",
                     "attune serve up"):
            assert f"$ {step}" in first.stderr
        assert first.stderr.count("connecting to the local Ray head") >= 3  # one cluster for every step
        assert f"curl -s -X POST http://127.0.0.1:{port}/v1/tenants/john/predict" in first.stderr
        assert "registry ui" in first.stderr

        status = last_json(attune(env, "serve", "status", "--json"))  # --keep-running left it up
        assert status["running"] and status["readyz"] == 200
        rows = last_json(attune(env, "registry", "list", "--json"))["tenants"]
        listed = {r["tenant"]: r["champion_version"] for r in rows}
        assert listed == {"john": "1", "jane": "1", "newsdesk": "1"}
    finally:
        attune(env, "serve", "down")
    assert not (home / "ray-head.json").exists()

    second = attune(env, *demo)  # reuses all three champions, then cleans up
    again = last_json(second)
    assert second.stderr.count("reusing it") == 3 and "$ attune finetune" not in second.stderr
    assert [r["john"]["model_version"] for r in again["results"]] == ["1"] * len(again["results"])
    assert [r["text"] for r in again["results"]] == [r["text"] for r in out["results"]]
    assert again["seconds"] < out["seconds"]
    assert not (home / "ray-head.json").exists()
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5)
