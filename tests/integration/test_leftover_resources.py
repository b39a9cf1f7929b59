"""Resources a dead Train run leaves reserved come back: with another Ray on the machine, after a
search, and (when they cannot) the export says so instead of waiting forever."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.waiting import wait_for
from tune._errors import TuneError
from tune._leftovers import live_groups, remove_new_groups, wait_for_resources

ROOT = Path(__file__).resolve().parents[2]


def test_a_killed_controllers_placement_group_is_removed_next_to_another_ray(ray_session, tmp_path):
    # ray_session is this process's Ray: the script's embedded Ray is a second instance.
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS")}
    done = subprocess.run([sys.executable, "-m", "tests.integration.orphaned_train_run", str(tmp_path / "home")],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=400)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    assert done.returncode == 0 and lines, f"rc={done.returncode}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    result = json.loads(lines[-1])
    assert result["started"], result
    assert result["removed"], f"the dead controller's placement group was never removed: {result}"
    assert result["available_cpus"] == 2.0, result


def _reserve_from_an_actor(cpus: float) -> str:
    """A placement group created by an actor that is then killed, as a Train controller's is."""
    import ray

    @ray.remote(num_cpus=0)
    class Creator:
        def reserve(self, n):
            from ray.util import placement_group

            group = placement_group([{"CPU": n}])
            ray.get(group.ready(), timeout=60)
            return group.id.hex()

    creator = Creator.remote()
    group_id = ray.get(creator.reserve.remote(cpus))
    ray.kill(creator)
    return group_id


def test_the_groups_dead_trials_left_are_removed_and_only_those(ray_session):
    import ray

    before = live_groups()
    assert before is not None
    kept = _reserve_from_an_actor(1)  # live before the "search": not ours to remove
    before = live_groups()
    left = _reserve_from_an_actor(1)
    wait_for(lambda: ray.available_resources().get("CPU", 0) == 0, 30, "both groups to hold their CPU")
    assert left in live_groups()  # the creator is dead, but Ray keeps the group while the job lives

    assert remove_new_groups(before) == [left]
    assert kept in live_groups() and left not in live_groups()
    from ray._raylet import PlacementGroupID
    from ray.util.placement_group import PlacementGroup, remove_placement_group

    remove_placement_group(PlacementGroup(PlacementGroupID.from_hex(kept)))
    wait_for(lambda: ray.available_resources().get("CPU", 0) == 2, 30, "the CPUs to come back")


def test_the_export_waits_for_cpus_and_says_why_when_they_stay_taken(ray_session):
    import ray

    before = live_groups()
    _reserve_from_an_actor(2)
    with pytest.raises(TuneError, match=r"the export of trial t1 needs 1 CPU but only 0 of 2 CPU became free "
                                        r"within 1 s; another job holds the rest"):
        wait_for_resources({"CPU": 1.0, "memory": 1.0}, "the export of trial t1", timeout_s=1)
    remove_new_groups(before)
    wait_for_resources({"CPU": 1.0}, "the export of trial t1", timeout_s=30)
    assert ray.available_resources().get("CPU", 0) >= 1
