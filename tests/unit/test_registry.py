"""The registry API on the embedded default (SQLite + a local folder): no Ray, no training."""
from __future__ import annotations

import json
import os

import pytest

from registry import ArtifactIntegrityError, InvalidTenantError, NoChampionError, RegistryError, TenantNotFoundError
from tests.registry_helpers import fake_model_dir, record, register_concurrently, sqlite_registry


@pytest.fixture
def reg(tmp_path):
    return sqlite_registry(tmp_path / "store")


@pytest.mark.parametrize("bad", ["", "John", "jo hn", "../etc", "a/b", "-x", "x" * 64, "tenant.john", None])
def test_invalid_tenant_ids_are_rejected_with_the_rule(reg, tmp_path, bad):
    with pytest.raises(InvalidTenantError, match=r"invalid tenant id .*must match"):
        reg.register_candidate(bad, fake_model_dir(tmp_path / "m"), record())
    assert reg.list_tenants() == []


def test_version_carries_lineage_metrics_and_checksum_and_run_history(reg, tmp_path):
    version = reg.register_candidate("john", fake_model_dir(tmp_path / "m"), record())
    assert version.version == "1" and version.aliases == ["challenger"]
    assert version.metrics["test_macro_f1"] == pytest.approx(0.9)
    assert version.temperature == pytest.approx(1.7) and version.labels == ["negative", "positive"]
    assert len(version.checksum) == 64
    for key in ("attune.base", "attune.data_hash", "attune.code_version", "attune.rows.test", "attune.data_uri"):
        assert version.tags[key]
    run = reg.client.get_run(version.run_id)
    assert run.data.params["lr"] == "0.0001" and run.data.tags["attune.base"] == "minilm"
    curve = reg.client.get_metric_history(version.run_id, "val_macro_f1")
    assert [(m.step, m.value) for m in curve] == [(1, 0.6), (2, 0.8)]
    assert reg.client.get_experiment(run.info.experiment_id).name == "tenant.john"


def test_the_largest_label_set_the_data_limits_allow_is_kept_whole(reg, tmp_path):
    """500 labels of 100 characters (ATTUNE_MAX_LABELS, ATTUNE_MAX_LABEL_CHARS): about 52,000 characters of
    JSON, past the 8,000 MLflow keeps of a run tag. The version keeps the list whole; the run's tag stays
    valid JSON and says where the list is."""
    labels = [f"{i:03d}-" + "x" * 96 for i in range(500)]
    rec = record()
    rec = rec.model_copy(update={"lineage": rec.lineage.model_copy(update={"labels": labels})})
    version = reg.register_candidate("john", fake_model_dir(tmp_path / "m"), rec)
    assert version.labels == labels and reg.get_version("john", version.version).labels == labels
    run_tag = json.loads(reg.client.get_run(version.run_id).data.tags["attune.labels"])
    assert run_tag["count"] == 500 and "attune.json" in run_tag["see"]


def test_no_champion_and_unknown_tenant_say_what_to_run(reg, tmp_path):
    with pytest.raises(TenantNotFoundError, match="attune finetune --tenant nobody"):
        reg.champion("nobody")
    reg.register_candidate("john", fake_model_dir(tmp_path / "m"), record())
    with pytest.raises(NoChampionError, match="attune registry promote john <version>"):
        reg.champion("john")


def test_promote_then_rollback_follows_the_champion_history(reg, tmp_path):
    for _ in range(3):
        reg.register_candidate("john", fake_model_dir(tmp_path / "m"), record())
    with pytest.raises(NoChampionError):
        reg.rollback("john")
    assert reg.promote("john", "1")["previous"] is None
    with pytest.raises(RegistryError, match="no previous champion"):
        reg.rollback("john")
    reg.promote("john", "3", reason="better")
    assert reg.champion("john").version == "3"
    assert reg.rollback("john") == {"tenant": "john", "champion": "1", "previous": "3"}
    assert reg.champion("john").version == "1"
    shown = reg.show("john")
    assert shown["aliases"] == {"champion": "1", "challenger": "3"}
    v3 = next(v for v in shown["versions"] if v["version"] == "3")
    assert v3["promotion"] == {"promoted": True, "reason": "better"}
    assert "rolled back to version 1" in v3["lineage"]["rolled_back"]
    rows = reg.list_tenants()
    assert [(r["tenant"], r["champion_version"]) for r in rows] == [("john", "1")]
    assert rows[0]["metrics"]["test_macro_f1"] == pytest.approx(0.9) and rows[0]["promoted_at"]


def test_download_verifies_the_checksum_and_refuses_a_corrupted_artifact(reg, tmp_path):
    version = reg.register_candidate("john", fake_model_dir(tmp_path / "m"), record())
    reg.promote("john", version.version)
    path, info = reg.download("john", "champion", tmp_path / "dl")
    assert (path / "model.safetensors").read_bytes() == b"weights" * 100 and info.version == "1"
    stored = tmp_path / "store" / "artifacts"
    weights = next(stored.rglob("model.safetensors"))
    weights.write_bytes(b"tampered" * 100)
    with pytest.raises(ArtifactIntegrityError, match="do not match the checksum"):
        reg.download("john", "champion", tmp_path / "dl2")
    assert not (tmp_path / "dl2").exists()


def test_registration_failing_midway_leaves_no_version_and_no_artifacts(reg, tmp_path, monkeypatch):
    reg.register_candidate("john", fake_model_dir(tmp_path / "m"), record())

    def broken(*args, **kwargs):
        raise RuntimeError("registry store went away")

    monkeypatch.setattr(reg.client, "create_model_version", broken)
    with pytest.raises(RegistryError, match="registry store went away"):
        reg.register_candidate("john", fake_model_dir(tmp_path / "m"), record())
    monkeypatch.undo()
    assert [v.version for v in reg.versions("john")] == ["1"]
    runs = list((tmp_path / "store" / "artifacts" / "tenant.john").iterdir())
    assert len(runs) == 1  # the failed run's artifacts are gone
    for version in reg.versions("john"):
        assert reg.download("john", version.version, tmp_path / f"dl{version.version}")


def test_twenty_concurrent_registrations_get_twenty_distinct_versions(reg, tmp_path):
    versions, errors = register_concurrently(reg, "john", fake_model_dir(tmp_path / "m"), 20)
    assert errors == []
    assert sorted(map(int, versions)) == list(range(1, 21))
    assert len(reg.versions("john")) == 20


def test_delete_tenant_erases_versions_runs_and_artifacts(reg, tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    for tenant in ("john", "jane"):
        reg.register_candidate(tenant, fake_model_dir(tmp_path / "m"), record(tenant))
    reg.promote("john", "1")
    summary = reg.delete_tenant("john")
    run_ids = summary.pop("run_ids")
    assert summary == {"tenant": "john", "deleted_versions": 1, "deleted_runs": 1, "purged": True}
    assert len(run_ids) == 1 and reg.client.get_experiment_by_name("tenant.jane") is not None
    assert not (tmp_path / "store" / "artifacts" / "tenant.john").exists()
    assert (tmp_path / "store" / "artifacts" / "tenant.jane").exists()
    assert reg.client.get_experiment_by_name("tenant.john") is None
    with pytest.raises(TenantNotFoundError):
        reg.show("john")
    with pytest.raises(TenantNotFoundError, match="nothing in the registry"):
        reg.delete_tenant("john")
    assert [r["tenant"] for r in reg.list_tenants()] == ["jane"]
    # deleting artifacts points MLflow at the registry for a moment, and MLflow exports that as
    # MLFLOW_TRACKING_URI, which attune reads as a setting: the environment is left as it was
    assert "MLFLOW_TRACKING_URI" not in os.environ
    # the tenant can start over
    assert reg.register_candidate("john", fake_model_dir(tmp_path / "m"), record()).version == "1"


def test_deleting_artifacts_keeps_the_users_mlflow_tracking_uri(tmp_path, monkeypatch):
    from registry import _store

    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://users-own-mlflow:5000")
    (tmp_path / "run" / "artifacts" / "model").mkdir(parents=True)
    _store.delete_artifacts(str(tmp_path / "run" / "artifacts"), f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert not (tmp_path / "run").exists() and os.environ["MLFLOW_TRACKING_URI"] == "http://users-own-mlflow:5000"


def test_every_champion_in_one_query_agrees_with_the_public_api(tmp_path, monkeypatch):
    from registry import _store

    reg = sqlite_registry(tmp_path / "store")
    for tenant in ("ann", "bob", "cat"):
        reg.register_candidate(tenant, fake_model_dir(tmp_path / tenant, tenant.encode()), record(tenant))
    reg.promote("ann", "1")
    reg.register_candidate("ann", fake_model_dir(tmp_path / "ann2", b"two"), record("ann"))
    reg.promote("ann", "2")
    reg.promote("cat", "1")
    direct = reg.champion_versions()
    assert direct == {"ann": "2", "cat": "1"}  # bob has no champion
    monkeypatch.setattr(_store, "aliases_in_one_query", lambda *args: None)  # a store without SQL access
    assert reg.champion_versions() == direct
