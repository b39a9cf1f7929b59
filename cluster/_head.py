"""The detached local Ray head (``attune serve up --detach``, ``attune demo``): start, find, stop.

A head is up only when the ``ray start --head --block`` attune launched is alive, has finished
starting (it wrote its GCS address into its own temp folder) and every port attune gave it is
listened on by a process of that head (see :mod:`cluster._ports`). A head that exits while
starting is reported at once, with its exit status, its last lines and its log. A port that
turns out taken (another process listens on it, or Ray's log says the address is in use) is
retried with fresh ports, up to :data:`MAX_START_ATTEMPTS` times.
"""
from __future__ import annotations

import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from cluster import _ports
from cluster._settings import Settings

logger = logging.getLogger("attune.cluster")

HEAD_FILE = "ray-head.json"
MAX_START_ATTEMPTS = 3
# `ray start` flags, one per port attune picks; the GCS port first.
PORT_FLAGS = ("--port", "--dashboard-port", "--ray-client-server-port", "--dashboard-agent-listen-port",
              "--metrics-export-port", "--runtime-env-agent-port", "--dashboard-agent-grpc-port")
# Readiness and exit polls: each reads /proc (a few ms); a head is up within a poll of finishing.
_POLL_S = 0.1
_STOP_POLL_S = 0.05
_CONFIRM_S = 0.5  # a port seen held by another process for this long is taken
_IN_USE = re.compile(r"address already in use|eaddrinuse|errno 98|failed to bind|port .* (?:is )?in use",
                     re.IGNORECASE)
PortPicker = Callable[[int], list]


def head_file(settings: Settings) -> Path:
    return Path(settings.home).resolve() / HEAD_FILE


def head_log(settings: Settings) -> Path:
    """The output of every ``ray start`` of this ``ATTUNE_HOME``'s head (Ray's own logs: :func:`ray_logs`)."""
    return head_file(settings).with_suffix(".log")


def head_temp_dir(settings: Settings) -> Path:
    """The head's own Ray temp folder. Never Ray's default ``/tmp/ray``: `ray start` records itself
    there as "the" local cluster, and every plain ``ray.init()`` on the machine would then join it.
    Short, because Ray's unix socket paths under it must stay below about 107 characters."""
    import hashlib
    import tempfile

    digest = hashlib.sha256(str(Path(settings.home).resolve()).encode()).hexdigest()[:10]
    return Path(tempfile.gettempdir()) / f"attune-ray-{digest}"


def ray_logs(settings: Settings) -> Path:
    return head_temp_dir(settings) / "session_latest" / "logs"


def _address_file(settings: Settings) -> Path:
    return head_temp_dir(settings) / "ray_current_cluster"  # `ray start` writes it once started


def local_head(settings: Settings) -> Optional[dict]:
    """The recorded local head when its process is alive and its GCS port is its own, else None."""
    path = head_file(settings)
    if not path.is_file():
        return None
    head = json.loads(path.read_text())
    pid, port = int(head["pid"]), int(head["address"].rpartition(":")[2])
    if _pid_alive(pid) and _gcs_is_ours(port, pid):
        return head
    logger.warning("ignoring stale %s (the Ray head it records is gone)", path)
    return None


def _gcs_is_ours(port: int, pid: int) -> bool:
    found = _ports.listeners([port], sid=pid)
    if found is None:  # no /proc: the port answering is all we can tell
        return _ports.port_answers("127.0.0.1", port)
    return port in found and found[port].ours


class PortTaken(Exception):
    """One attempt's port was taken: retried with fresh ports."""

    def __init__(self, port: Optional[int], by: str):
        super().__init__(f"port {port if port is not None else '?'} was taken by {by}")
        self.port, self.by = port, by


@dataclass
class _Attempt:
    """One ``ray start``: its process, ports and where its output starts in the head's log."""

    proc: subprocess.Popen
    ports: list
    log: Path
    log_offset: int
    number: int
    started_at: float  # time.time(): Ray's log files older than this are an earlier try's

    def output(self, max_lines: int = 12) -> str:
        with open(self.log, "rb") as f:
            f.seek(self.log_offset)
            lines = f.read().decode(errors="replace").strip().splitlines()
        return "\n".join(lines[-max_lines:])


def start_head(settings: Settings, cmd: list[str], env: dict, timeout_s: float,
               pick_ports: Optional[PortPicker] = None) -> dict:
    """Start ``cmd`` (``ray start --head --block ...`` without its port flags) and record the head.

    ``timeout_s`` bounds each attempt; ``pick_ports(n)`` returns n free ports (tests inject one).
    """
    from cluster._runtime import RayUnavailableError  # _runtime imports this module

    pick = pick_ports or _ports.free_ports
    for number in range(1, MAX_START_ATTEMPTS + 1):
        ports = pick(len(PORT_FLAGS))
        try:
            head = _start_once(settings, cmd, env, ports, number, timeout_s)
        except PortTaken as taken:
            if number == MAX_START_ATTEMPTS:
                raise RayUnavailableError(
                    f"the local Ray head did not start in {MAX_START_ATTEMPTS} tries, each on fresh ports; "
                    f"on the last, {taken}. Output: {head_log(settings)}; Ray's logs: {ray_logs(settings)}. "
                    "Free the port or stop what holds it, then run the command again, or set RAY_ADDRESS "
                    "to use a running Ray cluster.") from None
            logger.warning("local Ray head: %s; retrying with fresh ports (try %d of %d; output in %s)",
                           taken, number + 1, MAX_START_ATTEMPTS, head_log(settings))
            continue
        head_file(settings).write_text(json.dumps(head, indent=2) + "\n")
        logger.info("started a local Ray head at %s (pid %d), recorded in %s", head["address"], head["pid"],
                    head_file(settings))
        return head
    raise AssertionError("unreachable")


def _start_once(settings: Settings, cmd: list[str], env: dict, ports: list, number: int,
                timeout_s: float) -> dict:
    """One try: launch, wait until ready; on any failure the try's processes are killed."""
    _address_file(settings).unlink(missing_ok=True)  # a killed head's; ours proves this start finished
    log = head_log(settings)
    log.parent.mkdir(parents=True, exist_ok=True)
    full = cmd + [f"{flag}={port}" for flag, port in zip(PORT_FLAGS, ports)]
    with open(log, "ab") as out:
        out.write(f"--- attune: try {number} of {MAX_START_ATTEMPTS}, ports {ports}\n".encode())
        out.flush()
        offset = out.tell()
        proc = subprocess.Popen(full, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    attempt = _Attempt(proc, ports, log, offset, number, time.time() - 1)
    try:
        _wait_ready(settings, attempt, timeout_s)
    except BaseException:
        _kill_session(proc)
        raise
    return {"address": f"127.0.0.1:{ports[0]}", "pid": proc.pid, "dashboard_port": ports[1],
            "metrics_export_port": ports[4], "auth_mode": env.get("RAY_AUTH_MODE", "token"),
            "started_at": time.time(), "log": str(log), "ray_logs": str(ray_logs(settings))}


def _wait_ready(settings: Settings, attempt: _Attempt, timeout_s: float) -> None:
    """Poll until the head is up; raise :class:`PortTaken` or ``RayUnavailableError`` at the first sign
    it will not come up."""
    deadline = time.monotonic() + timeout_s
    suspect: Optional[tuple[int, float]] = None  # a port seen held by another process, and since when
    while True:
        code = attempt.proc.poll()
        if code is not None:
            raise _exited(settings, attempt, code)
        found = _ports.listeners(attempt.ports, sid=attempt.proc.pid)
        foreign = [p for p in attempt.ports if found and p in found and not found[p].ours]
        if not foreign:
            suspect = None
        elif suspect is None or suspect[0] != foreign[0]:
            suspect = (foreign[0], time.monotonic())
        elif time.monotonic() - suspect[1] >= _CONFIRM_S:  # still another's: not a moment's misreading
            raise PortTaken(suspect[0], found[suspect[0]].describe())
        if _started(settings, attempt, found):
            return
        if time.monotonic() > deadline:
            raise _not_started(settings, attempt, timeout_s, found)
        time.sleep(_POLL_S)


def _started(settings: Settings, attempt: _Attempt, found: Optional[dict]) -> bool:
    path = _address_file(settings)
    if not path.is_file() or not path.read_text().strip().endswith(f":{attempt.ports[0]}"):
        return False
    if found is None:  # no /proc: `ray start` finished and the GCS port answers
        return _ports.port_answers("127.0.0.1", attempt.ports[0])
    return all(p in found and found[p].ours for p in attempt.ports)


def _exited(settings: Settings, attempt: _Attempt, code: int) -> Exception:
    from cluster._runtime import RayUnavailableError

    taken = _port_in_use(settings, attempt)
    if taken is not None:
        return taken
    return RayUnavailableError(
        f"the local Ray head exited with status {code} while starting (try {attempt.number} of "
        f"{MAX_START_ATTEMPTS}). Its last lines:\n{attempt.output() or '(no output)'}\n"
        f"Output: {attempt.log}; Ray's logs: {ray_logs(settings)}. Fix what the log says and run the "
        "command again, or set RAY_ADDRESS to use a running Ray cluster.")


def _not_started(settings: Settings, attempt: _Attempt, timeout_s: float, found: Optional[dict]) -> Exception:
    from cluster._runtime import RayUnavailableError

    taken = _port_in_use(settings, attempt)
    if taken is not None:
        return taken
    missing = [p for p in attempt.ports if found is not None and p not in found]
    return RayUnavailableError(
        f"the local Ray head did not finish starting within {timeout_s:g}s (try {attempt.number}"
        + (f"; nothing listens yet on ports {missing}" if missing else "")
        + f"). Its last lines:\n{attempt.output() or '(no output)'}\nOutput: {attempt.log}; Ray's logs: "
        f"{ray_logs(settings)}. On a busy machine run the command again; see the logs otherwise.")


def _port_in_use(settings: Settings, attempt: _Attempt) -> Optional[PortTaken]:
    """A PortTaken when the try's output or Ray's logs say an address was in use, else None."""
    texts = [attempt.output(max_lines=200)]
    logs = ray_logs(settings)
    if logs.is_dir():
        texts += [_tail(f, since=attempt.started_at) for f in sorted(logs.iterdir())]
    for text in texts:
        for line in text.splitlines():
            if _IN_USE.search(line):
                port = next((p for p in attempt.ports if re.search(rf"\b{p}\b", line)), None)
                return PortTaken(port, f"another process (Ray's log: {line.strip()[:200]})")
    return None


def _tail(path: Path, since: float, max_bytes: int = 65536) -> str:
    """The end of a log file written since ``since`` (an earlier try's, or a folder: "")."""
    try:
        info = path.stat()
        if not path.is_file() or info.st_mtime < since:
            return ""
        with open(path, "rb") as f:
            f.seek(max(0, info.st_size - max_bytes))
            return f.read().decode(errors="replace")
    except OSError:
        return ""


def _kill_session(proc: subprocess.Popen) -> None:
    """SIGKILL a failed try's ``ray start`` and every process in its session."""
    _kill_all(proc.pid)
    proc.wait()


def _kill_all(sid: int) -> None:
    _signal_all(sid, signal.SIGKILL)


def _signal_all(sid: int, sig: int) -> None:
    """Send ``sig`` to every process of the session ``sid`` (a head's ``ray start`` and all it started)."""
    try:
        os.killpg(sid, sig)  # `ray start` leads its own session and process group
    except (ProcessLookupError, PermissionError):
        pass
    for pid in _ports.session_pids(sid):  # any that left the group
        try:
            os.kill(pid, sig)
        except (ProcessLookupError, PermissionError):
            pass


def _session_alive(sid: int) -> bool:
    return _pid_alive(sid) or bool(_ports.session_pids(sid))


def _only_ray_start_left(sid: int) -> bool:
    """Whether ``ray start`` (the session's leader) runs and no other process of its session does."""
    return _ports.session_pids(sid, running=True) == [sid]


def stop_local_head(settings: Settings, timeout_s: float = 30.0) -> bool:
    """Stop the head :func:`start_head` recorded (only that one); True when one was stopped."""
    path = head_file(settings)
    if not path.is_file():
        return False
    pid = int(json.loads(path.read_text())["pid"])
    stopped = _pid_alive(pid)
    if stopped:  # (a dead pid may be another process's by now: then nothing is signalled)
        # Every process of the head at once, as `ray stop` does: `ray start --block` alone would stop
        # them one after another, waiting up to a second for each (about 5 s for a head's dozen).
        _signal_all(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        while _session_alive(pid) and time.monotonic() < deadline:  # its processes too, not only `ray start`
            if _only_ray_start_left(pid):  # every Ray process exited: what is left is the CLI's own clean-up
                _kill_all(pid)  # (seconds of it, about processes already gone; its temp folder goes below)
            time.sleep(_STOP_POLL_S)
        if _session_alive(pid):
            _kill_all(pid)  # its own session: only what that head started
    path.unlink(missing_ok=True)
    shutil.rmtree(head_temp_dir(settings), ignore_errors=True)
    return stopped


def _pid_alive(pid: int) -> bool:
    try:
        waited, _ = os.waitpid(pid, os.WNOHANG)  # reap it when it is our child
        if waited == pid:
            return False
    except ChildProcessError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def ray_executable() -> str:
    """The ``ray`` CLI of this Python environment."""
    return str(Path(sys.executable).with_name("ray"))
