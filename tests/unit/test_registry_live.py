"""Live runs on the embedded store (SQLite + a local folder): a training's run is RUNNING while it trains,
gets its metrics as they happen, ends FINISHED, FAILED or KILLED with the error, carries MLflow's
standard tags and its dataset input, has a unique name, and registration uploads into it."""
from __future__ import annotations

import datetime as _dt

import pytest

from registry import TAG_ERROR, RegistryError, run_name
from tests.registry_helpers import fake_model_dir, record, sqlite_registry


@pytest.fixture
def reg(tmp_path):
    return sqlite_registry(tmp_path / "store")


def test_a_run_is_running_while_open_with_params_source_tags_and_its_dataset(reg):
    with reg.open_run("tenant.john", record()) as run:
        got = reg.client.get_run(run.run_id)
        assert got.info.status == "RUNNING" and got.info.run_name == "finetune-john"
        assert got.data.params["lr"] == "0.0001"
        tags = got.data.tags
        assert tags["mlflow.source.name"] == "attune finetune" and tags["mlflow.source.type"] == "LOCAL"
        assert tags["mlflow.source.git.commit"] == "abc123" and tags["mlflow.user"]
        assert tags["attune.data_hash"] == "d" * 64 and tags["attune.tenant"] == "john"
        (entry,) = got.inputs.dataset_inputs
        assert entry.dataset.digest == "d" * 36  # MLflow's column holds 36 characters of the data hash
        assert entry.dataset.source == '{"uri": "/data/john.jsonl"}' and entry.dataset.name == "john.jsonl"
        assert entry.dataset.source_type == "local"
        assert [(t.key, t.value) for t in entry.tags] == [("mlflow.data.context", "train")]
    assert reg.client.get_run(run.run_id).info.status == "FINISHED"


def test_metrics_are_logged_as_they_happen_with_their_steps_and_times(reg):
    with reg.open_run("tenant.john", record()) as run:
        run.log_metrics({"val_macro_f1": 0.6, "train_loss": 0.7, "note": "text is skipped"}, step=1,
                        timestamp_ms=1_000_000)
        assert reg.metric_history(run.run_id, "val_macro_f1") == [(1, 0.6)]  # visible while it runs
        run.log_metrics({"val_macro_f1": 0.8, "train_loss": 0.4}, step=2, timestamp_ms=1_060_000)
    history = reg.client.get_metric_history(run.run_id, "val_macro_f1")
    assert [(m.step, m.value, m.timestamp) for m in history] == [(1, 0.6, 1_000_000), (2, 0.8, 1_060_000)]
    assert "note" not in reg.client.get_run(run.run_id).data.metrics


@pytest.mark.parametrize("error, status", [(RuntimeError("worker 1 ran out of memory"), "FAILED"),
                                           (KeyboardInterrupt(), "KILLED")])
def test_a_failure_or_ctrl_c_ends_the_run_with_the_error_as_a_tag(reg, error, status):
    with pytest.raises(type(error)):
        with reg.open_run("tenant.john", record()) as run:
            run.log_metrics({"val_macro_f1": 0.5}, step=1)
            raise error
    got = reg.client.get_run(run.run_id)
    assert got.info.status == status and got.info.end_time is not None
    assert got.data.tags[TAG_ERROR] == f"{type(error).__name__}: {error}".strip()
    assert got.data.metrics["val_macro_f1"] == 0.5  # what it did before it stopped is kept


def test_run_names_say_what_they_are_and_are_unique_in_the_experiment(reg):
    name = run_name("finetune", "john", "lora", _dt.datetime(2026, 12, 7, 14, 15, 0))
    assert name == "finetune-john-lora-20261207-141500"
    rec = record().model_copy(update={"run_name": name})
    names = []
    for _ in range(3):
        with reg.open_run("tenant.john", rec) as run:
            names.append(run.name)
    assert names == [name, f"{name}-2", f"{name}-3"]
    assert sorted(r["run_name"] for r in reg.runs("tenant.john")) == sorted(names)


def test_registration_uploads_into_the_live_run_and_finishes_it(reg, tmp_path):
    rec = record()
    with reg.open_run("tenant.john", rec) as run:
        for epoch, row in enumerate(rec.history, 1):
            run.log_metrics(row, step=epoch)
        assert reg.client.get_run(run.run_id).info.status == "RUNNING"
        version = reg.register_candidate("john", fake_model_dir(tmp_path / "m"), rec.model_copy(
            update={"run_id": run.run_id}))
        assert reg.client.get_run(run.run_id).info.status == "FINISHED"
    assert version.run_id == run.run_id and version.aliases == ["challenger"]
    assert [r["run_id"] for r in reg.runs("tenant.john")] == [run.run_id]  # no second run
    assert {a.path for a in reg.client.list_artifacts(run.run_id, "model")} >= {"model/model.safetensors"}
    assert reg.metric_history(run.run_id, "val_macro_f1") == [(1, 0.6), (2, 0.8)]  # not logged twice
    assert reg.client.get_run(run.run_id).data.metrics["test_macro_f1"] == 0.9


def test_a_registration_that_fails_into_a_live_run_keeps_the_run_failed_without_its_files(reg, tmp_path,
                                                                                          monkeypatch):
    rec = record()

    def refused(*args, **kwargs):
        raise RuntimeError("alias write refused by the store")
    with pytest.raises(RegistryError, match=r"Nothing was registered: version 1 was removed and the model files "
                                            r"uploaded to run \w+ were deleted; the run is kept"):
        with reg.open_run("tenant.john", rec) as run:
            run.log_metrics({"val_macro_f1": 0.6}, step=1)
            monkeypatch.setattr(reg.client._client, "set_registered_model_alias", refused)
            reg.register_candidate("john", fake_model_dir(tmp_path / "m"), rec.model_copy(
                update={"run_id": run.run_id}))
    monkeypatch.undo()
    got = reg.client.get_run(run.run_id)
    assert got.info.status == "FAILED" and "alias write refused by the store" in got.data.tags[TAG_ERROR]
    # epoch 1 as it happened; epoch 2, which no live event brought, from the finished record's history
    assert reg.metric_history(run.run_id, "val_macro_f1") == [(1, 0.6), (2, 0.8)]
    assert reg.client.search_model_versions("name='tenant.john'") == []
    assert list((tmp_path / "store" / "artifacts").rglob("model.safetensors")) == []


def test_an_ended_run_logged_after_training_also_has_source_tags_and_its_dataset(reg, tmp_path):
    version = reg.register_candidate("john", fake_model_dir(tmp_path / "m"), record())
    got = reg.client.get_run(version.run_id)
    assert got.data.tags["mlflow.source.name"] == "attune finetune"
    assert [i.dataset.digest for i in got.inputs.dataset_inputs] == ["d" * 36]
