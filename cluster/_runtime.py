"""Connecting to Ray: the embedded local Ray by default, ``RAY_ADDRESS`` for a real cluster."""
from __future__ import annotations

import logging
import os
from typing import Optional

from cluster._settings import Settings

logger = logging.getLogger("attune.cluster")

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


def init_ray(settings: Settings, *, quiet: bool = True) -> str:
    """Start or connect to Ray once per process; returns a short description of it.

    With ``settings.ray_address`` (``RAY_ADDRESS``) we connect to that cluster and
    ship the project code in the runtime environment. Otherwise an embedded local
    Ray is started with ``settings.ray_num_cpus`` CPUs (default: all).
    """
    import ray

    if ray.is_initialized():
        return "existing Ray session"
    for key, value in _WORKER_ENV.items():
        os.environ.setdefault(key, value)
    runtime_env = {"env_vars": dict(_WORKER_ENV)}
    if settings.ray_address:
        runtime_env["working_dir"] = _project_root()
        runtime_env["excludes"] = [".venv", ".attune", ".git", "*.pt", "*.bin", "*.safetensors"]
        logger.info("connecting to Ray cluster at %s", settings.ray_address)
        try:
            ray.init(address=settings.ray_address, runtime_env=runtime_env,
                     log_to_driver=True, logging_level=logging.WARNING)
        except ConnectionError as exc:
            raise ConnectionError(
                f"cannot reach the Ray cluster at RAY_ADDRESS={settings.ray_address!r}: {exc}. "
                "Check the address, or unset RAY_ADDRESS to use the embedded local Ray."
            ) from exc
        return f"Ray cluster at {settings.ray_address}"
    ray.init(
        num_cpus=settings.ray_num_cpus,
        include_dashboard=True,  # Ray's state API (used by Ray Train) needs it
        dashboard_host="127.0.0.1",
        runtime_env=runtime_env,
        log_to_driver=True,
        logging_level=logging.WARNING if quiet else logging.INFO,
        configure_logging=True,
    )
    cpus = int(ray.cluster_resources().get("CPU", 0))
    logger.info("started embedded local Ray with %d CPUs", cpus)
    return f"embedded local Ray ({cpus} CPUs)"


def shutdown_ray() -> None:
    import ray

    if ray.is_initialized():
        ray.shutdown()


def _project_root() -> str:
    return os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def cluster_cpus() -> Optional[int]:
    import ray

    return int(ray.cluster_resources().get("CPU", 0)) if ray.is_initialized() else None
