"""The registry on the production path: PostgreSQL + S3 behind a real `mlflow server`, and a direct
``postgresql://`` tracking URI with an ``s3://`` artifact root. Everything the embedded tests check
(registration, gate, aliases, integrity, concurrency, erasure) is checked here on real services.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import sqlalchemy

from cluster import get_settings
from registry import ArtifactIntegrityError, Registry, TenantNotFoundError
from tests.registry_helpers import fake_model_dir, record, register_concurrently
from train import FinetuneConfig
from train._data import load_tenant_data
from train.finetune.driver import finetune
from train.finetune.register import register_and_gate, run_record


def _rows(database_uri: str, sql: str, **params) -> list:
    engine = sqlalchemy.create_engine(database_uri, poolclass=sqlalchemy.pool.NullPool)
    with engine.connect() as conn:
        return conn.execute(sqlalchemy.text(sql), params).all()


def _keys(s3, bucket: str) -> list[str]:
    keys, token = [], None
    while True:
        page = s3.list_objects_v2(Bucket=bucket, **({"ContinuationToken": token} if token else {}))
        keys += [o["Key"] for o in page.get("Contents", [])]
        token = page.get("NextContinuationToken")
        if not token:
            return keys


def _aliases_and_integrity(reg: Registry, s3, bucket: str, tenant: str, tmp_path) -> None:
    """Register 3 versions, promote / roll back, then corrupt the champion's bytes in S3."""
    for payload in (b"one", b"two", b"three"):
        reg.register_candidate(tenant, fake_model_dir(tmp_path / payload.decode(), payload), record(tenant))
    reg.promote(tenant, "1")
    reg.promote(tenant, "3", reason="better on the gate")
    assert reg.rollback(tenant) == {"tenant": tenant, "champion": "1", "previous": "3"}
    assert reg.champion_versions()[tenant] == "1"  # what serving refreshes: one query (SQL) or the API (server)
    shown = reg.show(tenant)
    assert shown["aliases"] == {"champion": "1", "challenger": "3"}
    assert [v["version"] for v in shown["versions"]] == ["1", "2", "3"]
    path, _ = reg.download(tenant, "champion", tmp_path / "dl")
    assert (path / "model.safetensors").read_bytes() == b"one" * 100

    run_id = reg.champion(tenant).run_id
    [key] = [k for k in _keys(s3, bucket) if run_id in k and k.endswith("model.safetensors")]
    s3.put_object(Bucket=bucket, Key=key, Body=b"tampered")
    with pytest.raises(ArtifactIntegrityError, match="do not match the checksum"):
        reg.download(tenant, "champion", tmp_path / "dl2")


def _erase(reg: Registry, s3, bucket: str, database_uri: str, tenant: str, keep: str) -> None:
    run_ids = [v.run_id for v in reg.versions(tenant)]
    assert any(r in k for k in _keys(s3, bucket) for r in run_ids)
    summary = reg.delete_tenant(tenant)
    assert summary["purged"] is True and summary["deleted_versions"] == len(run_ids)
    assert not [k for k in _keys(s3, bucket) if any(r in k for r in run_ids)], "tenant artifacts left in S3"
    assert _rows(database_uri, "SELECT name FROM experiments WHERE name = :n", n=f"tenant.{tenant}") == []
    assert _rows(database_uri, "SELECT name FROM registered_models WHERE name = :n", n=f"tenant.{tenant}") == []
    for run_id in run_ids:
        assert _rows(database_uri, "SELECT run_uuid FROM runs WHERE run_uuid = :r", r=run_id) == []
    with pytest.raises(TenantNotFoundError):
        reg.show(tenant)
    assert reg.show(keep)["versions"], "another tenant's versions were touched"


def test_mlflow_server_path(mlflow_production, tmp_path):
    prod = mlflow_production
    reg = Registry(prod.tracking_uri, backend_store_uri=prod.database_uri)
    _aliases_and_integrity(reg, prod.s3, prod.bucket, "john", tmp_path)
    reg.register_candidate("jane", fake_model_dir(tmp_path / "jane"), record("jane"))
    _erase(reg, prod.s3, prod.bucket, prod.database_uri, "john", keep="jane")


def test_twenty_concurrent_registrations_through_the_server(mlflow_production, tmp_path):
    reg = Registry(mlflow_production.tracking_uri)
    versions, errors = register_concurrently(reg, "crowd", fake_model_dir(tmp_path / "m"), 20)
    assert errors == []
    assert sorted(map(int, versions)) == list(range(1, 21))
    assert len(reg.versions("crowd")) == 20


def test_finetune_registers_and_gates_through_the_server(ray_session, mlflow_production, tiny_base, demo_dir,
                                                         tmp_path):
    settings = get_settings(home=str(tmp_path / "home"), mlflow_tracking_uri=mlflow_production.tracking_uri,
                            promotion_floor=0.0)
    data = str(demo_dir / "john.jsonl")
    first = finetune(FinetuneConfig(tenant="gated", data=data, base=str(tiny_base), num_workers=2, batch_size=16,
                                    max_seq_len=24, lr=1e-3, epochs=2, max_train_rows=256, out=tmp_path / "a"),
                     settings=settings)
    assert first["model_version"] == "1" and first["alias"] == "champion"
    assert first["promotion"]["promoted"] and "first version" in first["promotion"]["reason"]
    reg = Registry(mlflow_production.tracking_uri)
    v1 = reg.get_version("gated", "1")
    assert v1.tags["attune.base"] == str(tiny_base) and v1.tags["attune.data_hash"] == first["data_hash"]
    run = reg.client.get_run(v1.run_id)
    assert run.data.params["max_train_rows"] == "256"
    # the live run: opened as training started, each epoch logged as it ended, ended FINISHED with the model
    assert run.info.status == "FINISHED" and re.fullmatch(r"finetune-gated-full-\d{8}-\d{6}", run.info.run_name)
    curve = reg.client.get_metric_history(v1.run_id, "val_macro_f1")
    assert [m.step for m in curve] == [1, 2] and curve[0].timestamp < curve[1].timestamp
    assert run.data.tags["mlflow.source.name"] == "attune finetune" and run.data.tags["mlflow.source.git.commit"]
    (entry,) = run.inputs.dataset_inputs  # the UI's Dataset column: the data's hash and where it is
    assert entry.dataset.digest == first["data_hash"][:36] and json.loads(entry.dataset.source) == {"uri": data}
    # the run's pictures, stored through the server (on S3) where the UI shows them
    figures = {f.path: f.file_size for f in reg.client.list_artifacts(v1.run_id, "figures")}
    assert set(figures) == {"figures/reliability.png", "figures/confusion_matrix.png"} and min(figures.values()) > 1000

    # the same model again: the gate downloads the champion through the server (from S3) and scores both
    dataset = load_tenant_data(data)
    record = run_record("finetune", "again", {}, first["metrics"], [], tenant="gated", base=str(tiny_base),
                        method="full", data_uri=data, dataset=dataset)
    again = register_and_gate(reg, "gated", Path(first["model_dir"]), record, dataset, promote=True, margin=0.0,
                              floor=0.0)
    decision = again["promotion"]
    assert again["model_version"] == "2" and decision["champion_version"] == "1"
    assert decision["candidate_macro_f1"] == decision["champion_macro_f1"] and decision["promoted"]
    assert reg.champion("gated").version == "2"
    assert reg.get_version("gated", "2").tags["attune.promotion.reason"] == decision["reason"]


def test_direct_postgres_and_s3_path(postgres_s3_direct, s3_service, tmp_path):
    database_uri, artifact_root, _ = postgres_s3_direct
    bucket = artifact_root.removeprefix("s3://").split("/", 1)[0]
    reg = Registry(database_uri, artifact_root)
    s3 = s3_service.client()
    _aliases_and_integrity(reg, s3, bucket, "john", tmp_path)
    reg.register_candidate("jane", fake_model_dir(tmp_path / "jane"), record("jane"))
    _erase(reg, s3, bucket, database_uri, "john", keep="jane")
