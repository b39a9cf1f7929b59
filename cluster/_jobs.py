"""Ray Jobs API access for ``attune submit`` and ``attune jobs``: finding the cluster's dashboard,
shipping the project code and attune's settings (never a credential) with a job, and following a job
to its end.

The address is ``--address``, else ``ATTUNE_RAY_DASHBOARD``, else ``RAY_ADDRESS``, in one of the forms
``http(s)://HOST:8265`` (the dashboard), ``ray://HOST[:PORT]`` (Ray Client; its dashboard is taken to be
on port 8265 of that host) or ``HOST:PORT`` (a dashboard, or the GCS address that ``ray start`` prints,
whose dashboard is looked up in the GCS).
"""
from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import logging
import os
import re
import shlex
import socket
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Optional, TextIO

from cluster._errors import AttuneError, UsageError
from cluster._runtime import _WORKER_ENV, CODE_EXCLUDES, code_dir
from cluster._settings import Settings

logger = logging.getLogger("attune.cluster")

DASHBOARD_PORT = 8265
PROBE_TIMEOUT_S = 2.5  # each reachability check; a whole resolution stays under 10 s
LOOKUP_TIMEOUT_S = 3.5
TERMINAL = {"SUCCEEDED", "FAILED", "STOPPED"}
LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1", "0.0.0.0"}
# Of this shell's environment only ATTUNE_* goes with a job unless asked (--env): others may hold secrets.
_ATTUNE_PREFIX = "ATTUNE_"
# ... and MLFLOW_TRACKING_URI where it is this shell's tracking URI (ATTUNE_MLFLOW_TRACKING_URI unset or
# empty; cluster._settings.FALLBACKS), under its own name: on the cluster too a set ATTUNE_ value wins over it.
_TRACKING_URI, _MLFLOW_TRACKING_URI = "ATTUNE_MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_URI"
# A job's runtime env is stored with it and shown on the Ray dashboard to anyone who can open it: no
# credential goes there; the cluster reads its own from its environment (see CREDENTIALS_DOC).
CREDENTIALS_DOC = "docs/cluster.md#credentials"
_SECRET_NAME = re.compile(r"PASSWORD|PASSWD|PASSPHRASE|SECRET|(?:^|_)(?:TOKEN|CREDENTIALS?|API_?KEY|ACCOUNT_KEY"
                          r"|PRIVATE_KEY|CONNECTION_STRING)(?:_|$)", re.I)
_SECRET_VALUES = ((re.compile(r"[a-z][a-z0-9+.-]*://[^/\s@:]*:[^/\s@]+@", re.I), "a URL with a password"),
                  (re.compile(r"[?&;](?:password|passwd|pwd|secret|token|access_token|api_key|sslpassword)=", re.I),
                   "a password in a URL query"),
                  (re.compile(r"\batn_[0-9a-f]{12}_\S"), "an attune API key"))


class JobsError(AttuneError):
    """A cluster that cannot be reached, or a job request it refused (exit status 1)."""


class JobsUsageError(JobsError, UsageError):
    """An address, ``--env`` value, job name or job id that cannot work (exit status 2)."""


def pick_address(flag: Optional[str], settings: Settings) -> tuple[str, str]:
    """(address, where it came from): ``--address``, else ``ATTUNE_RAY_DASHBOARD``, else ``RAY_ADDRESS``."""
    for value, source in ((flag, "--address"), (settings.ray_dashboard, "ATTUNE_RAY_DASHBOARD"),
                          (settings.ray_address, "RAY_ADDRESS")):
        if value:
            return value.strip(), source
    raise JobsUsageError("no Ray cluster to talk to: pass --address http://HEAD:8265, or set ATTUNE_RAY_DASHBOARD "
                    "(the dashboard URL) or RAY_ADDRESS (HEAD:6379)")


def candidate_url(address: str, source: str = "--address") -> tuple[str, bool]:
    """(dashboard URL to try first, whether ``address`` may instead be a GCS address) — no I/O."""
    parsed = urllib.parse.urlsplit(address if "://" in address else f"//{address}")
    scheme, host, port = parsed.scheme, parsed.hostname, _port(parsed, address, source)
    if not host:
        raise JobsUsageError(f"{source}={address!r} has no host; use http://HEAD:8265, ray://HEAD:10001 or HEAD:6379")
    if scheme in ("http", "https"):
        return address.rstrip("/"), False
    if scheme == "ray":  # Ray Client's port is not the dashboard's: use the dashboard's default port
        return f"http://{_netloc(host, DASHBOARD_PORT)}", False
    if scheme:
        raise JobsUsageError(f"{source}={address!r}: unsupported scheme {scheme!r}; "
                        "use http(s)://HEAD:8265, ray://HEAD or HEAD:PORT")
    return f"http://{_netloc(host, port or DASHBOARD_PORT)}", port not in (None, DASHBOARD_PORT)


def dashboard_url(address: str, source: str = "--address") -> str:
    """The dashboard (Jobs API) URL for ``address``; raises :class:`JobsError` within about 10 s
    when nothing answers there."""
    if address == "auto":  # RAY_ADDRESS=auto: the Ray cluster running on this machine
        url = _dashboard_from_gcs(address, None, None, source)
    else:
        url, maybe_gcs = candidate_url(address, source)
        if maybe_gcs and _ray_version(url) is None:
            parsed = urllib.parse.urlsplit(f"//{address}")
            url = _dashboard_from_gcs(address, parsed.hostname, parsed.port, source)
    if _ray_version(url) is None:
        raise JobsError(f"no Ray dashboard answers at {url} (from {source}={address!r}; waited at most "
                        f"{PROBE_TIMEOUT_S:g}s). Is the cluster up (`ray status` on the head)? The dashboard must "
                        f"listen beyond loopback for remote use (`ray start --head --dashboard-host=0.0.0.0`); "
                        "on Kubernetes, port-forward the head service's port 8265")
    return url


def is_local(url: str) -> bool:
    """True when the dashboard runs on this machine (so the job shares this file system)."""
    return urllib.parse.urlsplit(url).hostname in LOCAL_HOSTS


def _port(parsed, address: str, source: str) -> Optional[int]:
    try:
        return parsed.port
    except ValueError:
        raise JobsUsageError(f"{source}={address!r} has an invalid port") from None


def _netloc(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _ray_version(url: str) -> Optional[str]:
    """The Ray version the dashboard at ``url`` reports, or None when it does not answer as one."""
    try:
        with urllib.request.urlopen(f"{url}/api/version", timeout=PROBE_TIMEOUT_S) as resp:
            return json.loads(resp.read().decode()).get("ray_version") or "?"
    except urllib.error.HTTPError as exc:  # an authenticated dashboard still tells us it is one
        return "?" if exc.code in (401, 403) else None
    except (OSError, ValueError, http.client.HTTPException):  # e.g. a gRPC port answering HTTP/2 frames
        return None


def _dashboard_from_gcs(address: str, host: Optional[str], port: Optional[int], source: str) -> str:
    """Ask the GCS at ``host:port`` (``ray start``'s address; None: the local cluster, ``auto``)
    where its dashboard listens."""
    if host is not None:
        try:
            socket.create_connection((host, port), timeout=PROBE_TIMEOUT_S).close()
        except OSError as exc:
            raise JobsError(f"cannot reach the Ray cluster at {source}={address!r}: {exc}. Check the address; "
                            "for a dashboard URL use http://HEAD:8265") from None
    found: dict = {}

    def lookup() -> None:
        try:
            from ray.dashboard.utils import ray_address_to_api_server_url

            found["url"] = ray_address_to_api_server_url(f"{host}:{port}" if host else "auto")
        except Exception as exc:  # noqa: BLE001 - reported below with the address
            found["error"] = exc

    thread = threading.Thread(target=lookup, daemon=True)
    thread.start()
    thread.join(LOOKUP_TIMEOUT_S)
    if "url" not in found:
        reason = found.get("error", f"no answer within {LOOKUP_TIMEOUT_S:g}s")
        raise JobsError(f"{source}={address!r} answers but its dashboard address could not be read from the "
                        f"Ray GCS ({reason}); pass the dashboard URL instead: --address http://HEAD:8265")
    return found["url"].rstrip("/")


@contextlib.contextmanager
def _only_this_address(url: str):
    """Ray's client lets RAY_ADDRESS / RAY_API_SERVER_ADDRESS override the address it is given:
    pin it to the one attune resolved while the client is built."""
    saved = os.environ.get("RAY_API_SERVER_ADDRESS")
    os.environ["RAY_API_SERVER_ADDRESS"] = url
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop("RAY_API_SERVER_ADDRESS", None)
        else:
            os.environ["RAY_API_SERVER_ADDRESS"] = saved


def client(url: str):
    """A ``JobSubmissionClient`` on the dashboard ``url`` (from :func:`dashboard_url`)."""
    from ray.job_submission import JobSubmissionClient

    with _only_this_address(url):
        try:
            return JobSubmissionClient(url)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise JobsError(f"the Ray Jobs API at {url} refused the connection: {exc}") from None


# -- what a job carries -----------------------------------------------------------------------------

def job_env_vars(settings: Settings, url: str, extra: list[str], *, home_flag: bool = False,
                 environ: Optional[dict] = None) -> dict:
    """Environment of the job: attune's worker defaults, every setting set here that holds no credential
    (:func:`settings_vars`; see :func:`withheld_settings`), the state folder when the cluster shares this
    machine, and each ``--env NAME[=VALUE]`` (a credential there is refused)."""
    environ = os.environ if environ is None else environ
    env = dict(_WORKER_ENV)
    env.update({k: v for k, v in settings_vars(environ).items() if secret_reason(k, v) is None})
    if "ATTUNE_HOME" in env or home_flag or is_local(url):  # never a relative path: the job's cwd is its code copy
        env["ATTUNE_HOME"] = str(Path(settings.home).resolve())
    for item in extra:
        name, sep, value = item.partition("=")
        if not name or (not sep and name not in environ):
            raise JobsUsageError(f"--env {item!r}: give NAME=VALUE, or the NAME of a variable set in this shell")
        value = value if sep else environ[name]
        reason = secret_reason(name, value)
        if reason is not None:
            raise JobsUsageError(f"--env {name}: not submitted, because {reason} and the Ray dashboard shows a "
                                 "job's environment to anyone who can open it. Give the cluster this credential "
                                 "in its own environment (the Ray head and workers: a KubeRay Secret, or the env "
                                 f"file of `ray up`; see {CREDENTIALS_DOC}) and submit without --env {name}")
        env[name] = value
    return env


def settings_vars(environ: dict) -> dict[str, str]:
    """The settings of this shell that a job would carry: every non-empty ``ATTUNE_*`` variable but
    ``ATTUNE_RAY_DASHBOARD`` (a submitter's setting, meaningless inside the cluster), and
    ``MLFLOW_TRACKING_URI`` when it is the tracking URI here (no ``ATTUNE_MLFLOW_TRACKING_URI``)."""
    found = {k: v for k, v in environ.items()
             if k.startswith(_ATTUNE_PREFIX) and v != "" and k != "ATTUNE_RAY_DASHBOARD"}
    if not environ.get(_TRACKING_URI) and environ.get(_MLFLOW_TRACKING_URI):
        found[_MLFLOW_TRACKING_URI] = environ[_MLFLOW_TRACKING_URI]
    return found


def secret_reason(name: str, value: str) -> Optional[str]:
    """Why ``name=value`` is a credential that must not go with a job (its name, or a password, token or
    API key in its value), or None when it holds none. Never quotes the value."""
    if _SECRET_NAME.search(name):
        return f"{name} is named like a credential"
    what = credential_in(value)
    return None if what is None else f"{name} holds {what}"


def credential_in(text: str) -> Optional[str]:
    """What credential ``text`` holds ("a URL with a password", ...), or None."""
    return next((what for pattern, what in _SECRET_VALUES if pattern.search(text)), None)


def withheld_settings(environ: Optional[dict] = None) -> dict[str, str]:
    """``{name: why}`` of the settings set here (:func:`settings_vars`) that :func:`job_env_vars` leaves out."""
    environ = os.environ if environ is None else environ
    found = {k: secret_reason(k, v) for k, v in settings_vars(environ).items()}
    return {k: why for k, why in sorted(found.items()) if why is not None}


def withheld_line(withheld: dict[str, str]) -> str:
    """The line ``attune submit`` prints about the settings it left out, and what the cluster needs instead."""
    return (f"attune: not sent with the job, because the Ray dashboard shows a job's environment to anyone who "
            f"can open it: {'; '.join(withheld.values())}. The job uses the cluster's own value of "
            f"{', '.join(withheld)}: set it in the environment of the Ray head and workers (a KubeRay Secret, or "
            f"the env file of `ray up`; see {CREDENTIALS_DOC})")


def runtime_env(env_vars: dict) -> dict:
    """The job's runtime env: the project code (from a source checkout) and ``env_vars``."""
    out: dict = {"env_vars": env_vars}
    root = code_dir()
    if root is not None:
        out.update(working_dir=root, excludes=list(CODE_EXCLUDES))
    return out


def entrypoint(argv: list[str]) -> str:
    """The shell command the job runs: the attune CLI with ``argv`` under the cluster's Python."""
    return "python -m cluster.cli " + " ".join(shlex.quote(a) for a in argv)


def submit(jobs, argv: list[str], env_vars: dict, name: Optional[str]) -> str:
    try:
        return jobs.submit_job(entrypoint=entrypoint(argv), runtime_env=runtime_env(env_vars),
                               submission_id=name, metadata={"submitted_by": "attune", "command": argv[0]})
    except RuntimeError as exc:
        if name and "already exists" in str(exc):
            raise JobsUsageError(f"a job named {name!r} already exists on this cluster; "
                                 "choose another --name") from None
        raise JobsError(f"the cluster refused the job: {_last_error_line(str(exc))}") from None


def _last_error_line(text: str) -> str:
    """The server's own error line out of the traceback the Jobs API sends back."""
    lines = [line.strip(" .") for line in text.splitlines() if "Error:" in line]
    return lines[-1] if lines else text.strip()


def summary_line(info: dict) -> str:
    """``job ID STATUS``, with the first line of Ray's message when the job did not succeed."""
    message = (info.get("message") or "").strip().splitlines()
    reason = f": {message[0]}" if info["status"] != "SUCCEEDED" and message else ""
    return f"job {info['job_id']} {info['status']}{reason}"


# -- following a job --------------------------------------------------------------------------------

def follow(jobs, job_id: str, out: TextIO = sys.stdout, heartbeat_s: float = 10.0) -> dict:
    """Stream the job's logs to ``out`` until it ends; returns :func:`describe` of the ended job."""
    started = time.monotonic()
    try:
        asyncio.run(_tail(jobs, job_id, out, heartbeat_s, started))
    except Exception as exc:  # noqa: BLE001 - a dropped log stream must not lose the job's outcome
        logger.warning("log stream of job %s ended early (%s); polling its status", job_id, exc)
    while True:  # the stream closes at the end of the job; make sure of it
        info = describe(jobs, job_id)
        if info["status"] in TERMINAL:
            return info
        _heartbeat(job_id, info["status"], started)
        time.sleep(min(heartbeat_s, 2.0))


async def _tail(jobs, job_id: str, out: TextIO, heartbeat_s: float, started: float) -> None:
    last = [time.monotonic()]

    async def beat() -> None:
        while True:
            await asyncio.sleep(1.0)
            if time.monotonic() - last[0] >= heartbeat_s:
                _heartbeat(job_id, "RUNNING", started)
                last[0] = time.monotonic()

    ticker = asyncio.ensure_future(beat())
    try:
        async for chunk in jobs.tail_job_logs(job_id):
            out.write(chunk)
            out.flush()
            last[0] = time.monotonic()
    finally:
        ticker.cancel()


def _heartbeat(job_id: str, status: str, started: float) -> None:
    print(f"attune: job {job_id} {status} ({time.monotonic() - started:.0f}s)", file=sys.stderr, flush=True)


def describe(jobs, job_id: str) -> dict:
    """One job as plain data (``attune jobs status --json``)."""
    try:
        info = jobs.get_job_info(job_id)
    except RuntimeError as exc:
        raise JobsUsageError(f"no job {job_id!r} on this cluster ({exc}); list them with `attune jobs list`") from None
    return _as_dict(info)


def _as_dict(info) -> dict:
    status = getattr(info.status, "value", info.status)
    return {"job_id": info.submission_id or info.job_id, "status": str(status), "entrypoint": info.entrypoint,
            "message": info.message, "start_time": _seconds(info.start_time), "end_time": _seconds(info.end_time),
            "driver_exit_code": getattr(info, "driver_exit_code", None), "metadata": info.metadata or {}}


def _seconds(ms: Optional[int]) -> Optional[float]:
    return ms / 1000.0 if ms else None


def list_jobs(jobs) -> list[dict]:
    rows = [_as_dict(info) for info in jobs.list_jobs()]
    return sorted(rows, key=lambda r: r["start_time"] or 0.0)


def exit_code(info: dict) -> int:
    """0 when the job succeeded; else the driver's own exit status when it has one, else 1."""
    if info["status"] == "SUCCEEDED":
        return 0
    code = info.get("driver_exit_code")
    return code if isinstance(code, int) and 0 < code < 128 else 1
