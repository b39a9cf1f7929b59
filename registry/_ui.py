"""``attune registry ui``: the MLflow UI on attune's configured stores."""
from __future__ import annotations

import os
import subprocess
import sys
from typing import Optional

from registry import _store as store
from registry._errors import RegistryError


def ui_command(registry, host: str, port: int, environ: Optional[dict] = None) -> tuple[list[str], dict]:
    """(argv, environment) of ``mlflow server`` on the same backend and artifact stores the registry
    writes to. The stores go in the environment (``MLFLOW_BACKEND_STORE_URI``,
    ``MLFLOW_DEFAULT_ARTIFACT_ROOT``), never on the command line, where any user of the machine can
    read a database password."""
    if not store.is_database_uri(registry.tracking_uri):
        raise RegistryError(
            f"the tracking URI (ATTUNE_MLFLOW_TRACKING_URI, else MLFLOW_TRACKING_URI) is "
            f"{store.redact(registry.tracking_uri)}, an MLflow server: "
            "open that URL in a browser; it already serves the UI")
    env = dict(os.environ if environ is None else environ, MLFLOW_BACKEND_STORE_URI=registry.tracking_uri)
    if registry.artifact_root:
        env["MLFLOW_DEFAULT_ARTIFACT_ROOT"] = registry.artifact_root
    cmd = [sys.executable, "-m", "mlflow", "server", "--host", host, "--port", str(port), "--workers", "1"]
    return cmd, env


def run_ui(registry, host: str = "127.0.0.1", port: int = 5000) -> int:
    cmd, env = ui_command(registry, host, port)
    print(f"MLflow UI on http://{host}:{port} (registry {store.redact(registry.tracking_uri)}); Ctrl-C stops it",
          file=sys.stderr, flush=True)
    try:
        return subprocess.call(cmd, env=env)
    except KeyboardInterrupt:
        return 130
