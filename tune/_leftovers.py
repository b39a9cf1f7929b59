"""What a search's trials can leave behind on the cluster, and getting it back.

When the search ends, Tune kills the trial actors still running (after a 5 s grace). A trial owns
its Ray Train controller, so the controller dies with it; but a placement group that a controller
creates lives until the *job* ends, and Ray Train frees it after a controller's death only once
the worker group has started (its ``PlacementGroupCleaner`` learns the group then). A trial cut
while its workers were starting therefore keeps its CPUs reserved for as long as the driver runs,
and the export of the best trial so far (``tune._budget``) would wait for them forever.

So the driver notes its job's live placement groups before ``Tuner.fit`` and removes the ones the
search created and left: after ``fit`` returns, every trial (and so every Train run) of the search
is gone, so nothing of this job can still be using them.
"""
from __future__ import annotations

import logging
import time
from typing import Optional

from tune._errors import TuneError

logger = logging.getLogger("attune.tune")

LIVE = ("PENDING", "PREPARED", "CREATED", "RESCHEDULING")
RESOURCE_WAIT_S = 120.0
CONTROLLER_EXIT_S = 15.0


def live_groups() -> Optional[set[str]]:
    """Ids of this job's placement groups that hold or wait for resources (None: Ray's state API,
    which needs the dashboard, cannot say)."""
    import ray
    from ray.util.state import list_placement_groups

    context = ray.get_runtime_context()
    try:
        groups = list_placement_groups(address=context.gcs_address, limit=10_000, raise_on_missing_output=False,
                                       filters=[("creator_job_id", "=", context.get_job_id())])
    except Exception as exc:  # noqa: BLE001 - without the state API the search still works; say so
        logger.warning("cannot list placement groups (%s); a trial cut while starting may keep its CPUs "
                       "until this command ends", exc)
        return None
    return {g.placement_group_id for g in groups if g.state in LIVE}


def remove_new_groups(before: Optional[set[str]]) -> list[str]:
    """Remove this job's live placement groups that are not in ``before``; returns their ids.
    The Train controllers of the trials Tune has just killed die with them, within moments:
    wait for that first (at most ``CONTROLLER_EXIT_S``), so none makes a group after the check."""
    from ray._raylet import PlacementGroupID
    from ray.util.placement_group import PlacementGroup, remove_placement_group

    if before is None:
        return []
    _wait_for_controllers_to_exit()
    after = live_groups()
    if after is None:
        return []
    left = sorted(after - before)
    for group_id in left:
        try:
            remove_placement_group(PlacementGroup(PlacementGroupID.from_hex(group_id)))
        except Exception as exc:  # noqa: BLE001 - removed meanwhile by Ray Train's own cleaner
            logger.debug("placement group %s: %s", group_id, exc)
    if left:
        logger.warning("removed %d placement group(s) that stopped trials left behind: %s", len(left),
                       ", ".join(left))
    return left


def _wait_for_controllers_to_exit() -> None:
    import ray
    from ray.util.state import list_actors

    context = ray.get_runtime_context()
    deadline = time.monotonic() + CONTROLLER_EXIT_S
    while time.monotonic() < deadline:
        try:
            alive = list_actors(address=context.gcs_address, raise_on_missing_output=False,
                                filters=[("class_name", "=", "TrainController"), ("state", "=", "ALIVE"),
                                         ("job_id", "=", context.get_job_id())])
        except Exception:  # noqa: BLE001 - live_groups says so next
            return
        if not alive:
            return
        time.sleep(0.2)


def wait_for_resources(needs: dict[str, float], what: str, timeout_s: float = RESOURCE_WAIT_S) -> None:
    """Wait until the cluster has ``needs`` free (CPU, GPU); a clear error after ``timeout_s``."""
    import ray

    wanted = {k: v for k, v in needs.items() if k in ("CPU", "GPU") and v}
    deadline = time.monotonic() + timeout_s
    logged = False
    while True:
        free = ray.available_resources()
        short = {k: v for k, v in wanted.items() if free.get(k, 0.0) + 1e-9 < v}
        if not short:
            return
        if time.monotonic() > deadline:
            total = ray.cluster_resources()
            have = ", ".join(f"{free.get(k, 0.0):g} of {total.get(k, 0.0):g} {k}" for k in short)
            raise TuneError(f"{what} needs {_fmt(wanted)} but only {have} became free within {timeout_s:g} s; "
                            "another job holds the rest. Let it finish (see `ray status`), then run the "
                            "search again")
        if not logged:
            logger.info("%s is waiting for %s to become free", what, _fmt(wanted))
            logged = True
        time.sleep(0.5)


def _fmt(resources: dict[str, float]) -> str:
    return ", ".join(f"{v:g} {k}" for k, v in resources.items())
