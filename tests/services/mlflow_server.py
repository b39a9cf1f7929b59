"""A real ``mlflow server`` for integration tests: SQL backend store, proxied S3 artifacts.

    with S3Server() as s3, PostgresServer() as pg:
        env = {**s3.env(), "MLFLOW_S3_ENDPOINT_URL": s3.endpoint_url}
        s3.client().create_bucket(Bucket="registry")
        with MlflowServer(pg.create_database("registry"), "s3://registry/mlartifacts", env) as server:
            client = mlflow.MlflowClient(server.tracking_uri)  # http://127.0.0.1:PORT

The server runs ``python -m mlflow server`` (uvicorn, one worker) on 127.0.0.1 and a free port,
in its own process group, with cwd and log file in a private temporary directory. It gets
this process's environment without ``MLFLOW_*`` and AWS profile/endpoint variables, then
``env`` on top; telemetry and the job runner (both of which want more than loopback) are off.
Artifacts go through the server (``--serve-artifacts``): new experiments get
``mlflow-artifacts:/<id>``, stored under ``--artifacts-destination``.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Optional

from tests.services.s3 import _AWS_VARS_TO_CLEAR, HOST, _die_with_parent, _free_ports
from tests.waiting import wait_for

_LOG_TAIL_CHARS = 4000
# "<pid of the test process>:<temp dir>" in the server's environment, to find orphans by.
_OWNER_VAR = "ATTUNE_TEST_MLFLOW_OWNER"
# Defaults for the server's environment; ``env`` given to MlflowServer overrides them.
_SERVER_ENV = {
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DO_NOT_TRACK": "true",
    "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",  # no huey job runner, no /dev/shm queue
    "AWS_EC2_METADATA_DISABLED": "true",
    "PYTHONUNBUFFERED": "1",
}


class MlflowServerError(RuntimeError):
    """The MLflow server could not be started or did not become healthy."""


def stop_process_group(proc: subprocess.Popen, grace_s: float) -> None:
    """SIGTERM ``proc``'s process group, wait ``grace_s``, then SIGKILL the group.

    ``proc`` must lead its own group (``start_new_session=True``). The final SIGKILL also
    reaches children that outlived the leader (MLflow's uvicorn child).
    """
    def signal_group(sig: int) -> None:
        try:
            os.killpg(proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass

    if proc.poll() is None:
        signal_group(signal.SIGTERM)
        try:
            proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            signal_group(signal.SIGKILL)
            proc.wait(timeout=10)
    signal_group(signal.SIGKILL)


def reap_orphans() -> None:
    """Kill MLflow servers (the CLI and its uvicorn child) whose test process died without
    ``stop()``; ``_die_with_parent`` only covers the CLI process."""
    import psutil

    for proc in psutil.process_iter(["environ"]):
        owner = (proc.info["environ"] or {}).get(_OWNER_VAR, "")
        pid, _, tmp = owner.partition(":")
        if pid.isdigit() and not psutil.pid_exists(int(pid)):
            try:
                proc.kill()
            except psutil.Error:
                pass
            shutil.rmtree(tmp, ignore_errors=True)


class MlflowServer:
    """``mlflow server`` in its own process group; a context manager.

    ``tracking_uri`` and ``startup_s`` (seconds until /health answered 200) are set once started.
    """

    def __init__(self, backend_store_uri: str, artifacts_destination: str,
                 env: Optional[dict[str, str]] = None, startup_timeout_s: float = 120.0,
                 stop_grace_s: float = 10.0):
        self.backend_store_uri = backend_store_uri
        self.artifacts_destination = artifacts_destination
        self.env = dict(env or {})
        self.startup_timeout_s = startup_timeout_s
        self.stop_grace_s = stop_grace_s
        self.tracking_uri = ""
        self.startup_s: Optional[float] = None
        self._tmp: Optional[Path] = None
        self._proc: Optional[subprocess.Popen] = None
        self._log = None

    def command(self, port: int) -> list[str]:
        return [
            sys.executable, "-m", "mlflow", "server",
            "--host", HOST, "--port", str(port), "--workers", "1",
            "--backend-store-uri", self.backend_store_uri,
            "--serve-artifacts", "--artifacts-destination", self.artifacts_destination,
        ]

    def child_env(self) -> dict[str, str]:
        base = {name: value for name, value in os.environ.items()
                if not name.startswith("MLFLOW_") and name not in _AWS_VARS_TO_CLEAR}
        return {
            **base, **_SERVER_ENV,
            "AWS_CONFIG_FILE": str(self._tmp / "no-aws-config"),
            "AWS_SHARED_CREDENTIALS_FILE": str(self._tmp / "no-aws-credentials"),
            **self.env,
            _OWNER_VAR: f"{os.getpid()}:{self._tmp}",
        }

    def start(self) -> MlflowServer:
        started = time.monotonic()
        reap_orphans()
        self._tmp = Path(tempfile.mkdtemp(prefix="attune-mlflow-"))
        port = _free_ports(1)[0]
        self.tracking_uri = f"http://{HOST}:{port}"
        self._log = open(self._tmp / "mlflow.log", "wb")
        try:
            self._proc = subprocess.Popen(
                self.command(port), cwd=self._tmp, env=self.child_env(), stdin=subprocess.DEVNULL,
                stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True,
                preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,
            )
            self._wait_healthy()
        except BaseException:
            self.stop()
            raise
        self.startup_s = time.monotonic() - started
        return self

    def _wait_healthy(self) -> None:
        """Poll GET /health until it answers 200; fail early if the server exits."""
        last_error: object = None

        def healthy() -> bool:
            nonlocal last_error
            if self._proc.poll() is not None:
                raise MlflowServerError(
                    f"`mlflow server` exited with code {self._proc.returncode} while starting "
                    f"(backend {self.backend_store_uri}); log tail:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(f"{self.tracking_uri}/health", timeout=2) as response:
                    if response.status == 200:
                        return True
                    last_error = f"HTTP {response.status}"
            except (urllib.error.URLError, OSError) as exc:  # not listening yet
                last_error = exc
            return False

        if not wait_for(healthy, self.startup_timeout_s, "`mlflow server` /health", interval_s=0.25,
                        raise_on_timeout=False):
            raise MlflowServerError(
                f"`mlflow server` at {self.tracking_uri} not healthy after {self.startup_timeout_s:g}s "
                f"(last error: {last_error!r}); if the machine is busy, raise startup_timeout_s. "
                f"Log tail:\n{self.log_tail()}")

    def stop(self) -> None:
        """Stop the process group (SIGTERM, SIGKILL after ``stop_grace_s``); remove the temp dir."""
        proc, self._proc = self._proc, None
        if proc is not None:
            stop_process_group(proc, self.stop_grace_s)
        if self._log is not None:
            self._log.close()
            self._log = None
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None

    def __enter__(self) -> MlflowServer:
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()

    def log_tail(self, chars: int = _LOG_TAIL_CHARS) -> str:
        if self._tmp is None or not (self._tmp / "mlflow.log").exists():
            return "(no log)"
        if self._log is not None:
            self._log.flush()
        return (self._tmp / "mlflow.log").read_bytes()[-chars:].decode("utf-8", "replace")
