"""A registered tenant version is an MLflow Model: MLflow's own loader and server answer as attune does.

One tenant on the embedded registry (ATTUNE_HOME): an export over the tiny base whose every weight
matters (a seeded random head, three labels, temperature 1.7), registered with `attune registry import
--promote` (no Ray: the scores, not the training, are under test), then
`mlflow.pyfunc.load_model("models:/tenant.john@champion")` and `mlflow models serve` against
`attune predict --tenant john`.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from cluster.cli import main
from tests.registry_helpers import use_mlflow_store
from tests.serve_helpers import free_port
from tests.services.mlflow_server import stop_process_group
from tests.waiting import wait_for

pytestmark = pytest.mark.e2e
LABELS = ["bearish", "bullish", "neutral"]
TEXTS = ["gold is up 150% in after-hours trading", "oil slumps as stocks pile up", "the board meets on Thursday",
         "a much longer headline about rates, jobs and the dollar " * 4]
BIN = Path(sys.executable).parent


def _export(tiny_base: Path, directory: Path) -> Path:
    from train._base import load_tokenizer
    from train.finetune.export import build_manifest, export_model
    from train.finetune.model import build_classifier

    model = build_classifier(tiny_base, LABELS, seed=3)  # a random head: scores differ by text
    manifest = build_manifest(tenant="john", labels=LABELS, base=str(tiny_base), method="full", data_hash="x",
                              metrics={}, temperature=1.7, max_seq_len=24)
    return export_model(model, load_tokenizer(tiny_base), directory, manifest)


def _last_json(capsys) -> dict:
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def _ping(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def test_pyfunc_and_mlflow_models_serve_answer_as_attune_predict(tiny_base, tmp_path, attune_home, monkeypatch,
                                                                 capsys):
    import mlflow.pyfunc
    import pandas as pd

    assert main(["registry", "import", str(_export(tiny_base, tmp_path / "export")), "--promote", "--json"]) == 0
    assert _last_json(capsys)["imported"] == [{"tenant": "john", "version": "1", "promoted": True}]
    assert main(["predict", "--tenant", "john", *[a for t in TEXTS for a in ("--text", t)], "--json"]) == 0
    ours = _last_json(capsys)["predictions"]

    uri = f"sqlite:///{(attune_home / 'mlflow.db').resolve()}"
    use_mlflow_store(monkeypatch, uri)
    loaded = mlflow.pyfunc.load_model("models:/tenant.john@champion")
    theirs = loaded.predict(pd.DataFrame({"text": TEXTS})).to_dict("records")
    assert [p["label"] for p in theirs] == [p["label"] for p in ours]
    assert len({json.dumps(p["scores"]) for p in ours}) == len(TEXTS)  # every weight matters: no constant model
    for mine, pyfunc in zip(ours, theirs):
        assert pyfunc["scores"] == pytest.approx(mine["scores"], abs=1e-5)
    assert loaded.metadata.get_model_info().flavors["python_function"]["config"] == {"temperature": 1.7,
                                                                                         "temperature_slope": 0.0}

    port = free_port()
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    log = tmp_path / "mlflow-serve.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([str(BIN / "mlflow"), "models", "serve", "-m", "models:/tenant.john@champion",
                                 "--env-manager", "local", "-p", str(port), "-h", "127.0.0.1"], env=env,
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for(lambda: proc.poll() is not None or _ping(f"http://127.0.0.1:{port}/ping"), 180,
                 "mlflow models serve to answer /ping")
        assert proc.poll() is None, log.read_text()[-3000:]
        answer = httpx.post(f"http://127.0.0.1:{port}/invocations", timeout=60,
                            json={"dataframe_split": {"columns": ["text"], "data": [[t] for t in TEXTS]}})
        assert answer.status_code == 200, answer.text
        served = answer.json()["predictions"]
        assert [p["label"] for p in served] == [p["label"] for p in ours]
        for mine, remote in zip(ours, served):
            assert remote["scores"] == pytest.approx(mine["scores"], abs=1e-5)
    finally:
        stop_process_group(proc, grace_s=15)
