"""The user's commands as the user runs them: `attune` as a subprocess on the embedded local Ray."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e
REPO = Path(__file__).resolve().parents[2]


def attune(*args: str, home: Path, timeout: int = 600, **env) -> subprocess.CompletedProcess:
    environ = dict(os.environ, ATTUNE_HOME=str(home), **env)
    environ.pop("RAY_ADDRESS", None)
    return subprocess.run([sys.executable, "-m", "cluster.cli", *args], cwd=REPO, env=environ,
                          capture_output=True, text=True, timeout=timeout)


def last_json(proc: subprocess.CompletedProcess) -> dict:
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_demo_data_finetune_predict(tmp_path, tiny_base):
    home = tmp_path / "home"
    demo = last_json(attune("data", "demo", "--out", str(tmp_path / "data"), "--json", home=home))
    assert demo["rows"]["john"] >= 600 and demo["conflict_fraction"] >= 0.4

    proc = attune("finetune", "--tenant", "john", "--data", demo["files"]["john"], "--base", str(tiny_base),
                  "--workers", "2", "--zero-stage", "2", "--epochs", "2", "--max-train-rows", "256",
                  "--batch-size", "16", "--max-seq-len", "24", "--lr", "1e-3", "--promotion-floor", "0", "--json",
                  home=home, ATTUNE_PROGRESS_INTERVAL_S="1")
    summary = last_json(proc)
    assert summary["tenant"] == "john"
    assert set(summary["metrics"]) >= {"test_accuracy", "test_macro_f1", "ece_before", "ece_after", "temperature"}
    assert summary["train_seconds"] > 0
    assert (summary["model_version"], summary["alias"]) == ("1", "champion")
    assert summary["promotion"]["promoted"] is True and "first version" in summary["promotion"]["reason"]
    model_dir = Path(summary["model_dir"])
    assert model_dir.parent.parent == (home / "models").resolve()  # $ATTUNE_HOME/models/john/<time>
    manifest = json.loads((model_dir / "attune.json").read_text())
    assert manifest["tenant"] == "john" and manifest["base"] == str(tiny_base)
    progress = [line for line in proc.stderr.splitlines() if "samples/s" in line and "ETA" in line]
    assert progress and "epoch" in progress[0] and "step" in progress[0] and "loss" in progress[0]
    assert not any(home.glob("ray_results/finetune-*")), "Ray Train run storage was not cleaned up"
    assert (home / "mlflow.db").is_file() and any((home / "artifacts" / "tenant.john").iterdir())

    texts = ["gold is up 150% in after-hours trading", "oil slumps 4%"]
    preds = last_json(attune("predict", "--model", str(model_dir), "--text", texts[0], "--text", texts[1],
                             "--json", home=home))["predictions"]
    assert len(preds) == 2
    for pred in preds:
        assert set(pred["scores"]) == {"negative", "neutral", "positive"}
        assert abs(sum(pred["scores"].values()) - 1) < 1e-3
    registered = last_json(attune("predict", "--tenant", "john", "--text", texts[0], "--json", home=home))
    assert registered["model_version"] == "1" and registered["predictions"][0] == preds[0]
    _registry_commands(home, demo["files"]["john"], tiny_base)


def _registry_commands(home: Path, data: str, tiny_base: Path) -> None:
    """A second, ungated version; then list / show / promote / rollback / delete-tenant."""
    second = last_json(attune("finetune", "--tenant", "john", "--data", data, "--base", str(tiny_base),
                              "--epochs", "1", "--max-train-rows", "16", "--max-seq-len", "24", "--no-promote",
                              "--json", home=home))
    assert (second["model_version"], second["alias"]) == ("2", "challenger")
    assert second["promotion"] == {"promoted": False, "reason": "registered with --no-promote; the gate did not run"}
    [row] = last_json(attune("registry", "list", "--json", home=home))["tenants"]
    assert row["tenant"] == "john" and row["champion_version"] == "1" and "test_macro_f1" in row["metrics"]
    shown = last_json(attune("registry", "show", "john", "--json", home=home))
    assert shown["aliases"] == {"champion": "1", "challenger": "2"}
    v1, v2 = shown["versions"]
    assert v1["promotion"]["promoted"] and not v2["promotion"]["promoted"]
    assert v2["lineage"]["base"] == str(tiny_base) and v2["lineage"]["data_hash"] == second["data_hash"]
    assert last_json(attune("registry", "promote", "john", "2", "--json", home=home))["previous"] == "1"
    text = attune("registry", "rollback", "john", home=home)
    assert text.returncode == 0 and "from version 2 to version 1" in text.stdout
    refused = attune("registry", "delete-tenant", "john", home=home)
    assert refused.returncode == 2 and "--yes" in refused.stderr
    erased = last_json(attune("registry", "delete-tenant", "john", "--yes", "--json", home=home))
    assert erased == {"tenant": "john", "deleted_versions": 2, "deleted_runs": 2, "purged": True}
    assert not (home / "artifacts" / "tenant.john").exists()
    gone = attune("predict", "--tenant", "john", "--text", "x", home=home)
    assert gone.returncode == 2 and "has no registered model" in gone.stderr


def test_bad_data_exits_nonzero_before_starting_anything(tmp_path):
    home = tmp_path / "home"
    bad = tmp_path / "bad.csv"
    bad.write_text("text,label\n" + "".join(f"t{i},a\n" for i in range(5)) + "t0,b\n,a\n")
    proc = attune("finetune", "--tenant", "john", "--data", str(bad), "--json", home=home, timeout=120)
    assert proc.returncode != 0
    assert str(bad) in proc.stderr and "row 7" in proc.stderr and "row 8" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not home.exists() or not any(home.rglob("*"))
