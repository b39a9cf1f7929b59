"""`attune submit` and `attune jobs` without a cluster: what is refused before anything is sent, how
addresses resolve, what a job carries, and the 10-second bound on an unreachable address."""
from __future__ import annotations

import http.server
import json
import shlex
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from cluster import _jobs
from cluster._runtime import cluster_runtime_env
from cluster._settings import get_settings
from cluster.cli import main
from tests.conftest import REPO_ROOT

ATTUNE = str(Path(sys.executable).with_name("attune"))


class _Recorder(http.server.BaseHTTPRequestHandler):
    """A stand-in dashboard: answers /api/version like Ray's and records every request."""

    requests: list[str] = []

    def do_GET(self):  # noqa: N802 - http.server's naming
        self.requests.append(self.path)
        body = json.dumps({"version": "4", "ray_version": "2.60.0", "ray_commit": "x"}).encode()
        self.send_response(200 if self.path == "/api/version" else 404)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_POST = do_GET

    def log_message(self, *args):
        pass


@pytest.fixture
def dashboard():
    _Recorder.requests = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", _Recorder.requests
    server.shutdown()
    server.server_close()


@pytest.fixture
def black_hole():
    """A port that accepts connections (the kernel's backlog) but never answers."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    yield sock.getsockname()[1]
    sock.close()


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.parametrize("argv", [["bogus"], ["finetune", "--tenant"], ["jobs", "list"], ["submit", "--", "data"],
                                  []])
def test_bad_commands_are_refused_before_anything_is_sent(dashboard, argv, capsys):
    url, requests = dashboard
    assert main(["submit", "--address", url, "--", *argv]) == 2
    assert requests == []  # not even the reachability check
    assert "attune: error:" in capsys.readouterr().err


def test_help_of_the_submitted_command_is_shown_and_nothing_is_sent(dashboard, capsys):
    url, requests = dashboard
    assert main(["submit", "--address", url, "--", "registry", "list", "--help"]) == 0
    assert "usage: attune registry list" in capsys.readouterr().out and requests == []


def test_unreachable_address_fails_fast_with_advice(capsys):
    url = f"http://127.0.0.1:{_closed_port()}"
    assert main(["jobs", "list", "--address", url]) == 1  # a cluster that is down: a runtime failure
    err = capsys.readouterr().err
    assert f"no Ray dashboard answers at {url}" in err and "--dashboard-host=0.0.0.0" in err


@pytest.mark.parametrize("form", ["http://127.0.0.1:{port}", "127.0.0.1:{port}"])
def test_a_silent_address_gets_a_clear_error_within_10s(black_hole, form):
    """The CLI as a user runs it, interpreter start included: a dashboard URL, or a GCS-style
    HOST:PORT (tried as a dashboard, then as a GCS), that accepts connections and never answers."""
    address = form.format(port=black_hole)
    started = time.monotonic()
    proc = subprocess.run([ATTUNE, "submit", "--address", address, "--", "registry", "list"],
                          capture_output=True, text=True, timeout=60)
    elapsed = time.monotonic() - started
    assert proc.returncode == 1, proc.stderr[-2000:]  # nothing answers there: a runtime failure
    assert elapsed < 10.0, f"took {elapsed:.1f}s"
    assert address in proc.stderr and "Traceback" not in proc.stderr


def test_address_precedence_flag_then_dashboard_setting_then_ray_address():
    both = get_settings({"RAY_ADDRESS": "10.0.0.1:6379", "ATTUNE_RAY_DASHBOARD": "http://10.0.0.1:8265"})
    assert _jobs.pick_address("http://h:1", both) == ("http://h:1", "--address")
    assert _jobs.pick_address(None, both) == ("http://10.0.0.1:8265", "ATTUNE_RAY_DASHBOARD")
    assert _jobs.pick_address(None, get_settings({"RAY_ADDRESS": "h:6379"})) == ("h:6379", "RAY_ADDRESS")
    with pytest.raises(_jobs.JobsError, match="ATTUNE_RAY_DASHBOARD"):
        _jobs.pick_address(None, get_settings({}))


@pytest.mark.parametrize("address, url, maybe_gcs", [
    ("http://head:8265/", "http://head:8265", False),
    ("https://ray.example.com", "https://ray.example.com", False),
    ("ray://head:10001", "http://head:8265", False),  # Ray Client address: the dashboard's default port
    ("head:8265", "http://head:8265", False),
    ("head", "http://head:8265", False),
    ("head:6379", "http://head:6379", True),  # tried as a dashboard, else asked of the GCS
])
def test_address_forms(address, url, maybe_gcs):
    assert _jobs.candidate_url(address) == (url, maybe_gcs)


@pytest.mark.parametrize("address", ["ftp://head:21", "http://", "head:notaport"])
def test_malformed_addresses_are_rejected(address):
    with pytest.raises(_jobs.JobsError, match="address"):
        _jobs.candidate_url(address)


def test_a_reachable_dashboard_resolves_in_both_forms(dashboard):
    url, requests = dashboard
    assert _jobs.dashboard_url(url) == url
    assert _jobs.dashboard_url(url.removeprefix("http://")) == url  # HOST:PORT that answers as a dashboard
    assert requests and set(requests) == {"/api/version"}


def test_job_env_forwards_attune_settings_only(tmp_path):
    environ = {"ATTUNE_MLFLOW_TRACKING_URI": "http://mlflow:5000", "ATTUNE_SERVE_REFRESH_S": "3",
               "ATTUNE_RAY_DASHBOARD": "http://x:8265", "AWS_SECRET_ACCESS_KEY": "s3cr3t", "HOME": "/root",
               "SOME_TOKEN": "t", "AWS_PROFILE": "prod"}
    settings = get_settings(environ)
    env = _jobs.job_env_vars(settings, "http://10.1.2.3:8265", [], environ=environ)
    assert env["ATTUNE_MLFLOW_TRACKING_URI"] == "http://mlflow:5000" and env["ATTUNE_SERVE_REFRESH_S"] == "3"
    assert env["HF_HUB_OFFLINE"] == "1"  # attune's worker defaults
    assert not {"ATTUNE_RAY_DASHBOARD", "AWS_SECRET_ACCESS_KEY", "HOME", "SOME_TOKEN", "ATTUNE_HOME"} & set(env)
    asked = _jobs.job_env_vars(settings, "http://10.1.2.3:8265", ["AWS_PROFILE", "EXTRA=1"], environ=environ)
    assert asked["AWS_PROFILE"] == "prod" and asked["EXTRA"] == "1"  # a credential is refused: test_secrets.py
    with pytest.raises(_jobs.JobsError, match="NOT_SET"):
        _jobs.job_env_vars(settings, "http://10.1.2.3:8265", ["NOT_SET"], environ=environ)


def test_mlflow_tracking_uri_travels_only_where_it_is_this_shells_tracking_uri():
    """The job resolves its tracking URI as this shell does (cluster._settings): MLFLOW_TRACKING_URI goes
    under its own name when no ATTUNE_MLFLOW_TRACKING_URI is set (an empty one counts as unset), so a
    cluster's own ATTUNE_ value still wins there; it stays here when ATTUNE_'s is the one in use, even
    when that one is withheld for its password, and when it holds a password itself."""
    remote = "http://10.1.2.3:8265"

    def sent(environ: dict) -> dict:
        env = _jobs.job_env_vars(get_settings(environ), remote, [], environ=environ)
        return {k: v for k, v in env.items() if "TRACKING_URI" in k}

    mlflow_only = {"MLFLOW_TRACKING_URI": "http://mlflow.internal:5000"}
    assert sent(mlflow_only) == mlflow_only
    assert sent({**mlflow_only, "ATTUNE_MLFLOW_TRACKING_URI": ""}) == mlflow_only
    both = {**mlflow_only, "ATTUNE_MLFLOW_TRACKING_URI": "http://attune.internal:5000"}
    assert sent(both) == {"ATTUNE_MLFLOW_TRACKING_URI": "http://attune.internal:5000"}
    withheld_attune = {**mlflow_only, "ATTUNE_MLFLOW_TRACKING_URI": "postgresql://u:pw@db/mlflow"}
    assert sent(withheld_attune) == {}  # not a different store than the one this shell uses
    assert set(_jobs.withheld_settings(withheld_attune)) == {"ATTUNE_MLFLOW_TRACKING_URI"}
    with_password = {"MLFLOW_TRACKING_URI": "https://admin:pw@mlflow.example.com"}
    assert sent(with_password) == {}
    assert _jobs.withheld_settings(with_password) == {
        "MLFLOW_TRACKING_URI": "MLFLOW_TRACKING_URI holds a URL with a password"}
    assert sent({"MLFLOW_TRACKING_URI": ""}) == {}


def test_job_env_pins_attune_home_to_an_absolute_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    local = _jobs.job_env_vars(get_settings({}), "http://127.0.0.1:8265", [], environ={})
    assert local["ATTUNE_HOME"] == str(tmp_path / ".attune")  # the default ./.attune, as seen from here
    remote = _jobs.job_env_vars(get_settings({"ATTUNE_HOME": "rel"}), "http://10.0.0.9:8265", [],
                                environ={"ATTUNE_HOME": "rel"})
    assert remote["ATTUNE_HOME"] == str(tmp_path / "rel")


def test_job_ships_the_checkout_and_runs_the_cli():
    env = _jobs.runtime_env({"A": "1"})
    assert env["working_dir"] == str(REPO_ROOT) and env["env_vars"] == {"A": "1"}
    assert {".venv", ".git", ".attune"} <= set(env["excludes"])
    argv = ["finetune", "--tenant", "john", "--data", "/data/it's here.jsonl"]
    command = _jobs.entrypoint(argv)
    assert shlex.split(command) == ["python", "-m", "cluster.cli", *argv]


def test_inside_a_submitted_job_ray_init_adds_only_what_the_job_lacks(monkeypatch):
    from ray.runtime_env.runtime_env import _merge_runtime_env

    ours = {"env_vars": {"TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}}
    outside = cluster_runtime_env(ours)
    assert outside["working_dir"] == str(REPO_ROOT)
    job = {"working_dir": "gcs://_ray_pkg_x.zip", "env_vars": {"TOKENIZERS_PARALLELISM": "false", "A": "1"}}
    monkeypatch.setenv("RAY_JOB_CONFIG_JSON_ENV_VAR", json.dumps({"runtime_env": job, "metadata": {}}))
    inside = cluster_runtime_env(ours)
    assert inside == {"env_vars": {"HF_HUB_OFFLINE": "1"}}
    assert _merge_runtime_env(job, inside) is not None  # Ray's own conflict check passes
    assert _merge_runtime_env(job, outside) is None  # ...where the old runtime env would have failed


@pytest.mark.parametrize("info, code", [({"status": "SUCCEEDED", "driver_exit_code": 0}, 0),
                                        ({"status": "FAILED", "driver_exit_code": 2}, 2),
                                        ({"status": "FAILED", "driver_exit_code": None}, 1),
                                        ({"status": "STOPPED", "driver_exit_code": -15}, 1)])
def test_exit_code_follows_the_job(info, code):
    assert _jobs.exit_code(info) == code


def test_summary_line_keeps_only_the_first_line_of_rays_message():
    info = {"job_id": "j1", "status": "FAILED",
            "message": "Job entrypoint command failed with exit code 2, last available logs:\nline\nline"}
    assert _jobs.summary_line(info) == ("job j1 FAILED: Job entrypoint command failed with exit code 2, "
                                        "last available logs:")
    assert _jobs.summary_line({"job_id": "j1", "status": "SUCCEEDED", "message": "done"}) == "job j1 SUCCEEDED"
