"""A multi-node Ray cluster on 127.0.0.1 for tests: ``ray start --head`` plus worker nodes, each a
``ray start --block`` process in its own session, with its own free ports and a CPU count of its own.

The head has no CPUs (as on a real cluster, where it only coordinates), so every CPU task or actor
runs on a worker node. Stop it with :meth:`LocalCluster.stop`; :meth:`kill_node` SIGKILLs one worker
node with everything it started (the node is lost, as when a machine dies).
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tests.waiting import wait_for

RAY = str(Path(sys.executable).with_name("ray"))
VENV_BIN = str(Path(sys.executable).parent)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _node_ports() -> list[str]:
    return [f"--dashboard-agent-listen-port={free_port()}", f"--metrics-export-port={free_port()}",
            f"--runtime-env-agent-port={free_port()}", f"--dashboard-agent-grpc-port={free_port()}",
            f"--node-manager-port={free_port()}", f"--object-manager-port={free_port()}"]


class LocalCluster:
    """``ray start`` head + ``num_workers`` worker nodes of ``cpus_per_worker`` CPUs each."""

    def __init__(self, num_workers: int = 2, cpus_per_worker: int = 1, object_store_mb: int = 200):
        self.temp_dir = Path(tempfile.mkdtemp(prefix="atn-mn-"))  # short: Ray's socket paths live under it
        # each node its own temp dir, like separate machines: nodes sharing one share (and garbage-collect)
        # each other's runtime env files and race for socket names
        self.gcs_port, self.dashboard_port = free_port(), free_port()
        self.num_workers, self.cpus_per_worker, self.object_store_mb = num_workers, cpus_per_worker, object_store_mb
        self.procs: dict[str, subprocess.Popen] = {}
        # `python` in a job's entrypoint must be this environment's, as on a cluster built from the image
        self.env = {**os.environ, "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}",
                    "RAY_AUTH_MODE": "token", "RAY_USAGE_STATS_ENABLED": "0",
                    # a node stopped by stop() would first drain for up to 30 s (until SIGKILLed after
                    # timeout_s): the test is over, nothing needs to move
                    "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0"}
        self.env.pop("RAY_ADDRESS", None)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.gcs_port}"

    @property
    def dashboard(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    def client_env(self, **extra: str) -> dict:
        """Environment for a process that talks to this cluster (RAY_ADDRESS and Ray's token auth)."""
        return {**self.env, "RAY_ADDRESS": self.address, **extra}

    def start(self, timeout_s: float = 120.0) -> LocalCluster:
        subprocess.run([RAY, "get-auth-token", "--generate"], env=self.env, check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self._spawn("head", ["--head", f"--port={self.gcs_port}", "--num-cpus=0", "--dashboard-host=127.0.0.1",
                             f"--dashboard-port={self.dashboard_port}", f"--ray-client-server-port={free_port()}"])
        self._wait(lambda: port_open(self.gcs_port), timeout_s, "the head's GCS port")
        self._wait(lambda: port_open(self.dashboard_port), timeout_s, "the dashboard")
        for i in range(1, self.num_workers + 1):  # one at a time: a node registering is CPU-heavy
            self._spawn(f"worker-{i}", [f"--address={self.address}", f"--num-cpus={self.cpus_per_worker}"])
            self._wait(lambda: self.alive_nodes() == i + 1, timeout_s, f"{i + 1} alive nodes")
        return self

    def _spawn(self, name: str, args: list[str]) -> None:
        cmd = [RAY, "start", "--block", "--disable-usage-stats", "--node-ip-address=127.0.0.1",
               f"--node-name={name}", f"--temp-dir={self.temp_dir / name}",
               f"--object-store-memory={self.object_store_mb * 1024 * 1024}", *_node_ports(), *args]
        log = open(self.temp_dir / f"{name}.log", "ab")
        self.procs[name] = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=self.env,
                                            start_new_session=True)
        log.close()

    def _wait(self, predicate, timeout_s: float, what: str) -> None:
        """Wait for ``predicate``; fail as soon as a node's ``ray start`` exits, or after ``timeout_s``."""
        def ready() -> bool:
            if predicate():
                return True
            if any(p.poll() is not None for p in self.procs.values()):
                self._not_ready(what)
            return False

        if not wait_for(ready, timeout_s, what, interval_s=0.5, raise_on_timeout=False):
            self._not_ready(what)

    def _not_ready(self, what: str) -> None:
        dead = [n for n, p in self.procs.items() if p.poll() is not None]
        raise RuntimeError(f"local cluster: {what} not ready (exited: {dead}); logs in {self.temp_dir}")

    def nodes(self) -> list[dict]:
        """Every node the cluster knows: ``{"node_id", "node_name", "state"}`` (Ray's state API over
        the dashboard; this process need not be connected to the cluster)."""
        from ray.util.state import list_nodes

        _token_auth()
        return [{"node_id": n.node_id, "node_name": n.node_name, "state": n.state}
                for n in list_nodes(address=self.dashboard, timeout=10, raise_on_missing_output=False)]

    def actors(self, class_name: str) -> list[dict]:
        """Alive actors of ``class_name``: ``{"name", "pid", "node_id"}``."""
        from ray.util.state import list_actors

        _token_auth()
        found = list_actors(address=self.dashboard, filters=[("class_name", "=", class_name), ("state", "=", "ALIVE")],
                            timeout=10, raise_on_missing_output=False)
        return [{"name": a.name, "pid": int(a.pid), "node_id": a.node_id} for a in found]

    def alive_nodes(self) -> int:
        try:
            return sum(n["state"] == "ALIVE" for n in self.nodes())
        except Exception:  # noqa: BLE001 - the dashboard is still starting
            return 0

    def node_id(self, name: str) -> str:
        return next(n["node_id"] for n in self.nodes() if n["node_name"] == name)

    def kill_node(self, name: str) -> list[int]:
        """SIGKILL a worker node: its ``ray start`` process and every process below it (the raylet, its
        agents and its worker processes, which Ray puts in sessions of their own). Returns their pids."""
        proc = self.procs[name]
        pids = _tree(proc.pid)
        for pid in pids:
            _kill(pid)
        proc.wait(timeout=30)
        return pids

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop every node (workers first), SIGKILL what is left after ``timeout_s``, remove the temp dir."""
        for name in sorted(self.procs, key=lambda n: n == "head"):
            proc = self.procs[name]
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)  # `ray start --block` stops the processes it started
        trees = {name: _tree(proc.pid) for name, proc in self.procs.items()}
        deadline = time.monotonic() + timeout_s
        for name, proc in self.procs.items():
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
            for pid in trees[name]:  # whatever of that node is left
                _kill(pid)
        shutil.rmtree(self.temp_dir, ignore_errors=True)


def _token_auth() -> None:
    """Talk to the cluster with Ray's token auth, as its nodes require (RAY_AUTH_MODE=token)."""
    from cluster._runtime import _use_auth_mode

    if os.environ.get("RAY_AUTH_MODE") != "token":
        _use_auth_mode("token")


def _tree(pid: int) -> list[int]:
    """``pid`` and all its descendants."""
    import psutil

    try:
        root = psutil.Process(pid)
        return [pid] + [child.pid for child in root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
