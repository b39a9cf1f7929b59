"""Helpers for registry tests: a registry in a temp folder and model directories to register."""
from __future__ import annotations

import atexit
import json
import shutil
import tempfile
import threading
from pathlib import Path

from registry import Lineage, Registry, RunRecord, build_manifest, write_manifest

_TEMPLATE: list[Path] = []


def sqlite_registry(root: Path) -> Registry:
    """A fresh embedded registry in ``root``: a copy of an empty, already-migrated database
    (creating MLflow's tables takes seconds; copying the file takes milliseconds)."""
    root.mkdir(parents=True, exist_ok=True)
    if not _TEMPLATE:
        template = Path(tempfile.mkdtemp(prefix="attune-mlflow-template-")) / "mlflow.db"
        atexit.register(shutil.rmtree, template.parent, True)  # one per test session, gone with it
        Registry(f"sqlite:///{template}").client.search_experiments()
        _TEMPLATE.append(template)
    shutil.copyfile(_TEMPLATE[0], root / "mlflow.db")
    return Registry(f"sqlite:///{root / 'mlflow.db'}", str(root / "artifacts"))


def fake_model_dir(path: Path, payload: bytes = b"weights") -> Path:
    """A directory shaped like a full export: a complete manifest and every file the artifact contract
    names, with placeholder bytes for the weights (the registry stores, checks and wraps them as an
    MLflow Model without loading them; loading one fails)."""
    path.mkdir(parents=True, exist_ok=True)
    manifest = build_manifest(tenant="john", labels=["negative", "positive"], base="minilm", method="full",
                              data_hash="d" * 64, metrics={}, temperature=1.0, max_seq_len=16)
    write_manifest(path, {**manifest, "created_at": "2026-01-01T00:00:00+00:00"})
    (path / "config.json").write_text(json.dumps({"model_type": "attune_mean_pool_bert"}))
    (path / "tokenizer_config.json").write_text("{}")
    (path / "model.safetensors").write_bytes(payload * 100)
    return path


def use_mlflow_store(monkeypatch, tracking_uri: str) -> None:
    """Make MLflow's own API (``mlflow.pyfunc.load_model("models:/...")``) use ``tracking_uri`` for this test,
    whatever URI an earlier test left set in this process (``mlflow.set_tracking_uri`` is global)."""
    from mlflow.tracking._model_registry import utils as registry_utils
    from mlflow.tracking._tracking_service import utils as tracking_utils

    monkeypatch.setattr(tracking_utils, "_tracking_uri", None)
    monkeypatch.setattr(registry_utils, "_registry_uri", None)
    monkeypatch.delenv("MLFLOW_REGISTRY_URI", raising=False)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking_uri)


def record(tenant: str = "john", macro_f1: float = 0.9, **params) -> RunRecord:
    lineage = Lineage(kind="finetune", tenant=tenant, base="minilm", method="full", data_uri="/data/john.jsonl",
                      data_hash="d" * 64, split_counts={"train": 80, "validation": 10, "test": 10},
                      labels=["negative", "positive"], temperature=1.7, code_version="abc123",
                      attune_version="0.1.0")
    return RunRecord(run_name=f"finetune-{tenant}", params={"lr": 1e-4, **params},
                     metrics={"test_macro_f1": macro_f1, "test_accuracy": macro_f1, "ece_before": 0.1,
                              "ece_after": 0.05, "temperature": 1.7},
                     history=[{"epoch": 1, "train_loss": 0.7, "val_macro_f1": 0.6},
                              {"epoch": 2, "train_loss": 0.4, "val_macro_f1": 0.8}], lineage=lineage)


def register_concurrently(reg: Registry, tenant: str, model_dir: Path, count: int) -> tuple[list[str], list]:
    """``count`` threads registering ``model_dir`` at once: (versions they got, errors they raised)."""
    errors, versions = [], []

    def one(i: int) -> None:
        try:
            versions.append(reg.register_candidate(tenant, model_dir, record(tenant, attempt=i)).version)
        except Exception as exc:  # collected for the caller to assert on
            errors.append(exc)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    return versions, errors
