"""The installed mpnet base, end to end: `attune finetune --base mpnet` (full and LoRA), predict, serving's
model classes and the MLflow model all answer alike.

Marked ``mpnet``: skipped unless `attune bases install mpnet` has put the base in the developer's
``ATTUNE_BASES_DIR`` (the suite never downloads it). Each fine-tune is small (96 of john's rows, one
epoch, 32 tokens, one worker): the test checks that every path takes the MPNet base, not its accuracy.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import INSTALLED_BASES_DIR, REPO_ROOT
from tests.registry_helpers import use_mlflow_store

pytestmark = [pytest.mark.e2e, pytest.mark.mpnet]
TEXTS = ["gold is up 150% in after-hours trading", "gold futures tumble 3% on profit-taking",
         "Barrick Gold names new chief financial officer"]


def _attune(env: dict, cwd: Path, *argv: str) -> dict:
    proc = subprocess.run([sys.executable, "-m", "cluster.cli", *argv, "--json"], cwd=cwd,
                          env={**env, "PYTHONPATH": str(REPO_ROOT)}, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _checkout(work: Path) -> dict:
    """``work`` laid out as a user's checkout with mpnet installed: ``.attune/bases/mpnet`` (a link to the
    installed base) under the default relative ATTUNE_HOME; the environment to run attune there in."""
    (work / ".attune" / "bases").mkdir(parents=True)
    (work / ".attune" / "bases" / "mpnet").symlink_to(INSTALLED_BASES_DIR / "mpnet")
    env = {k: v for k, v in os.environ.items() if k not in ("ATTUNE_HOME", "ATTUNE_BASES_DIR")}
    return {**env, "ATTUNE_LOG_LEVEL": "WARNING"}


@pytest.fixture(scope="module")
def mpnet_tenants(demo_dir, tmp_path_factory):
    """john fine-tuned on mpnet with each method: {method: finetune summary}, the env and folder that made them.

    As a user's checkout has it: the default ATTUNE_HOME (``.attune``, relative to the working directory)
    with the base in its ``bases/mpnet`` (here a link to the installed one), no ATTUNE_BASES_DIR."""
    work = tmp_path_factory.mktemp("mpnet-work")
    env = _checkout(work)
    runs = {}
    for method in ("full", "lora"):
        runs[method] = _attune(env, work, "finetune", "--tenant", f"john-{method}", "--data",
                               str(demo_dir / "john.jsonl"), "--base", "mpnet", "--method", method,
                               "--epochs", "1", "--max-train-rows", "96", "--max-seq-len", "32",
                               "--workers", "1", "--zero-stage", "0", "--no-promote")
    return runs, env, work


@pytest.mark.parametrize("method", ["full", "lora"])
def test_a_tenant_on_mpnet_answers_alike_in_predict_serving_and_mlflow(mpnet_tenants, method, monkeypatch):
    import mlflow.pyfunc
    import pandas as pd

    from registry import mean_pool_family, read_lora_adapter, read_manifest, resolve_base, scores, temperature_slope
    from serve._full import FullModel
    from serve._lora import LoraBank

    runs, env, work = mpnet_tenants
    home = work / ".attune"
    monkeypatch.setenv("ATTUNE_BASES_DIR", str(INSTALLED_BASES_DIR))  # this process resolves the base too
    summary = runs[method]
    model_dir = Path(summary["model_dir"])
    manifest = read_manifest(model_dir)
    assert (manifest["base"], manifest["method"]) == ("mpnet", method)
    base_dir = resolve_base("mpnet", None) if method == "lora" else model_dir
    assert mean_pool_family(base_dir) == "mpnet"  # pooled as the base's sentence-transformers config says

    predicted = _attune(env, work, "predict", "--model", str(model_dir), *[a for t in TEXTS for a in ("--text", t)])
    ours = predicted["predictions"]

    if method == "full":
        logits = FullModel(model_dir).logits(TEXTS, [32] * len(TEXTS))
    else:
        bank = LoraBank(resolve_base(manifest["base"]))
        slot = bank.add(read_lora_adapter(model_dir))
        logits = bank.logits([slot] * len(TEXTS), TEXTS, [32] * len(TEXTS))
    served = [scores(row, manifest["labels"], manifest["temperature"], temperature_slope(manifest)) for row in logits]
    assert [s["label"] for s in served] == [p["label"] for p in ours]
    for mine, theirs in zip(ours, served):
        assert theirs["scores"] == pytest.approx(mine["scores"], abs=1e-4)

    use_mlflow_store(monkeypatch, f"sqlite:///{(home / 'mlflow.db').resolve()}")
    loaded = mlflow.pyfunc.load_model(f"models:/tenant.john-{method}/{summary['model_version']}")
    pyfunc = loaded.predict(pd.DataFrame({"text": TEXTS})).to_dict("records")
    assert [p["label"] for p in pyfunc] == [p["label"] for p in ours]
    for mine, theirs in zip(ours, pyfunc):
        assert theirs["scores"] == pytest.approx(mine["scores"], abs=1e-4)


def test_pretraining_from_mpnet_exports_a_mean_pooled_mpnet(demo_dir, tmp_path):
    """`attune pretrain --init mpnet` continues MPNet with a masked-LM head, and its export keeps the base's
    mean pooling, so `--base <export>` fine-tunes a mean-pooled MPNet classifier."""
    from registry import mean_pool_family

    env = _checkout(tmp_path)
    corpus = tmp_path / "headlines.txt"
    rows = (demo_dir / "john.jsonl").read_text().splitlines()
    corpus.write_text("\n".join(json.loads(line)["text"] for line in rows))
    summary = _attune(env, tmp_path, "pretrain", "--name", "mpnet-headlines", "--corpus", str(corpus),
                      "--init", "mpnet", "--max-steps", "2", "--eval-every", "2", "--seq-len", "32",
                      "--batch-size", "4", "--workers", "1", "--zero-stage", "0", "--no-track")
    export = Path(summary["model_dir"])
    assert json.loads((export / "config.json").read_text())["model_type"] == "mpnet"
    assert mean_pool_family(export) == "mpnet"


def test_tuning_on_mpnet_exports_its_best_trial_on_mpnet(demo_dir, tmp_path):
    """`attune tune --base mpnet`: the trials (Ray Train workers in their own directories) find the installed
    base, and the best trial's export is an MPNet tenant."""
    from registry import read_manifest

    env = _checkout(tmp_path)
    space = tmp_path / "space.yaml"
    space.write_text("lr: {choice: [5.0e-5, 1.0e-4]}\nbatch_size: 16\nepochs: 1\n")
    summary = _attune(env, tmp_path, "tune", "--tenant", "john-tuned", "--data", str(demo_dir / "john.jsonl"),
                      "--base", "mpnet", "--space", str(space), "--trials", "1", "--workers", "1",
                      "--max-seq-len", "32", "--max-train-rows", "64", "--scheduler", "fifo", "--no-promote")
    manifest = read_manifest(Path(summary["model_dir"]))
    assert (manifest["base"], manifest["tenant"]) == ("mpnet", "john-tuned")
