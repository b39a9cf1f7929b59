"""What runs first in every Ray worker process of ours (Ray's ``worker_process_setup_hook``).

Ray's state API finds "the" cluster by ``RAY_API_SERVER_ADDRESS`` or ``RAY_ADDRESS``; without
either, by looking for GCS processes on the machine, and with two Ray instances on one machine
(two attune commands, or an attune command next to a test's Ray) it raises "Found multiple
active Ray instances". Ray Train's ``PlacementGroupCleaner`` polls that API from a worker: the
error kills its monitor thread, and a Train run whose controller then dies without shutting down
(a Tune trial killed at the end of a search, for one) keeps its placement group, and so its
CPUs, until the cluster stops. The next run waits for those CPUs forever.

So every worker points the state API at its own cluster: the dashboard address that cluster
records in its GCS. A worker is always in exactly one cluster, so this is never a guess.
"""
from __future__ import annotations

import logging
import os

logger = logging.getLogger("attune.cluster")

SETUP_HOOK = "cluster._worker_setup.point_state_api_at_own_cluster"
API_SERVER_VAR = "RAY_API_SERVER_ADDRESS"


def point_state_api_at_own_cluster() -> None:
    """Set ``RAY_API_SERVER_ADDRESS`` to this worker's cluster's dashboard. Never raises: a cluster
    without a dashboard has no state API to point at, and then nothing changes."""
    try:
        url = own_api_server_url()
    except Exception as exc:  # noqa: BLE001 - a worker must start even if this lookup fails
        logger.debug("not pointing Ray's state API at this cluster: %s", exc)
        return
    if url:
        os.environ[API_SERVER_VAR] = url


def own_api_server_url():
    """``http://HOST:PORT`` of the dashboard this worker's cluster records, or None without one."""
    from ray._private import ray_constants
    from ray.experimental import internal_kv

    address = internal_kv._internal_kv_get(ray_constants.DASHBOARD_ADDRESS,
                                           namespace=ray_constants.KV_NAMESPACE_DASHBOARD)
    return f"http://{address.decode()}" if address else None
