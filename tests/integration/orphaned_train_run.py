"""Run as a script (``python -m tests.integration.orphaned_train_run HOME``) next to another Ray.

It starts attune's embedded Ray, starts a Ray Train run that holds one CPU, waits until the
run's training function runs (Ray Train has registered the run's placement group with its
cleaner by then), kills the run's controller with SIGKILL (as Ray kills a Tune trial's actors at
the end of a search), and prints
one JSON line: whether the run's placement group was removed within the time allowed, and how
long that took. Ray Train's ``PlacementGroupCleaner`` must remove it; it polls Ray's state API,
which fails on a machine with two Ray instances unless each worker knows its own cluster.
"""
from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time

from tests.waiting import wait_for

REMOVE_TIMEOUT_S = 60.0
START_TIMEOUT_S = 120.0


def _hold_a_cpu(config):
    with open(config["marker"], "w") as marker:
        marker.write("started")
    time.sleep(config["sleep_s"])


def _live_groups() -> list[str]:
    from ray.util import placement_group_table

    return [pg_id for pg_id, pg in placement_group_table().items() if pg["state"] == "CREATED"]


def _controller_pid(gcs_address: str):
    from ray.util.state import list_actors

    actors = list_actors(address=gcs_address, filters=[("class_name", "=", "TrainController"),
                                                        ("state", "=", "ALIVE")])
    return actors[0].pid if actors else None


def main(home: str) -> dict:
    import ray
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from cluster import get_settings, init_ray

    init_ray(get_settings(home=home, ray_num_cpus=2))
    gcs = ray.get_runtime_context().gcs_address
    marker = os.path.join(home, "training-started")
    trainer = TorchTrainer(_hold_a_cpu, train_loop_config={"sleep_s": 600, "marker": marker},
                           scaling_config=ScalingConfig(num_workers=1),
                           run_config=RunConfig(name="orphaned", storage_path=os.path.join(home, "runs")))
    threading.Thread(target=lambda: _fit_quietly(trainer), daemon=True).start()
    # no raise on a timeout: the script reports what it saw as JSON
    started = wait_for(lambda: os.path.exists(marker), START_TIMEOUT_S, "the training function",
                       raise_on_timeout=False)
    pid = _controller_pid(gcs)
    if not started or not pid or not _live_groups():
        return {"started": False, "training": bool(started), "controller_pid": pid, "groups": _live_groups()}
    os.kill(pid, signal.SIGKILL)
    killed = time.monotonic()
    removed = wait_for(lambda: not _live_groups(), REMOVE_TIMEOUT_S, "the group's removal",
                       raise_on_timeout=False) is not None
    # the raylet returns a removed group's CPUs a moment after the GCS marks it removed
    wait_for(lambda: ray.available_resources().get("CPU", 0.0) >= 2.0, REMOVE_TIMEOUT_S, "both CPUs",
             raise_on_timeout=False)
    return {"started": True, "removed": removed, "seconds": round(time.monotonic() - killed, 1),
            "left": _live_groups(), "available_cpus": ray.available_resources().get("CPU", 0.0)}


def _fit_quietly(trainer) -> None:
    try:
        trainer.fit()
    except BaseException:  # noqa: BLE001 - the controller is killed on purpose
        pass


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1])), flush=True)
    sys.stdout.flush()
    os._exit(0)  # the fit thread is blocked on the dead controller; the embedded Ray stops with us
