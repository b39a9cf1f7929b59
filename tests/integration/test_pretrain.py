"""``attune pretrain`` on a local Ray: from-scratch learning, every ZeRO stage, ZeRO-3 sharding,
fault tolerance, --resume, export and fine-tuning from the export.

Runs are kept few and short; each one backs several checks:
- ``scratch``: tiny preset, trained WordPiece vocabulary, WikiText-2 (valid to train, test held out),
  2 workers, ZeRO-2, logged to MLflow; a worker is killed after the first checkpoint.
- stage 1 with CPU optimizer offload, a few steps.
- ZeRO-3 with activation checkpointing, whose driver side (the Ray Train controller) is killed after
  the first checkpoint, then continued with --resume; it reports each rank's shard.
"""
from __future__ import annotations

import json
import os
import signal
import threading
from pathlib import Path

import pytest

from tests.conftest import SHARED_DATA
from tests.waiting import wait_for
from train._errors import TrainError
from train.pretrain.config import PretrainConfig
from train.pretrain.corpus import CorpusError, corpus_hash, list_corpus_files
from train.pretrain.driver import pretrain, resume_config

WIKI = SHARED_DATA / "wikitext-2"
pytestmark = pytest.mark.skipif(not (WIKI / "valid.txt").is_file(), reason="WikiText-2 not found in ../shared/data")
TRAIN_TEXT, HELD_OUT = str(WIKI / "valid.txt"), str(WIKI / "test.txt")
SMALL = dict(corpus=TRAIN_TEXT, eval_corpus=HELD_OUT, preset="tiny", vocab_size=1024, num_workers=2,
             seq_len=32, batch_size=8, eval_sequences=16, lr=2e-3)


def _home(ray_session, tmp_path):
    return ray_session.model_copy(update={"home": tmp_path / "home"})


def _snapshot(settings, name: str) -> bool:
    """True once Ray Train has registered a checkpoint of the run (its manager snapshot exists)."""
    return (settings.ray_storage_dir / f"pretrain-{name}" / "checkpoint_manager_snapshot.json").is_file()


def _alive_train_workers():
    from ray.util.state import list_actors

    return list_actors(filters=[("class_name", "=", "RayTrainWorker"), ("state", "=", "ALIVE")])


@pytest.fixture(scope="module")
def scratch(ray_session, tmp_path_factory):
    """From scratch on WikiText-2 with 2 workers and ZeRO-2; one worker is killed after the first checkpoint."""
    settings = ray_session.model_copy(update={"home": tmp_path_factory.mktemp("pretrain-scratch")})
    config = PretrainConfig(name="wiki-tiny", corpus=TRAIN_TEXT, eval_corpus=HELD_OUT, preset="tiny",
                            tokenizer="train", vocab_size=2048, num_workers=2, zero_stage=2, max_steps=45,
                            seq_len=64, batch_size=16, lr=2e-3, eval_every=15, checkpoint_every=15,
                            eval_sequences=64, max_failures=2)
    outcome: dict = {}

    def run():
        try:
            outcome["summary"] = pretrain(config, settings=settings)
        except BaseException as exc:  # surfaced by the assertions below
            outcome["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    wait_for(lambda: _snapshot(settings, config.name) or not thread.is_alive(), 300, "the first checkpoint")
    assert thread.is_alive(), f"pretraining ended before a worker could be killed: {outcome}"
    victims = [a for a in _alive_train_workers() if a.pid]
    assert len(victims) == 2
    os.kill(victims[-1].pid, signal.SIGKILL)
    thread.join(timeout=600)
    assert not thread.is_alive(), "pretraining did not finish within 10 minutes after the kill"
    assert "error" not in outcome, outcome.get("error")
    return settings, config, outcome["summary"]


def test_from_scratch_halves_held_out_perplexity(scratch):
    _, _, summary = scratch
    assert summary["steps"] == 45 and summary["zero_stage"] == 2 and summary["num_workers"] == 2
    assert summary["final_eval_perplexity"] <= summary["initial_eval_perplexity"] / 2, summary
    assert summary["vocab_size"] == 2048  # the WordPiece vocabulary trained on the corpus
    assert summary["tokens_per_s"] > 0


def test_killed_worker_resumes_from_the_last_checkpoint(scratch):
    _, _, summary = scratch
    assert summary["restarts"] >= 1
    assert summary["resumed_from_step"] in (15, 30)  # a checkpointed step, not 0
    # the history is the one run's: step 0 evaluated once, every later evaluation once, in order
    assert [row["step"] for row in summary["history"]] == [0, 15, 30, 45]


def test_export_is_a_hugging_face_model_with_manifest_and_metrics(scratch):
    import torch
    from transformers import AutoModel, AutoModelForMaskedLM, AutoTokenizer

    _, config, summary = scratch
    model_dir = Path(summary["model_dir"])
    manifest = json.loads((model_dir / "attune.json").read_text())
    assert manifest["kind"] == "pretrain" and manifest["preset"] == "tiny" and manifest["steps"] == 45
    assert manifest["corpus_hash"] == corpus_hash(list_corpus_files(TRAIN_TEXT)) == summary["corpus_hash"]
    assert manifest["final_eval_perplexity"] == pytest.approx(summary["final_eval_perplexity"])
    metrics = [json.loads(line) for line in (model_dir / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [0, 15, 30, 45]
    mlm = AutoModelForMaskedLM.from_pretrained(str(model_dir))
    assert mlm.cls.predictions.decoder.weight is mlm.bert.embeddings.word_embeddings.weight  # tied
    encoder = AutoModel.from_pretrained(str(model_dir))
    assert torch.equal(encoder.embeddings.word_embeddings.weight, mlm.bert.embeddings.word_embeddings.weight)
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    assert len(tokenizer) == 2048 and tokenizer.mask_token == "[MASK]"
    assert not (Path(scratch[0].ray_storage_dir) / config.run_name).exists()  # the finished run is cleaned up


def test_run_is_tracked_in_mlflow_through_the_registry(scratch):
    from registry import Registry

    settings, config, summary = scratch
    client = Registry.from_settings(settings).client
    run = client.get_run(summary["mlflow_run_id"])
    assert run.data.params["preset"] == "tiny" and run.data.tags["attune.kind"] == "pretrain"
    assert run.data.metrics["final_eval_perplexity"] == pytest.approx(summary["final_eval_perplexity"])
    curve = sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, "eval_perplexity"))
    assert [step for step, _ in curve] == [0, 15, 30, 45]
    assert client.get_experiment(run.info.experiment_id).name == "base.wiki-tiny"
    # logged live (each evaluation as it happened), then the export registered from the same run
    assert run.info.status == "FINISHED" and run.info.run_name.startswith("pretrain-wiki-tiny-tiny-")
    assert summary["base_uri"] == "models:/base.wiki-tiny/1"
    version = client.get_model_version("base.wiki-tiny", "1")
    assert version.run_id == run.info.run_id and version.aliases == ["newest"]
    assert [i.dataset.digest for i in run.inputs.dataset_inputs] == [summary["corpus_hash"][:36]]


def test_finetune_accepts_the_pretrained_export(scratch, demo_dir, tmp_path):
    from train import FinetuneConfig, Predictor
    from train.finetune.driver import finetune

    settings, _, summary = scratch
    config = FinetuneConfig(tenant="john", data=str(demo_dir / "john.jsonl"), base="models:/base.wiki-tiny@newest",
                            num_workers=1, zero_stage=0, epochs=1, batch_size=32, max_seq_len=24, lr=1e-3,
                            max_train_rows=128, out=tmp_path / "john", register_model=False)
    result = finetune(config, settings=settings)  # from the registered base, downloaded through the registry
    manifest = json.loads((tmp_path / "john" / "attune.json").read_text())
    assert manifest["base"] == str(settings.home / "cache" / "bases" / "base.wiki-tiny" / "1")
    assert 0.0 <= result["metrics"]["test_accuracy"] <= 1.0
    assert Predictor(tmp_path / "john").predict(["gold rises 2%"])[0]["label"] in manifest["labels"]


def test_zero_stage_1_with_cpu_offload_continues_an_encoder_after_a_head_warm_up(ray_session, tiny_base, tmp_path):
    """--init DIR (an encoder without an MLM head) with --offload cpu: the new head trains alone first."""
    given = {**SMALL, "preset": None, "vocab_size": None, "init": str(tiny_base)}
    summary = pretrain(PretrainConfig(name="offload", zero_stage=1, offload="cpu", max_steps=4, eval_every=2,
                                      checkpoint_every=100, head_warmup_steps=6, track=False, **given),
                       settings=_home(ray_session, tmp_path))
    assert summary["zero_stage"] == 1 and summary["offload"] == "cpu" and summary["steps"] == 4
    warm = summary["head_warmup"]
    assert warm["steps"] == 6 and warm["eval_perplexity"] < summary["initial_eval_perplexity"]
    assert summary["final_eval_perplexity"] < summary["initial_eval_perplexity"]
    assert (Path(summary["model_dir"]) / "model.safetensors").is_file()


def _kill_controller() -> None:
    """Kill the run's Ray Train controller: the driver side of the run dies, as when its process is stopped."""
    from ray.util.state import list_actors

    controllers = [a for a in list_actors(filters=[("class_name", "=", "TrainController"), ("state", "=", "ALIVE")])
                   if a.pid]
    assert controllers
    for controller in controllers:  # this run's, and any finished run's not yet reaped
        os.kill(controller.pid, signal.SIGKILL)


def test_zero3_stopped_run_resumes_at_saved_step_with_sharded_parameters(ray_session, tmp_path):
    settings = _home(ray_session, tmp_path)
    config = PretrainConfig(name="z3", zero_stage=3, activation_checkpointing=True, max_steps=48, eval_every=12,
                            checkpoint_every=6, track=False, **SMALL)
    outcome: dict = {}

    def run():
        try:
            outcome["summary"] = pretrain(config, settings=settings)
        except BaseException as exc:
            outcome["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    wait_for(lambda: _snapshot(settings, "z3") or not thread.is_alive(), 300, "the first checkpoint")
    assert thread.is_alive(), f"the run ended before it could be stopped: {outcome}"
    _kill_controller()
    thread.join(timeout=120)
    assert isinstance(outcome.get("error"), TrainError), outcome
    assert "--name z3 --resume" in str(outcome["error"])  # the run and its checkpoint are kept
    assert not (settings.home / "bases" / "z3").exists()

    summary = pretrain(resume_config(settings, "z3", {}), settings=settings)
    assert summary["resumed_from_step"] is not None and summary["resumed_from_step"] >= 6
    assert summary["steps"] == 48 and summary["zero_stage"] == 3 and summary["activation_checkpointing"]
    steps = [row["step"] for row in summary["history"]]
    assert steps == sorted(set(steps)) and steps[0] == 0 and steps[-1] == 48  # continued, not restarted at 0
    for shard in summary["zero3_shards"]:  # each rank holds about 1/2 of the parameters between steps
        held = (shard["partition_numel"] + shard["resident_full_numel"]) / shard["total_numel"]
        assert 0.45 <= held <= 0.55, summary["zero3_shards"]
    assert summary["final_eval_perplexity"] < summary["initial_eval_perplexity"]


def test_whitespace_only_corpus_is_refused_and_leaves_nothing(ray_session, tmp_path):
    corpus = tmp_path / "blank.txt"
    corpus.write_text("\n   \n\t\n")
    settings = _home(ray_session, tmp_path)
    with pytest.raises(CorpusError, match="no non-blank text"):
        pretrain(PretrainConfig(name="blank", corpus=str(corpus), preset="tiny", track=False), settings=settings)
    assert not (settings.ray_storage_dir / "pretrain-blank").exists()
    assert not (settings.home / "bases").exists()


def _cuda_devices() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


@pytest.mark.gpu  # skipped without CUDA by tests/conftest.py
@pytest.mark.parametrize("preset, stage", [("base", 2), ("base", 3), ("large", 2), ("large", 3)])
def test_gpu_base_and_large_train_in_bf16(ray_session, tmp_path, preset, stage):
    """On GPU nodes: base and large (activation checkpointing on) train with ZeRO-2/3 in bf16."""
    summary = pretrain(PretrainConfig(name=f"gpu-{preset}-z{stage}", corpus=TRAIN_TEXT, eval_corpus=HELD_OUT,
                                      preset=preset, tokenizer="minilm", num_workers=min(2, _cuda_devices()),
                                      zero_stage=stage, max_steps=30, seq_len=128, batch_size=8, eval_every=15,
                                      checkpoint_every=1000, track=False, use_gpu=True),
                       settings=_home(ray_session, tmp_path))
    assert summary["steps"] == 30 and summary["zero_stage"] == stage and summary["activation_checkpointing"]
    assert summary["peak_gpu_memory_mb"] > 0 and summary["tokens_per_s"] > 0
    assert summary["final_eval_perplexity"] < summary["initial_eval_perplexity"]
