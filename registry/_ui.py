"""``attune registry ui``: the MLflow UI on attune's configured stores."""
from __future__ import annotations

import os
import subprocess
import sys

from registry import _store as store
from registry._errors import RegistryError


def ui_command(registry, host: str, port: int) -> list[str]:
    """``mlflow server`` on the same backend and artifact stores the registry writes to."""
    if not store.is_database_uri(registry.tracking_uri):
        raise RegistryError(
            f"ATTUNE_MLFLOW_TRACKING_URI is {store.redact(registry.tracking_uri)}, an MLflow server: "
            "open that URL in a browser; it already serves the UI")
    cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", registry.tracking_uri,
           "--host", host, "--port", str(port), "--workers", "1"]
    if registry.artifact_root:
        cmd += ["--default-artifact-root", registry.artifact_root]
    return cmd


def run_ui(registry, host: str = "127.0.0.1", port: int = 5000) -> int:
    cmd = ui_command(registry, host, port)
    print(f"MLflow UI on http://{host}:{port} (registry {store.redact(registry.tracking_uri)}); Ctrl-C stops it",
          file=sys.stderr, flush=True)
    try:
        return subprocess.call(cmd, env=dict(os.environ))
    except KeyboardInterrupt:
        return 130
