"""Connecting to Ray: the embedded local Ray by default, ``RAY_ADDRESS`` for a real cluster."""
from __future__ import annotations

import json
import logging
import os
import subprocess
from pathlib import Path
from typing import Optional

from cluster._errors import AttuneError
from cluster._head import (  # noqa: F401
    HEAD_FILE,
    PortPicker,
    head_file,
    head_log,
    head_temp_dir,
    local_head,
    ray_executable,
    start_head,
    stop_local_head,
)
from cluster._settings import Settings
from cluster._worker_setup import SETUP_HOOK

logger = logging.getLogger("attune.cluster")


class RayUnavailableError(AttuneError, ConnectionError):
    """The Ray cluster cannot be reached, or the local head did not start (exit status 1)."""

# Environment every Ray worker of ours needs. DS_ACCELERATOR is chosen per worker
# (see ``choose_ds_accelerator``) because the driver may have no GPU while workers do.
_WORKER_ENV = {
    "TOKENIZERS_PARALLELISM": "false",
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    "TRANSFORMERS_VERBOSITY": "error",
    "PYTHONWARNINGS": "ignore::FutureWarning",
}

# Ray Train's controller polls its workers every 2 s by default, so the end of every run is seen
# up to two polls late (the final report, then the finished workers): about 4 s per fine-tune,
# most of a short run's tail. Polling four times a second is cheap for a controller's handful of
# workers. A value the user exported wins.
_TRAIN_ENV = {"RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.5"}
# On the embedded Ray (one machine) no node can be preempted, so Ray Train's preemption-watcher
# actor would only cost a process per run. It stays on for RAY_ADDRESS clusters.
_LOCAL_TRAIN_ENV = {"RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0"}


def _job_env(local: bool) -> dict[str, str]:
    """env_vars for our Ray jobs' workers: ``_WORKER_ENV`` plus Ray Train's, the user's values first."""
    train = {**_TRAIN_ENV, **(_LOCAL_TRAIN_ENV if local else {})}
    return {**_WORKER_ENV, **{k: os.environ.get(k, v) for k, v in train.items()}}


def _runtime_env(settings: Settings) -> dict:
    """Our job's runtime env. On one machine (the embedded Ray, the local head) another Ray may run
    next to ours, so every worker first points Ray's state API at its own cluster (``cluster._worker_setup``)."""
    local = not settings.ray_address
    env: dict = {"env_vars": _job_env(local=local)}
    if local:
        env["worker_process_setup_hook"] = SETUP_HOOK
        # One machine: the workers see the driver's files but not its working directory (Ray Train runs
        # them in its own), where the default relative ATTUNE_HOME would name another folder; so they get
        # the named bases' folder (`attune bases install`) as an absolute path.
        env["env_vars"]["ATTUNE_BASES_DIR"] = str(settings.bases_dir)
    return env


def choose_ds_accelerator() -> str:
    """Pick DeepSpeed's accelerator for this process and export it as ``DS_ACCELERATOR``.

    An explicit ``DS_ACCELERATOR`` wins. Must run before ``import deepspeed``.
    """
    chosen = os.environ.get("DS_ACCELERATOR")
    if not chosen:
        import torch

        chosen = "cuda" if torch.cuda.is_available() else "cpu"
        os.environ["DS_ACCELERATOR"] = chosen
    return chosen


def _driver_logging(settings: Settings) -> dict:
    """attune's commands print attune's progress; Ray's own lines (its workers', Train's, Serve's) stay in
    Ray's log files (:func:`ray_log_dir`) unless ``--log-level DEBUG`` asks for them here."""
    debug = settings.log_level == "DEBUG"
    for name in ("ray", "ray.serve", "ray.train", "ray.tune"):  # Serve's has a handler of its own
        logging.getLogger(name).setLevel(logging.INFO if debug else logging.WARNING)
    # Ray warns at every start that its token authentication is on (attune's local heads ask for it)
    logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(
        logging.INFO if debug else logging.ERROR)
    return {"log_to_driver": debug, "logging_level": logging.INFO if debug else logging.WARNING,
            "configure_logging": True}


def init_ray(settings: Settings) -> str:
    """Start or connect to Ray once per process; returns a short description of it.

    With ``settings.ray_address`` (``RAY_ADDRESS``) we connect to that cluster and
    ship the project code in the runtime environment. Otherwise, when ``attune serve up
    --detach`` recorded a local head under ``$ATTUNE_HOME`` we connect to it, so there is
    one local cluster; else an embedded local Ray is started with ``settings.ray_num_cpus``
    CPUs (default: all).
    """
    import ray

    if ray.is_initialized():
        return "existing Ray session"
    for key, value in _WORKER_ENV.items():
        os.environ.setdefault(key, value)
    head = None if settings.ray_address else local_head(settings)
    runtime_env = _runtime_env(settings)
    if head is not None:  # the local head `attune serve up --detach` started: one local cluster
        logger.info("connecting to the local Ray head at %s (started by attune)", head["address"])
        _use_auth_mode(head.get("auth_mode", "token"))
        ray.init(address=head["address"], runtime_env=runtime_env, **_driver_logging(settings))
        return f"local Ray head at {head['address']}"
    if settings.ray_address:
        runtime_env = cluster_runtime_env(runtime_env)
        logger.info("connecting to Ray cluster at %s", settings.ray_address)
        try:
            ray.init(address=settings.ray_address, runtime_env=runtime_env, **_driver_logging(settings))
        except ConnectionError as exc:
            raise RayUnavailableError(
                f"cannot reach the Ray cluster at RAY_ADDRESS={settings.ray_address!r}: {exc}. "
                "Check the address, or unset RAY_ADDRESS to use the embedded local Ray."
            ) from exc
        return f"Ray cluster at {settings.ray_address}"
    ray.init(
        num_cpus=settings.ray_num_cpus,
        include_dashboard=True,  # Ray's state API (used by Ray Train) needs it
        dashboard_host="127.0.0.1",
        runtime_env=runtime_env,
        **_driver_logging(settings),
    )
    cpus = int(ray.cluster_resources().get("CPU", 0))
    logger.info("started embedded local Ray with %d CPUs", cpus)
    return f"embedded local Ray ({cpus} CPUs)"


def ray_log_dir() -> str:
    """Where this Ray session's logs are (every worker's output): a folder on this machine for the
    embedded Ray or the local head, else Ray's default folder on each node of the cluster."""
    try:
        from ray._private import worker

        return worker.global_worker.node.get_logs_dir_path()
    except Exception:  # noqa: BLE001 - not connected, or a client connection without a local node
        return "/tmp/ray/session_latest/logs on the cluster's nodes"


def shutdown_ray() -> None:
    import ray

    if ray.is_initialized():
        ray.shutdown()


def _project_root() -> str:
    return os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# What never ships to a cluster with the code: environments, state, history, weights.
CODE_EXCLUDES = [".venv", ".attune", ".git", ".pytest_cache", "__pycache__", "*.pyc", "*.pt", "*.bin",
                 "*.safetensors", "*.egg-info"]
# Set by Ray's job supervisor in a submitted job's driver: the job's runtime env as JSON.
_JOB_CONFIG_VAR = "RAY_JOB_CONFIG_JSON_ENV_VAR"


def code_dir() -> Optional[str]:
    """The source checkout attune runs from, or None when it is installed as a package
    (then the cluster's own installation, e.g. the container image, provides the code)."""
    root = _project_root()
    return root if os.path.isfile(os.path.join(root, "pyproject.toml")) else None


def cluster_runtime_env(runtime_env: dict) -> dict:
    """``runtime_env`` plus the project code for a remote cluster.

    In the driver of a submitted job (``attune submit``, a KubeRay ``RayJob``) the job's runtime
    env applies already: Ray refuses to merge a second ``working_dir`` or an env var set twice,
    so only what the job lacks is added.
    """
    env = dict(runtime_env)
    if _JOB_CONFIG_VAR in os.environ:
        job_env = json.loads(os.environ[_JOB_CONFIG_VAR]).get("runtime_env") or {}
        taken = set(job_env.get("env_vars") or {})
        env["env_vars"] = {k: v for k, v in env.get("env_vars", {}).items() if k not in taken}
        if not env["env_vars"]:
            env.pop("env_vars")
        return env
    if code_dir() is not None:
        env["working_dir"] = code_dir()
        env["excludes"] = list(CODE_EXCLUDES)
    return env


def cluster_cpus() -> Optional[int]:
    import ray

    return int(ray.cluster_resources().get("CPU", 0)) if ray.is_initialized() else None


# -- the detached local head (``attune serve up --detach``): the work is in ``cluster._head`` -----------


def start_local_head(settings: Settings, timeout_s: float = 90.0, *,
                     pick_ports: Optional[PortPicker] = None) -> dict:
    """Start a local Ray head in the background (``ray start --head --block``) and record it.

    Returns once the head is up (see :mod:`cluster._head`); a taken port is retried with fresh
    ports, a head that exits is reported at once. ``timeout_s`` bounds each try; ``pick_ports(n)``
    picks n free ports (tests inject one). Stop it with :func:`stop_local_head`.
    """
    existing = local_head(settings)
    if existing is not None:
        return existing
    cmd = [ray_executable(), "start", "--head", "--block", "--disable-usage-stats",
           "--node-ip-address=127.0.0.1", "--dashboard-host=127.0.0.1", f"--temp-dir={head_temp_dir(settings)}"]
    if settings.ray_num_cpus:
        cmd.append(f"--num-cpus={settings.ray_num_cpus}")
    env = {**os.environ, **_WORKER_ENV}
    env.pop("RAY_ADDRESS", None)
    # On SIGTERM Ray first drains the node so Serve can move replicas to other nodes, for up to 30 s.
    # This head is the only node and `serve down` removed the app first: nothing can move, and a
    # detached actor Ray Train leaves (its autoscaling coordinator) keeps the node from ever going
    # idle, so every stop waited the full 30 s. A value the user exported wins.
    env.setdefault("RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S", "0")
    env.setdefault("RAY_AUTH_MODE", "token")  # the GCS listens beyond loopback: require Ray's token
    if env["RAY_AUTH_MODE"] == "token" and not _has_auth_token(env):  # make ~/.ray/auth_token (never printed)
        subprocess.run([cmd[0], "get-auth-token", "--generate"], env=env, check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return start_head(settings, cmd, env, timeout_s, pick_ports)


def free_local_cpus(settings: Settings) -> Optional[int]:
    """CPUs free now on the local Ray (embedded, or the local head a detached endpoint shares), which
    nothing adds to; None on a ``RAY_ADDRESS`` cluster, whose autoscaler may add nodes, and before
    :func:`init_ray` has connected."""
    if settings.ray_address:
        return None
    import ray

    if not ray.is_initialized():
        return None
    return int(ray.available_resources().get("CPU", 0) + 1e-9)


def _has_auth_token(env: dict) -> bool:
    """Whether Ray will find a token: ``RAY_AUTH_TOKEN``, or a non-empty ``RAY_AUTH_TOKEN_PATH`` or
    ``~/.ray/auth_token`` (then ``ray get-auth-token --generate``, a few seconds, is not needed)."""
    if env.get("RAY_AUTH_TOKEN"):
        return True
    path = Path(env.get("RAY_AUTH_TOKEN_PATH") or Path.home() / ".ray" / "auth_token")
    return path.is_file() and path.stat().st_size > 0


def _use_auth_mode(mode: str) -> None:
    """Connect with the head's token auth: Ray enables it for an explicit address only via
    ``RAY_AUTH_MODE``, and caches its config at import, so refresh it (as Ray's own helper does)."""
    os.environ["RAY_AUTH_MODE"] = mode
    try:
        from ray._raylet import Config

        Config.initialize("")
    except Exception as exc:  # noqa: BLE001 - a Ray without this hook reads the variable at connect time
        logger.debug("could not refresh Ray's config: %s", exc)
