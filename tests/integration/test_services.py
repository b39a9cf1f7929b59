"""MLflow against the real services: PostgreSQL holds the rows, S3 holds the artifact bytes.

    .venv/bin/python -m pytest tests/integration/test_services.py -q
"""
from __future__ import annotations

import uuid
from pathlib import Path

import sqlalchemy

from tests.integration.service_fixtures import (  # noqa: F401
    mlflow_production, postgres_s3_direct, postgres_service, s3_env, s3_server, s3_service,
)


def _log_run(client, experiment_id: str, tmp_path: Path) -> tuple[str, bytes]:
    """One run with a metric and an artifact ``checks/payload.bin``; returns (run id, its bytes)."""
    payload = f"attune artifact {uuid.uuid4().hex}".encode()
    source = tmp_path / "upload" / "payload.bin"
    source.parent.mkdir()
    source.write_bytes(payload)
    run_id = client.create_run(experiment_id).info.run_id
    client.log_metric(run_id, "accuracy", 0.75)
    client.log_artifact(run_id, str(source), artifact_path="checks")
    client.set_terminated(run_id)
    return run_id, payload


def _assert_stored(client, run_id: str, payload: bytes, database_uri: str, experiment_id: str,
                   experiment_name: str, s3, bucket: str, tmp_path: Path) -> None:
    # (a) the bytes are an object in the bucket
    listing = s3.list_objects_v2(Bucket=bucket).get("Contents", [])
    keys = [obj["Key"] for obj in listing if obj["Key"].endswith(f"{run_id}/artifacts/checks/payload.bin")]
    assert len(keys) == 1, f"artifact not in s3://{bucket}: {[o['Key'] for o in listing]}"
    assert s3.get_object(Bucket=bucket, Key=keys[0])["Body"].read() == payload

    # (b) the experiment, run and metric are rows in PostgreSQL
    engine = sqlalchemy.create_engine(database_uri, poolclass=sqlalchemy.pool.NullPool)
    with engine.connect() as conn:
        assert conn.execute(sqlalchemy.text("SELECT name FROM experiments WHERE experiment_id = :id"),
                            {"id": int(experiment_id)}).all() == [(experiment_name,)]
        assert conn.execute(sqlalchemy.text("SELECT value FROM metrics WHERE run_uuid = :run AND "
                                            "key = 'accuracy'"), {"run": run_id}).all() == [(0.75,)]

    # (c) the client downloads the same bytes back
    local = client.download_artifacts(run_id, "checks/payload.bin", dst_path=str(tmp_path / "download"))
    assert Path(local).read_bytes() == payload


def test_mlflow_server_keeps_rows_in_postgres_and_artifacts_in_s3(mlflow_production, tmp_path):
    import mlflow

    prod = mlflow_production
    client = mlflow.MlflowClient(tracking_uri=prod.tracking_uri)
    name = f"services-{uuid.uuid4().hex[:8]}"
    experiment_id = client.create_experiment(name)
    assert client.get_experiment(experiment_id).artifact_location.startswith("mlflow-artifacts:")

    run_id, payload = _log_run(client, experiment_id, tmp_path)

    _assert_stored(client, run_id, payload, prod.database_uri, experiment_id, name,
                   prod.s3, prod.bucket, tmp_path)
    assert client.get_run(run_id).data.metrics == {"accuracy": 0.75}


def test_direct_postgres_tracking_uri_with_s3_artifact_root(postgres_s3_direct, s3_service, tmp_path):
    import mlflow

    database_uri, artifact_root, _env = postgres_s3_direct
    assert database_uri.startswith("postgresql+psycopg2://") and artifact_root.startswith("s3://")
    client = mlflow.MlflowClient(tracking_uri=database_uri, registry_uri=database_uri)
    name = f"direct-{uuid.uuid4().hex[:8]}"
    experiment_id = client.create_experiment(name, artifact_location=f"{artifact_root}/{name}")

    run_id, payload = _log_run(client, experiment_id, tmp_path)

    bucket = artifact_root.removeprefix("s3://").split("/", 1)[0]
    _assert_stored(client, run_id, payload, database_uri, experiment_id, name,
                   s3_service.client(), bucket, tmp_path)
