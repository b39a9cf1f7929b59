"""A pretraining run in MLflow, through the registry: experiment base.<name>, params, per-step curves."""
from __future__ import annotations

import pytest

from cluster import get_settings
from tests.registry_helpers import sqlite_registry
from train.pretrain.config import PretrainConfig
from train.pretrain.track import log_pretrain_run, pretrain_record

OUTPUT = {
    "name": "wiki", "model_dir": "/models/wiki", "steps": 40, "initial_eval_perplexity": 4100.0,
    "final_eval_perplexity": 700.0, "tokens_per_s": 6500.0, "parameters": 1_007_744, "restarts": 1,
    "vocab_size": 4096, "zero3_shards": None,
    "history": [{"step": 0, "eval_loss": 8.3, "eval_perplexity": 4100.0},
                {"step": 20, "eval_loss": 6.6, "eval_perplexity": 750.0, "train_loss": 7.2, "lr": 1e-3},
                {"step": 40, "eval_loss": 6.5, "eval_perplexity": 700.0, "train_loss": 6.4, "lr": 0.0}],
}


def test_record_carries_lineage_params_and_step_history():
    config = PretrainConfig(name="wiki", corpus="/data/wiki.txt", preset="tiny", max_steps=40)
    record = pretrain_record(config, OUTPUT, "c" * 64)
    assert record.lineage.kind == "pretrain" and record.lineage.base == "tiny"
    assert record.lineage.data_hash == "c" * 64 and record.lineage.data_uri == "/data/wiki.txt"
    assert record.params["max_steps"] == 40 and record.params["effective_tokenizer"] == "train"
    assert record.metrics["final_eval_perplexity"] == 700.0 and "zero3_shards" not in record.metrics
    assert [row["step"] for row in record.history] == [0, 20, 40]


def test_logged_run_has_per_step_curves_in_experiment_base_name(tmp_path):
    reg = sqlite_registry(tmp_path / "store")
    settings = get_settings(home=str(tmp_path / "home"), mlflow_tracking_uri=reg.tracking_uri,
                            mlflow_artifact_root=reg.artifact_root)
    config = PretrainConfig(name="wiki", corpus="/data/wiki.txt", init="minilm", max_steps=40)
    run_id = log_pretrain_run(settings, config, OUTPUT, {"corpus_hash": "c" * 64})
    run = reg.client.get_run(run_id)
    assert reg.client.get_experiment(run.info.experiment_id).name == "base.wiki"
    assert run.info.status == "FINISHED" and run.info.run_name == "pretrain-wiki"
    assert run.data.tags["attune.kind"] == "pretrain" and run.data.tags["attune.base"] == "minilm"
    assert run.data.params["init"] == "minilm" and run.data.params["model_dir"] == "/models/wiki"
    assert run.data.metrics["initial_eval_perplexity"] == pytest.approx(4100.0)
    curve = sorted((m.step, m.value) for m in reg.client.get_metric_history(run_id, "eval_perplexity"))
    assert curve == [(0, 4100.0), (20, 750.0), (40, 700.0)]
    assert [m.step for m in reg.client.get_metric_history(run_id, "train_loss")] == [20, 40]
    assert "step" not in run.data.metrics  # the step is the x-axis, not a metric
