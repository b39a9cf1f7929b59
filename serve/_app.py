"""Building, deploying, inspecting and tearing down the Serve application ``attune``."""
from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Optional

from ray import serve as ray_serve

from serve._config import AppSpec
from serve._endpoint import Endpoint

APP_NAME = "attune"
DEPLOYMENT = "Endpoint"
STATE_FILE = "serve.json"

# Ray Serve reads these when its modules are imported, in each of its processes, so they travel as
# environment variables: to the replicas with the deployments, to the controller and the proxy
# through ``deploy``. The proxy reaches the replicas over Serve's gRPC channel
# instead of Ray actor calls, and user code and the handle's router run on the replica's own event
# loop instead of an extra thread and loop each: fewer hand-offs on every request.
# Any ``RAY_SERVE_*`` variable set where the application is deployed overrides or adds to these.
SERVE_RAY_ENV = {
    "RAY_SERVE_USE_GRPC_BY_DEFAULT": "1",
    "RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD": "0",
    "RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP": "0",
}


def serve_ray_env() -> dict:
    """:data:`SERVE_RAY_ENV` with the ``RAY_SERVE_*`` variables of this process on top."""
    return {**SERVE_RAY_ENV, **{k: v for k, v in os.environ.items() if k.startswith("RAY_SERVE_")}}


def build_app(spec: AppSpec):
    """The bound application: the ``Endpoint`` deployment, which serves HTTP and holds the models.

    Past ``model.max_queued_requests`` waiting requests per HTTP proxy, Serve answers 429 with
    ``Retry-After`` instead of queueing without bound.
    """
    from ray.serve.config import BackpressureConfig

    cfg = spec.config.model
    return Endpoint.options(
        autoscaling_config=cfg.autoscaling.ray_options(),
        max_ongoing_requests=cfg.max_ongoing_requests,
        max_queued_requests=cfg.max_queued_requests,
        backpressure_config=BackpressureConfig(status_code=429, retry_after_s=cfg.queue_full_retry_after_s),
        ray_actor_options={"num_cpus": cfg.num_cpus, "num_gpus": cfg.num_gpus,
                           "runtime_env": {"env_vars": serve_ray_env()}},  # merged by Ray with the job's
        logging_config={"enable_access_log": spec.config.access_log},
    ).bind(spec.model_dump())


def app_builder(args: dict):
    """Ray Serve application builder: the import path ``serve:app_builder`` for ``serve run``,
    a Serve config file or a KubeRay ``RayService``.

    ``args`` are the keys of a serve config file (``serve/configs/example.yaml``) plus an optional
    ``insecure_no_auth: true``; the registry and the key store come from the ``ATTUNE_*`` environment
    of the cluster (e.g. ``ATTUNE_MLFLOW_TRACKING_URI``), as for ``attune serve up``.
    """
    from cluster import get_settings
    from serve._config import parse_config

    args = dict(args or {})
    insecure = bool(args.pop("insecure_no_auth", False))
    spec = AppSpec.from_settings(get_settings(), parse_config(args, "the serve application's args"),
                                 insecure_no_auth=insecure)
    return build_app(spec)


def deploy(spec: AppSpec, *, host: str = "127.0.0.1", port: int = 8000) -> str:
    """Start Serve's HTTP proxy on ``host:port`` (if Serve is not running yet) and deploy; returns the URL."""
    ray_serve.start(http_options={"host": host, "port": port},
                    logging_config={"enable_access_log": spec.config.access_log},
                    controller_options={"runtime_env": {"env_vars": serve_ray_env()}})  # the proxy inherits it
    ray_serve.run(build_app(spec), name=APP_NAME, route_prefix="/", blocking=False)
    return f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port}"


def wait_ready(url: str, timeout_s: float) -> bool:
    """Poll ``url/readyz`` until it answers 200 or ``timeout_s`` passes."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if probe(url) == 200:
            return True
        time.sleep(0.5)
    return False


def probe(url: str, path: str = "/readyz", timeout_s: float = 5.0) -> Optional[int]:
    try:
        with urllib.request.urlopen(url + path, timeout=timeout_s) as resp:
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except (OSError, ValueError):
        return None


def teardown(shutdown_serve: bool = True) -> bool:
    """Delete the application; shut Serve down too when no other application is left.

    Returns False when Serve was not running on this cluster (nothing to remove).
    """
    from ray.serve.exceptions import RayServeException

    try:
        ray_serve.delete(APP_NAME)
    except RayServeException:
        return False
    if shutdown_serve and not ray_serve.status().applications:
        ray_serve.shutdown()
    return True


def status(url: Optional[str] = None) -> dict:
    """Deployments, replicas with their loaded models, and the HTTP health (``attune serve status``)."""
    from ray.serve.exceptions import RayServeException

    try:
        app = ray_serve.status().applications.get(APP_NAME)
    except RayServeException:  # Serve itself is not running on this cluster
        app = None
    if app is None:
        return {"running": False, "app": APP_NAME}
    deployments = {name: {"status": str(getattr(d.status, "value", d.status)),
                          "replica_states": {str(getattr(k, "value", k)): v for k, v in d.replica_states.items()},
                          "message": d.message} for name, d in app.deployments.items()}
    return {"running": True, "app": APP_NAME, "status": str(getattr(app.status, "value", app.status)),
            "url": url, "healthz": probe(url, "/healthz") if url else None,
            "readyz": probe(url, "/readyz") if url else None,
            "deployments": deployments, "replicas": replica_stats()}


def replica_stats(timeout_s: float = 10.0) -> list[dict]:
    """Each live ``Endpoint`` replica's loaded models and shared bases."""
    import ray
    from ray.util.state import list_actors

    actors = list_actors(address=ray.get_runtime_context().gcs_address,
                         filters=[("class_name", "=", f"ServeReplica:{APP_NAME}:{DEPLOYMENT}"),
                                  ("state", "=", "ALIVE")])
    out = []
    for actor in actors:
        try:
            handle = ray.get_actor(actor.name, namespace=actor.ray_namespace)
            out.append(ray.get(handle.record_routing_stats.remote(), timeout=timeout_s))
        except Exception as exc:  # noqa: BLE001 - a replica going away mid-status is not an error
            out.append({"replica": actor.name, "error": f"{type(exc).__name__}: {exc}"})
    return out


def state_path(home: Path) -> Path:
    return Path(home).resolve() / STATE_FILE


def write_state(home: Path, state: dict) -> None:
    path = state_path(home)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(state, indent=2) + "\n")


def read_state(home: Path) -> Optional[dict]:
    path = state_path(home)
    return json.loads(path.read_text()) if path.is_file() else None
