"""A training worker killed mid-run: Ray Train restarts the group from the last checkpoint."""
from __future__ import annotations

import os
import signal
import threading

from tests.waiting import wait_for
from train import FinetuneConfig, Predictor
from train.finetune.driver import finetune


def _registered_checkpoint(storage):
    """True once Ray Train has registered a checkpoint (its manager snapshot is written then)."""
    return storage.exists() and any(storage.glob("finetune-*/checkpoint_manager_snapshot.json"))


def _alive_train_workers():
    from ray.util.state import list_actors

    return list_actors(filters=[("class_name", "=", "RayTrainWorker"), ("state", "=", "ALIVE")])


def test_killed_worker_resumes_from_checkpoint(ray_session, tiny_base, demo_dir, tmp_path):
    config = FinetuneConfig(tenant="john", data=str(demo_dir / "john.jsonl"), base=str(tiny_base),
                            num_workers=2, zero_stage=2, epochs=6, patience=10, batch_size=8,
                            max_seq_len=24, lr=1e-3, max_failures=2, out=tmp_path / "model",
                            register_model=False)
    outcome: dict = {}

    def run():
        try:
            outcome["summary"] = finetune(config, settings=ray_session)
        except BaseException as exc:  # surfaced by the assertion below
            outcome["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    storage = ray_session.ray_storage_dir
    wait_for(lambda: _registered_checkpoint(storage) or not thread.is_alive(), 300, "the first epoch checkpoint")
    assert thread.is_alive(), f"training ended before a worker could be killed: {outcome}"
    victims = [a for a in _alive_train_workers() if a.pid]
    assert len(victims) == 2
    os.kill(victims[-1].pid, signal.SIGKILL)

    thread.join(timeout=600)
    assert not thread.is_alive(), "training did not finish within 10 minutes after the kill"
    assert "error" not in outcome, outcome.get("error")
    metrics = outcome["summary"]["metrics"]
    assert metrics["restarts"] >= 1  # the loop resumed from a checkpoint at least once
    assert metrics["epochs_run"] == 6
    assert [h["epoch"] for h in outcome["summary"]["history"]] == [1, 2, 3, 4, 5, 6]
    assert Predictor(outcome["summary"]["model_dir"]).predict(["gold rises 2%"])[0]["label"]
