"""A pretraining run in MLflow, through the registry: experiment base.<name>, params, per-step curves as they
happen, and the export registered as the next version of base.<name> from that run."""
from __future__ import annotations

import re

import pytest

from cluster import get_settings
from tests.registry_helpers import sqlite_registry
from train.pretrain.config import PretrainConfig
from train.pretrain.track import opening_record, pretrain_record, register_pretrained

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


def test_a_live_run_gets_each_evaluation_then_registers_the_export_as_base_name(tmp_path):
    import json

    from registry import Registry
    from train._run import open_run, tracked

    reg = sqlite_registry(tmp_path / "store")
    settings = get_settings(home=str(tmp_path / "home"), mlflow_tracking_uri=reg.tracking_uri,
                            mlflow_artifact_root=reg.artifact_root)
    config = PretrainConfig(name="wiki", corpus="/data/wiki.txt", init="minilm", max_steps=40)
    export = tmp_path / "export"
    export.mkdir()
    (export / "config.json").write_text(json.dumps({"model_type": "bert"}))
    (export / "model.safetensors").write_bytes(b"w" * 100)
    with open_run(settings, "base.wiki", opening_record(config, "c" * 64)) as live:
        assert reg.client.get_run(live.run_id).info.status == "RUNNING"
        show = tracked(lambda view, event: None, live)
        for i, row in enumerate(OUTPUT["history"]):  # rank 0's events, as the driver reads them
            values = {k: v for k, v in row.items() if k != "step"}
            show(None, {"kind": "metrics", "step": row["step"], "time_ms": 1_000_000 + i * 1000, "metrics": values})
        output = {**OUTPUT, "model_dir": str(export)}
        summary = register_pretrained(settings, config, output, "c" * 64, live)
    run = reg.client.get_run(live.run_id)
    assert summary == {"mlflow_run_id": live.run_id, "base_version": "1", "base_uri": "models:/base.wiki/1"}
    assert reg.client.get_experiment(run.info.experiment_id).name == "base.wiki"
    assert run.info.status == "FINISHED" and re.fullmatch(r"pretrain-wiki-init-\d{8}-\d{6}", run.info.run_name)
    assert run.data.tags["attune.kind"] == "pretrain" and run.data.tags["attune.base"] == "minilm"
    assert run.data.tags["mlflow.source.name"] == "attune pretrain"
    assert run.data.params["init"] == "minilm" and run.data.params["model_dir"] == str(export)
    assert run.data.metrics["initial_eval_perplexity"] == pytest.approx(4100.0)
    curve = [(m.step, m.value, m.timestamp) for m in reg.client.get_metric_history(live.run_id, "eval_perplexity")]
    assert sorted(curve) == [(0, 4100.0, 1_000_000), (20, 750.0, 1_001_000), (40, 700.0, 1_002_000)]
    assert [m.step for m in reg.client.get_metric_history(live.run_id, "train_loss")] == [20, 40]
    assert "step" not in run.data.metrics  # the step is the x-axis, not a metric
    assert [i.dataset.digest for i in run.inputs.dataset_inputs] == ["c" * 36]
    version = Registry.from_settings(settings).client.get_model_version("base.wiki", "1")
    assert version.run_id == live.run_id and version.tags["attune.data_hash"] == "c" * 64
