"""Registration and promotion are all or nothing (SQLite + a local folder, failures injected into the
real MlflowClient): a failed registration leaves no version or run, a retried write makes no twin, a
damaged stored copy never becomes champion, and concurrent promotions all reach the history."""
from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from registry import ArtifactIntegrityError, RegistryError
from tests.registry_helpers import fake_model_dir, record, sqlite_registry


@pytest.fixture
def reg(tmp_path):
    return sqlite_registry(tmp_path / "store")


def runs_of(reg, tenant: str = "john") -> list:
    experiment = reg.client.get_experiment_by_name(f"tenant.{tenant}")
    return reg.client.search_runs([experiment.experiment_id]) if experiment else []


def stored_weights(tmp_path: Path, reg, version: str) -> Path:
    run_id = reg.get_version("john", version).run_id
    return next((tmp_path / "store" / "artifacts").rglob(f"{run_id}/artifacts/model/model.safetensors"))


def landed_then(real, error: str):
    """``real`` that does its work on the first call and then raises ``error`` (a reply that never came)."""
    calls = []

    def call(*args, **kwargs):
        result = real(*args, **kwargs)
        calls.append(result)
        if len(calls) == 1:
            raise RuntimeError(error)
        return result
    return call


# -- 1. a failure after the version is created removes it ---------------------------------------------

@pytest.mark.parametrize("step", ["set_registered_model_alias", "get_model_version", "create_model_version"])
def test_a_failure_after_the_version_is_created_removes_the_version_and_the_run(reg, tmp_path, monkeypatch, step):
    inner = reg.client._client  # the real MlflowClient
    real = getattr(inner, step)
    if step == "create_model_version":  # the store made the version, then the connection broke
        monkeypatch.setattr(inner, step, landed_then(real, "connection to the store broke"))
    else:
        def broken(*args, **kwargs):
            raise RuntimeError(f"{step} refused by the store")
        monkeypatch.setattr(inner, step, broken)
    with pytest.raises(RegistryError, match=r"Nothing was kept: version 1 was removed, and run \w+ with its "
                                            r"artifacts was removed; register again"):
        reg.register_candidate("john", fake_model_dir(tmp_path / "m"), record())
    monkeypatch.undo()
    assert reg.versions("john") == []
    assert runs_of(reg) == []
    assert list((tmp_path / "store" / "artifacts").rglob("model.safetensors")) == []
    assert reg.register_candidate("john", fake_model_dir(tmp_path / "m"), record()).aliases == ["challenger"]


def test_an_incomplete_upload_is_caught_before_a_version_exists(reg, tmp_path, monkeypatch):
    inner = reg.client._client
    real = inner.log_artifacts

    def partial(run_id, local_dir, artifact_path=None):  # the weights never arrive
        real(run_id, local_dir, artifact_path)
        next((tmp_path / "store" / "artifacts").rglob(f"{run_id}/artifacts/model/model.safetensors")).unlink()
    monkeypatch.setattr(inner, "log_artifacts", partial)
    with pytest.raises(ArtifactIntegrityError, match=r"upload of .* is incomplete: missing \['model.safetensors'\]"
                                                     r".*no version had been made"):
        reg.register_candidate("john", fake_model_dir(tmp_path / "m"), record())
    assert reg.client.search_model_versions("name='tenant.john'") == []
    assert runs_of(reg) == []


# -- 2. retried writes make no twins ----------------------------------------------------------------------

@pytest.mark.parametrize("step", ["create_run", "create_model_version"])
def test_a_retried_write_whose_first_attempt_landed_makes_one_run_and_one_version(reg, tmp_path, monkeypatch, step):
    inner = reg.client._client
    monkeypatch.setattr(inner, step, landed_then(getattr(inner, step), "504 Gateway Time-out"))  # retryable
    version = reg.register_candidate("john", fake_model_dir(tmp_path / "m"), record())
    monkeypatch.undo()
    assert [v.version for v in reg.versions("john")] == ["1"] and version.version == "1"
    assert [r.info.run_id for r in runs_of(reg)] == [version.run_id]
    assert reg.get_run(version.run_id)["params"]["lr"] == "0.0001"


@pytest.mark.parametrize("step", ["create_run", "create_model_version"])
def test_a_request_that_mlflow_resent_leaves_no_twin(reg, tmp_path, monkeypatch, step):
    inner = reg.client._client
    real = getattr(inner, step)

    def sent_twice(*args, **kwargs):  # MLflow's HTTP retry re-POSTs after a read timeout
        real(*args, **kwargs)
        return real(*args, **kwargs)
    monkeypatch.setattr(inner, step, sent_twice)
    version = reg.register_candidate("john", fake_model_dir(tmp_path / "m"), record())
    monkeypatch.undo()
    assert [v.version for v in reg.versions("john")] == [version.version]
    assert [r.info.run_id for r in runs_of(reg)] == [version.run_id]
    assert reg.get_version("john", "challenger").version == version.version


# -- 3. a damaged stored copy never becomes champion ---------------------------------------------------

def two_versions(reg, tmp_path) -> None:
    for payload in (b"one", b"two"):
        reg.register_candidate("john", fake_model_dir(tmp_path / payload.decode(), payload), record())


@pytest.mark.parametrize("damage", ["corrupt", "missing"])
def test_promote_refuses_a_damaged_stored_copy_and_the_champion_stays(reg, tmp_path, damage):
    two_versions(reg, tmp_path)
    reg.promote("john", "1")
    weights = stored_weights(tmp_path, reg, "2")
    weights.write_bytes(b"tampered") if damage == "corrupt" else weights.unlink()
    with pytest.raises(ArtifactIntegrityError, match=r"refusing to make version 2 of tenant 'john' its champion "
                                                     r"\(the champion stays version 1\): "):
        reg.promote("john", "2")
    assert reg.champion("john").version == "1"
    assert reg.show("john")["champion_history"] == ["1"]
    assert "attune.promotion.promoted" not in reg.get_version("john", "2").tags


def test_rollback_refuses_a_damaged_previous_champion(reg, tmp_path):
    two_versions(reg, tmp_path)
    reg.promote("john", "1")
    reg.promote("john", "2")
    stored_weights(tmp_path, reg, "1").write_bytes(b"tampered")
    with pytest.raises(ArtifactIntegrityError, match=r"\(the champion stays version 2\): .*do not match the checksum"):
        reg.rollback("john")
    assert reg.champion("john").version == "2" and reg.show("john")["champion_history"] == ["1", "2"]


def test_the_gate_keeps_a_candidate_with_a_damaged_stored_copy_as_challenger(reg, tmp_path):
    two_versions(reg, tmp_path)
    reg.promote("john", "1")
    stored_weights(tmp_path, reg, "2").write_bytes(b"tampered")
    decision = reg.gate("john", "2", tmp_path / "two", lambda directory: 0.9, margin=0.0, floor=0.0,
                        evidence="10 test rows")
    assert not decision["promoted"] and "not promoted" in decision["reason"] and "checksum" in decision["reason"]
    assert reg.champion("john").version == "1"
    assert reg.get_version("john", "2").tags["attune.promotion.promoted"] == "false"


def test_a_promotion_whose_alias_write_fails_changes_nothing(reg, tmp_path, monkeypatch):
    two_versions(reg, tmp_path)
    reg.promote("john", "1")
    tags_before = reg.get_version("john", "2").tags

    def broken(*args, **kwargs):
        raise RuntimeError("alias write refused")
    monkeypatch.setattr(reg.client._client, "set_registered_model_alias", broken)
    with pytest.raises(RegistryError, match="The champion stays version 1; nothing was changed"):
        reg.promote("john", "2")
    monkeypatch.undo()
    assert reg.champion("john").version == "1" and reg.show("john")["champion_history"] == ["1"]
    assert reg.get_version("john", "2").tags == tags_before


# -- 4. concurrent promotions all reach the history --------------------------------------------------

def test_concurrent_promotions_all_reach_the_champion_history(reg, tmp_path):
    count = 8
    for i in range(count):
        reg.register_candidate("john", fake_model_dir(tmp_path / f"m{i}", f"v{i}".encode()), record())
    start, errors = threading.Barrier(count), []

    def one(version: str) -> None:
        try:
            start.wait()
            reg.promote("john", version)
        except Exception as exc:  # collected for the assertion
            errors.append(exc)

    threads = [threading.Thread(target=one, args=(str(v),)) for v in range(1, count + 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert errors == []
    history = reg.show("john")["champion_history"]
    assert sorted(history, key=int) == [str(v) for v in range(1, count + 1)]
    champion = reg.champion("john").version
    assert reg.rollback("john")["champion"] != champion  # the history knows a predecessor


def test_a_rollback_after_a_race_whose_winner_wrote_its_event_first_goes_to_the_runner_up(reg, tmp_path):
    """Two promotions at once: 2 writes its history event, then 1 does, then 1's alias write lands,
    then 2's. The champion is 2 and its entry is the oldest; 1 was champion in between."""
    from registry._promote import append_event

    two_versions(reg, tmp_path)
    for version in ("2", "1"):
        append_event(reg, "tenant.john", {"op": "promote", "version": version})
    for version in ("1", "2"):
        reg.client.set_registered_model_alias("tenant.john", "champion", version)
    assert reg.show("john")["champion_history"] == ["2", "1"] and reg.champion("john").version == "2"
    assert reg.rollback("john")["champion"] == "1"
    assert reg.champion("john").version == "1" and reg.show("john")["champion_history"] == ["1"]
    with pytest.raises(RegistryError, match="no previous champion"):
        reg.rollback("john")


def test_a_history_written_as_one_json_tag_carries_on(reg, tmp_path):
    two_versions(reg, tmp_path)
    reg.register_candidate("john", fake_model_dir(tmp_path / "three", b"three"), record())
    reg.client.set_registered_model_alias("tenant.john", "champion", "2")
    reg.client.set_registered_model_tag("tenant.john", "attune.champion_history", json.dumps(["1", "2"]))
    reg.promote("john", "3")
    assert reg.show("john")["champion_history"] == ["1", "2", "3"]
    assert reg.rollback("john")["champion"] == "2" and reg.rollback("john")["champion"] == "1"
    assert reg.show("john")["champion_history"] == ["1"]
