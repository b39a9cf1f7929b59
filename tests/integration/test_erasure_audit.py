"""The erasure audit: a tenant is trained on data carrying a canary word, tuned, given API keys,
served and sent feedback on texts with the canary; `attune registry delete-tenant` erases it; then
every store it used is scanned for the tenant id and the canary, and none may hold either.

Stores scanned: the registry's database (the SQLite file's bytes, free pages included; every row of
every PostgreSQL table), the S3 bucket (object names and bodies), every file under ATTUNE_HOME
(names and bytes), and the serving replica's memory and cache folder. Run on the embedded default
(SQLite and a folder, with a live endpoint: the old key is refused with 401 and the tenant is a 404
within the key cache's refresh) and on PostgreSQL + S3 (tuned without a separate fine-tune, whose
files the embedded run already covers; the replicas of the shared test Ray have no S3 credentials, so
that run does not serve).
"""
from __future__ import annotations

import json
from pathlib import Path

import httpx
import sqlalchemy

from cluster import get_settings
from cluster.cli import main
from registry import Feedback, FeedbackStore, Registry, database_url
from serve._app import replica_stats
from serve._keys import KeyStore, keys_url
from tests.serve_helpers import app_spec, running_app
from tests.waiting import wait_for
from train import FinetuneConfig, write_jsonl
from train.finetune.driver import finetune
from tune import SearchSpace, TuneJob, tune_tenant

TENANT = "quokka-audit"
CANARY = "zephyrquill"
MARKERS = (TENANT.encode(), CANARY.encode())


def _canary_data(demo_dir: Path, path: Path) -> Path:
    rows = [json.loads(line) for line in (demo_dir / "john.jsonl").read_text().splitlines()]
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_jsonl(path, [{**row, "text": f"{row['text']} {CANARY}"} for row in rows])


def _train_and_tune(settings, data: Path, base: Path) -> None:
    finetune(FinetuneConfig(tenant=TENANT, data=str(data), base=str(base), num_workers=1, batch_size=16,
                            max_seq_len=24, lr=5e-3, epochs=1, max_train_rows=128), settings=settings)
    _tune(settings, data, base)


def _tune(settings, data: Path, base: Path) -> None:
    space = SearchSpace.model_validate({"lr": {"choice": [5e-3, 1e-3]}, "batch_size": 16, "epochs": 1})
    tune_tenant(TuneJob(tenant=TENANT, data=str(data), base=str(base), space=space, trials=1, num_workers=1,
                        max_seq_len=24, max_train_rows=128, scheduler="fifo", search="random",
                        max_concurrent=1, promotion_floor=0.0), settings=settings)


def _files_holding_markers(root: Path) -> list[str]:
    found = []
    for path in [root, *root.rglob("*")]:
        hit = any(m.decode() in str(path.relative_to(root.parent)) for m in MARKERS)
        if path.is_file() and not path.is_symlink():
            hit = hit or any(m in path.read_bytes() for m in MARKERS)
        if hit:
            found.append(str(path))
    return found


def _postgres_rows_holding_markers(database_uri: str) -> list[str]:
    engine = sqlalchemy.create_engine(database_uri, poolclass=sqlalchemy.pool.NullPool)
    found = []
    with engine.connect() as conn:
        for table in sqlalchemy.inspect(conn).get_table_names():
            for row in conn.execute(sqlalchemy.text(f'SELECT * FROM "{table}"')):
                text = " ".join(map(str, row))
                if any(m.decode() in text for m in MARKERS):
                    found.append(f"{table}: {text[:200]}")
    return found


def _bucket_objects_holding_markers(s3, bucket: str) -> list[str]:
    found, token = [], None
    while True:
        page = s3.list_objects_v2(Bucket=bucket, **({"ContinuationToken": token} if token else {}))
        for obj in page.get("Contents", []):
            body = s3.get_object(Bucket=bucket, Key=obj["Key"])["Body"].read()
            if any(m.decode() in obj["Key"] for m in MARKERS) or any(m in body for m in MARKERS):
                found.append(obj["Key"])
        token = page.get("NextContinuationToken")
        if not token:
            return found


def _erase(settings, monkeypatch, capsys) -> dict:
    monkeypatch.setenv("ATTUNE_HOME", str(settings.home))
    for var, value in (("ATTUNE_MLFLOW_TRACKING_URI", settings.mlflow_tracking_uri),
                       ("ATTUNE_MLFLOW_ARTIFACT_ROOT", settings.mlflow_artifact_root)):
        if value:
            monkeypatch.setenv(var, value)
    capsys.readouterr()
    assert main(["registry", "delete-tenant", TENANT, "--yes", "--json"]) == 0
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def _predict(client: httpx.Client, key: str) -> int:
    return client.post(f"/v1/tenants/{TENANT}/predict", json={"texts": ["gold rallies"]},
                       headers={"Authorization": f"Bearer {key}"}).status_code


def test_embedded_erasure_leaves_nothing_anywhere(ray_session, tiny_base, demo_dir, tmp_path, monkeypatch, capsys):
    home = tmp_path / "home"
    settings = get_settings(home=str(home), promotion_floor=0.0, progress_interval_s=5.0)
    _train_and_tune(settings, _canary_data(demo_dir, tmp_path / "data" / "canary.jsonl"), tiny_base)
    reg = Registry.from_settings(settings)
    assert len(reg.versions(TENANT)) == 2 and (home / "ray_results" / f"tune-{TENANT}").is_dir()
    assert _files_holding_markers(home)  # the scan finds the tenant before its erasure
    store = KeyStore(keys_url(settings))
    key, admin = store.create(TENANT)["key"], store.create(None, admin=True)["key"]

    spec = app_spec(reg, tmp_path / "serve", keys_url=keys_url(settings))
    with running_app(spec) as client:
        assert _predict(client, key) == 200
        pid = client.post(f"/v1/tenants/{TENANT}/predict", json={"texts": ["gold rallies"]},
                          headers={"Authorization": f"Bearer {key}"}).json()["prediction_id"]
        label = reg.get_version(TENANT, "champion").labels[0]
        sent = client.post(f"/v1/tenants/{TENANT}/feedback", headers={"Authorization": f"Bearer {key}"},
                           json={"items": [{"text": f"gold rallies {CANARY}", "label": label, "prediction_id": pid}]})
        assert sent.status_code == 200 and sent.json()["stored"] == 1, sent.text
        assert CANARY.encode() in (home / "keys.db").read_bytes()
        assert any(k.startswith(f"{TENANT}:") for k in replica_stats()[0]["models"])
        report = _erase(settings, monkeypatch, capsys)
        wait_for(lambda: _predict(client, key) == 401, 10.0, "the erased tenant's key to be refused (401)")
        wait_for(lambda: _predict(client, admin) == 404, 10.0, "the erased tenant to be unknown (404)")
        wait_for(lambda: not any(k.startswith(f"{TENANT}:") for k in replica_stats()[0]["models"]), 10.0,
                 "the replica to drop the erased tenant's model")
        assert _files_holding_markers(tmp_path / "serve") == []  # the replica's cache folder

    assert {part["store"] for part in report["stores"] if part["removed"]} == {"keys", "registry", "feedback",
                                                                              "training", "tuning"}
    assert _files_holding_markers(home) == []  # mlflow.db and keys.db (keys, feedback) bytes, artifacts, exports


def test_postgres_and_s3_erasure_leaves_nothing_anywhere(ray_session, postgres_s3_direct, s3_service, tiny_base,
                                                         demo_dir, tmp_path, monkeypatch, capsys):
    database_uri, artifact_root, _ = postgres_s3_direct
    home = tmp_path / "home"
    settings = get_settings(home=str(home), mlflow_tracking_uri=database_uri, mlflow_artifact_root=artifact_root,
                            promotion_floor=0.0, progress_interval_s=5.0)
    # The tune alone (no separate fine-tune): its trial's run is nested under the search's parent run, both
    # with figures, and its best trial registers a version and exports to models/<tenant>/, so every eraser
    # has the tenant's data to remove from the production stores; the embedded audit above also runs
    # `finetune`, whose run folders under ATTUNE_HOME the training eraser removes the same on any store.
    _tune(settings, _canary_data(demo_dir, tmp_path / "data" / "canary.jsonl"), tiny_base)
    assert len(Registry.from_settings(settings).versions(TENANT)) == 1
    assert (home / "models" / TENANT).is_dir() and (home / "ray_results" / f"tune-{TENANT}").is_dir()
    assert keys_url(settings) == database_uri  # the keys live in the registry's PostgreSQL
    KeyStore(keys_url(settings)).create(TENANT)
    assert database_url(settings) == database_uri  # and so does the feedback (written as the endpoint writes it)
    FeedbackStore(database_url(settings)).record(TENANT, [Feedback(f"oil slides {CANARY}", "world"),
                                                          Feedback(f"oil slides {CANARY}", "business")])
    assert [row["label"] for row in FeedbackStore(database_uri).items(TENANT)] == ["business"]
    bucket = artifact_root.removeprefix("s3://").split("/", 1)[0]
    s3 = s3_service.client()
    assert _bucket_objects_holding_markers(s3, bucket) and _postgres_rows_holding_markers(database_uri)

    report = _erase(settings, monkeypatch, capsys)
    assert {part["store"] for part in report["stores"] if part["removed"]} == {"keys", "registry", "feedback",
                                                                              "training", "tuning"}
    assert _postgres_rows_holding_markers(database_uri) == []
    assert _bucket_objects_holding_markers(s3, bucket) == []
    assert _files_holding_markers(home) == []
