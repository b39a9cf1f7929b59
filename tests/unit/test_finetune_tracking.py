"""`attune finetune`'s MLflow run, live (SQLite store, no Ray: the Ray Train run is replaced by a stand-in
that writes rank 0's progress events and returns an export, as the real one does).

The run opens RUNNING before training with its params and dataset, gets each epoch's metrics from
rank 0's events with their own times, ends FINISHED with the registered model from that same run, or
FAILED / KILLED with the error; `--base models:/base.<name>@<alias>` trains from the registered base
and records the version-pinned URI."""
from __future__ import annotations

import contextlib
import json
import re
from pathlib import Path

import pytest

from cluster import ProgressWriter, get_settings
from registry import TAG_ERROR, Lineage, RunRecord
from tests.registry_helpers import fake_model_dir, sqlite_registry
from train import FinetuneConfig, TrainError
from train._run import metrics_event
from train.finetune import driver

EPOCHS = [(1, 0.9, 0.5, 1_000_000), (2, 0.6, 0.7, 1_090_000)]  # epoch, train_loss, val_macro_f1, time (ms)


class FakeResult:
    """What ``run_training`` returns: rank 0's export in the final checkpoint and the loop's return value."""

    def __init__(self, root: Path):
        fake_model_dir(root / "model")
        self.path = None
        self.checkpoint = self
        self.return_value = {"metrics": {"test_macro_f1": 0.8, "test_accuracy": 0.8, "temperature": 1.0},
                             "history": [{"epoch": e, "train_loss": loss, "val_macro_f1": f1}
                                         for e, loss, f1, _ in EPOCHS]}
        self.root = root

    @contextlib.contextmanager
    def as_directory(self):
        yield str(self.root)


@pytest.fixture
def env(tmp_path, monkeypatch, demo_dir):
    reg = sqlite_registry(tmp_path / "store")
    settings = get_settings(home=str(tmp_path / "home"), mlflow_tracking_uri=reg.tracking_uri,
                            mlflow_artifact_root=reg.artifact_root, progress_interval_s=10.0)
    monkeypatch.setattr(driver, "init_ray", lambda settings: None)
    seen: dict = {}

    def train(error=None):
        def run_training(config, settings, dataset, *, run_name, progress_file, **kwargs):
            (run,) = reg.runs("tenant.john")
            seen.update(run=run, config=config)
            writer = ProgressWriter(progress_file)
            for epoch, loss, f1, when in EPOCHS:  # rank 0 at each epoch's end (time faked to check it is kept)
                metrics_event(writer, epoch, {"train_loss": loss, "val_macro_f1": f1})
                lines = progress_file.read_text().splitlines()
                lines[-1] = json.dumps({**json.loads(lines[-1]), "time_ms": when})
                progress_file.write_text("\n".join(lines) + "\n")
            if error is not None:
                raise error
            return FakeResult(tmp_path / "checkpoint")
        monkeypatch.setattr(driver, "run_training", run_training)

    config = FinetuneConfig(tenant="john", data=str(demo_dir / "john.jsonl"), base="minilm", method="lora",
                            out=tmp_path / "out", promote=False)
    return reg, settings, config, train, seen


def test_the_run_is_running_while_training_and_finishes_with_the_model_and_epoch_curves(env):
    reg, settings, config, train, seen = env
    train()
    summary = driver.finetune(config, settings=settings)
    run = seen["run"]
    assert run["status"] == "RUNNING" and run["params"]["method"] == "lora"  # as training started
    assert re.fullmatch(r"finetune-john-lora-\d{8}-\d{6}", run["run_name"])
    version = reg.get_version("john", summary["model_version"])
    assert version.run_id == run["run_id"] and [r["run_id"] for r in reg.runs("tenant.john")] == [run["run_id"]]
    got = reg.client.get_run(run["run_id"])
    assert got.info.status == "FINISHED" and got.data.metrics["test_macro_f1"] == 0.8
    assert got.data.tags["mlflow.source.name"] == "attune finetune" and got.data.tags["mlflow.source.git.commit"]
    (entry,) = got.inputs.dataset_inputs
    assert entry.dataset.digest == summary["data_hash"][:36]
    assert json.loads(entry.dataset.source) == {"uri": config.data}
    curve = reg.client.get_metric_history(run["run_id"], "val_macro_f1")
    assert [(m.step, m.value, m.timestamp) for m in curve] == [(e, f1, t) for e, _, f1, t in EPOCHS]
    assert {a.path for a in reg.client.list_artifacts(run["run_id"], "model")} >= {"model/model.safetensors"}


@pytest.mark.parametrize("error, status", [(TrainError("worker 1 died"), "FAILED"), (KeyboardInterrupt(), "KILLED")])
def test_a_failed_or_interrupted_training_ends_its_run_with_the_error(env, error, status):
    reg, settings, config, train, _ = env
    train(error)
    with pytest.raises(type(error)):
        driver.finetune(config, settings=settings)
    (run,) = reg.runs("tenant.john")
    assert run["status"] == status and run["tags"][TAG_ERROR] == f"{type(error).__name__}: {error}".strip()
    assert reg.metric_history(run["run_id"], "val_macro_f1") == [(1, 0.5), (2, 0.7)]  # the epochs it did finish
    assert reg.client.search_model_versions("name='tenant.john'") == []


def test_finetune_from_a_registered_base_trains_on_its_files_and_records_the_pinned_uri(env, tmp_path):
    reg, settings, config, train, seen = env
    base = tmp_path / "base"
    base.mkdir()
    (base / "config.json").write_text(json.dumps({"model_type": "bert"}))
    lineage = Lineage(kind="pretrain", base="tiny", data_uri="/c.txt", data_hash="c" * 64, code_version="abc123",
                      attune_version="0")
    reg.register_base("wiki", base, RunRecord(run_name="pretrain-wiki", lineage=lineage))
    train()
    summary = driver.finetune(config.model_copy(update={"base": "models:/base.wiki@newest"}), settings=settings)
    cached = settings.home / "cache" / "bases" / "base.wiki" / "1"
    assert seen["config"].base == str(cached)  # the workers load the downloaded folder
    version = reg.get_version("john", summary["model_version"])
    assert version.tags["attune.base"] == "models:/base.wiki/1"
    assert reg.get_run(version.run_id)["params"]["base"] == "models:/base.wiki/1"
