"""The user's commands as the user runs them, each `attune ...` a subprocess on the embedded default.

One flow, so the expensive parts (fine-tunes, Ray heads, the endpoint) are paid once:
`attune demo --keep-running` (data, three fine-tunes on one local head, keys, `serve up --detach`,
John's corrections over HTTP and `attune relocalize --tenant john`), then what a user does next
with the running endpoint (curl with the printed key, `serve status`,
`predict`), `serve down`, and a re-run that reuses the champions. A tiny random base keeps it to
the mechanics (labels are meaningless); the real-model run is `make demo`. The registry commands a
user runs next are tests/unit/test_registry_cli.py (in-process: no training needed for them).
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from cluster.demo import SEED_SENTENCE
from tests.serve_helpers import free_port
from train._demo_data import default_newsdesk_source

pytestmark = pytest.mark.e2e
ATTUNE = str(Path(sys.executable).with_name("attune"))


def attune(env, *args, timeout=600, check=True) -> subprocess.CompletedProcess:
    proc = subprocess.run([ATTUNE, *args], env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0 or not check, \
        f"attune {' '.join(args)} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    return proc


def last_json(proc) -> dict:
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.fixture
def env(tmp_path) -> dict:
    environ = {**os.environ, "ATTUNE_HOME": str(tmp_path / "home"), "ATTUNE_RAY_NUM_CPUS": "2",
               "ATTUNE_PROMOTION_FLOOR": "0",  # a random tiny base cannot clear the default floor
               "ATTUNE_PROMOTION_MARGIN": "1",  # nor reliably beat its champion: relocalize's version wins
               "ATTUNE_PROGRESS_INTERVAL_S": "1"}
    environ.pop("RAY_ADDRESS", None)
    return environ


def _demo_tenants() -> tuple[str, ...]:
    """john and jane always; newsdesk when its tweets are there (../shared/data), as the demo decides."""
    return ("john", "jane", "newsdesk") if default_newsdesk_source() else ("john", "jane")


def test_demo_then_endpoint_predict_and_a_rerun(env, tiny_base):
    home = Path(env["ATTUNE_HOME"])
    port = free_port()
    demo = ["demo", "--base", str(tiny_base), "--port", str(port), "--json"]

    first = attune(env, *demo, "--keep-running")
    try:
        out, model_dir = _check_first_run(first, port, home, tiny_base)
        _use_the_running_endpoint(env, first.stderr, out["endpoint"], model_dir)
    finally:
        down = attune(env, "serve", "down", "--json", check=False)
    assert down.returncode == 0 and last_json(down) == {"removed": True, "stopped_head": True}, down.stderr[-2000:]
    assert not (home / "ray-head.json").exists()
    assert last_json(attune(env, "serve", "status", "--json")) == {"running": False}

    second = attune(env, *demo)  # reuses all three champions, then cleans up
    again = last_json(second)
    assert second.stderr.count("reusing it") == len(_demo_tenants()) and "$ attune finetune" not in second.stderr
    assert [r["john"]["model_version"] for r in again["results"]] == ["2"] * len(again["results"])
    assert again["relocalized"] == {"tenant": "john", "reused": "2", "promoted": False}
    assert "is already relocalized" in second.stderr and "$ attune relocalize" not in second.stderr
    assert [r["text"] for r in again["results"]] == [r["text"] for r in out["results"]]
    assert again["seconds"] < out["seconds"]
    assert not (home / "ray-head.json").exists()
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5)
    # both stops of the head skipped Ray's SIGTERM drain (one node: nothing to move; it only waited 30 s)
    head_log = (home / "ray-head.log").read_text()
    assert "Draining for up to" not in head_log and "did not finish draining" not in head_log


def _check_first_run(first, port: int, home: Path, tiny_base: Path) -> tuple[dict, Path]:
    """The demo's JSON line and printed steps, and john's export directory."""
    out = last_json(first)
    assert set(out) == {"results", "relocalized", "endpoint", "seconds"}
    assert out["endpoint"] == f"http://127.0.0.1:{port}"
    assert out["results"][0]["text"] == SEED_SENTENCE and len(out["results"]) >= 3
    for row in out["results"]:
        for tenant in ("john", "jane"):
            answer = row[tenant]
            assert answer["model_version"] == "1" and answer["label"] in answer["scores"]
            assert set(answer["scores"]) == {"positive", "negative", "neutral"}
            assert abs(sum(answer["scores"].values()) - 1) < 1e-3
    for step in ("attune data demo", f"attune finetune --tenant {_demo_tenants()[-1]}",
                 "attune keys create --tenant jane", "attune serve up"):
        assert f"$ {step}" in first.stderr
    assert first.stderr.count("connecting to the local Ray head") >= 3  # one cluster for every step
    assert f"curl -s -X POST http://127.0.0.1:{port}/v1/tenants/john/predict" in first.stderr
    assert "registry ui" in first.stderr
    _check_relocalized(out, first.stderr)
    # what each fine-tune left behind: progress lines, a manifest, the registry, no Ray Train run storage
    progress = [line for line in first.stderr.splitlines() if "samples/s" in line and "ETA" in line]
    assert progress and all(word in progress[0] for word in ("epoch", "step", "loss"))
    exports = sorted((home / "models" / "john").iterdir())  # $ATTUNE_HOME/models/john/<time>: v1, then v2
    assert len(exports) == 2
    for model_dir in exports:
        manifest = json.loads((model_dir / "attune.json").read_text())
        assert manifest["tenant"] == "john" and manifest["base"] == str(tiny_base)
    assert not any(home.glob("ray_results/finetune-*")), "Ray Train run storage was not cleaned up"
    assert (home / "mlflow.db").is_file() and any((home / "artifacts" / "tenant.john").iterdir())
    return out, exports[-1]


def _check_relocalized(out: dict, stderr: str) -> None:
    """John's 40 corrections went in over HTTP; relocalize made v2 from his data plus them; the endpoint
    answers john with v2 and jane exactly as before."""
    done = out["relocalized"]
    assert (done["tenant"], done["feedback_sent"], done["feedback_stored"], done["promoted"]) == ("john", 40, 40, True)
    summary = done["relocalize"]
    assert summary["model_version"] == "2" and summary["previous_version"] == "1" and summary["alias"] == "champion"
    data = summary["data"]
    assert data["feedback_rows"] == 40 and len(data["dataset_digest"]) == 64
    assert data["rows"] == 720 + 40 and data["replaced_rows"] == 0  # the demo data and the corrections
    examples = data["contradicted_examples"]  # which rows a random tiny base finds close is arbitrary; the shape is not
    assert len(examples) == min(5, data["contradicted_rows"]) and all(e["new_label"] != e["label"] for e in examples)
    assert summary["metrics"]["test_per_class_f1"].keys() == {"negative", "neutral", "positive"}  # no label lost
    assert set(summary) >= {"tenant", "model_version", "promotion", "data", "metrics", "train_seconds"}
    assert "$ attune relocalize --tenant john" in stderr and "john after (short)" in stderr
    for before, after in zip(out["results"], done["results"]):
        assert before["text"] == after["text"] and after["john"]["model_version"] == "2"
        assert after["jane"] == before["jane"]  # jane's answers are unchanged


def _use_the_running_endpoint(env, stderr: str, endpoint: str, model_dir: Path) -> None:
    """What a user does next: the printed curl line's key, `serve status`, `registry list`, `predict`."""
    key = re.search(rf"{re.escape(endpoint)}/v1/tenants/john/predict -H 'Authorization: Bearer (\S+)'",
                    stderr).group(1)
    resp = httpx.post(f"{endpoint}/v1/tenants/john/predict", json={"texts": [SEED_SENTENCE]},
                      headers={"Authorization": f"Bearer {key}"}, timeout=60)
    assert resp.status_code == 200 and resp.headers["x-attune-model-version"] == "2"  # relocalized
    denied = httpx.post(f"{endpoint}/v1/tenants/jane/predict", json={"texts": [SEED_SENTENCE]},
                        headers={"Authorization": f"Bearer {key}"}, timeout=60)
    assert denied.status_code == 403  # john's key is john's only

    status = last_json(attune(env, "serve", "status", "--json"))  # --keep-running left it up
    assert status["running"] and status["readyz"] == 200
    assert {"Endpoint"} == set(status["deployments"])
    # a replica's model keys are tenant:version:checksum-prefix
    assert "john:2" in {m.rsplit(":", 1)[0] for replica in status["replicas"] for m in replica["models"]}
    rows = last_json(attune(env, "registry", "list", "--json"))["tenants"]
    champions = {r["tenant"]: r["champion_version"] for r in rows}
    assert champions == {t: "2" if t == "john" else "1" for t in _demo_tenants()}
    relocalized = last_json(attune(env, "relocalize", "--status", "john", "--json"))
    assert relocalized["last"]["outcome"] == "promoted" and relocalized["last"]["version"] == "2"
    assert relocalized["due"] is False and relocalized["new_feedback"] == 0

    texts = [SEED_SENTENCE, "oil slumps 4%"]
    local = last_json(attune(env, "predict", "--model", str(model_dir), "--text", texts[0], "--text", texts[1],
                             "--json"))["predictions"]
    assert len(local) == 2
    for pred in local:
        assert set(pred["scores"]) == {"negative", "neutral", "positive"}
        assert abs(sum(pred["scores"].values()) - 1) < 1e-3
    registered = last_json(attune(env, "predict", "--tenant", "john", "--text", texts[0], "--json"))
    assert registered["model_version"] == "2" and registered["predictions"][0] == local[0]
    served = resp.json()["predictions"][0]
    assert served["label"] == local[0]["label"]
    assert served["scores"] == pytest.approx(local[0]["scores"], abs=1e-4)  # endpoint == CLI == export
