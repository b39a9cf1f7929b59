"""Secrets stay secret: no credential goes with a submitted job (its environment and command line are
shown on the Ray dashboard), none is on the command line of the `mlflow gc` and `mlflow server`
processes attune starts, and `attune keys create`, which prints a new key, cannot be submitted.
(The real `attune registry ui` process tree is checked in tests/e2e/test_registry_ui.py, whose UI
process serves that whole module.)

The passwords here are fake; the real-process tests use SQLite, whose URI stands in for the secret.
"""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest

from cluster import _jobs
from cluster.cli import main
from cluster.jobs_cli import checked_argv
from registry import _store as store
from registry._ui import ui_command
from tests.registry_helpers import sqlite_registry
from tests.waiting import wait_for

PASSWORD = "fake-pw-8d1c"  # noqa: S105 - a stand-in, searched for in everything that leaves the machine
DB_URL = f"postgresql+psycopg2://attune:{PASSWORD}@db.internal:5432/attune"
REMOTE = "http://10.1.2.3:8265"
HAS_PROC = Path("/proc/self/cmdline").is_file()


class FakeJobs:
    """A ``JobSubmissionClient`` that records what would be sent to the cluster."""

    def __init__(self):
        self.sent: list[dict] = []

    def submit_job(self, **kwargs):
        self.sent.append(kwargs)
        return "job-1"


@pytest.fixture
def cluster(monkeypatch):
    """`attune submit` against a stand-in cluster at a remote address; what it sends is recorded."""
    jobs = FakeJobs()
    monkeypatch.setattr(_jobs, "dashboard_url", lambda address, source="--address": address)
    monkeypatch.setattr(_jobs, "client", lambda url: jobs)
    for name in [n for n in os.environ if n.startswith("ATTUNE_")]:
        monkeypatch.delenv(name)
    return jobs


# -- attune submit ------------------------------------------------------------------------------------

def test_submitted_runtime_env_holds_no_secret_while_settings_travel(cluster, monkeypatch, capsys, caplog):
    monkeypatch.setenv("ATTUNE_MLFLOW_TRACKING_URI", DB_URL)
    monkeypatch.setenv("ATTUNE_KEYS_DB_URL", f"postgresql://db.internal/attune?password={PASSWORD}")
    monkeypatch.setenv("ATTUNE_MLFLOW_ARTIFACT_ROOT", "s3://attune-mlflow/artifacts")
    monkeypatch.setenv("ATTUNE_S3_ENDPOINT_URL", "http://minio.internal:9000")
    monkeypatch.setenv("ATTUNE_SERVE_REFRESH_S", "3")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", PASSWORD)
    monkeypatch.setenv("HF_TOKEN", PASSWORD)

    assert main(["submit", "--address", REMOTE, "--", "registry", "list"]) == 0

    [sent] = cluster.sent
    shipped = json.dumps(sent)
    assert PASSWORD not in shipped and "db.internal" not in shipped
    env = sent["runtime_env"]["env_vars"]
    assert not {"ATTUNE_MLFLOW_TRACKING_URI", "ATTUNE_KEYS_DB_URL", "AWS_SECRET_ACCESS_KEY", "HF_TOKEN"} & set(env)
    assert env["ATTUNE_MLFLOW_ARTIFACT_ROOT"] == "s3://attune-mlflow/artifacts"  # settings without secrets travel
    assert env["ATTUNE_S3_ENDPOINT_URL"] == "http://minio.internal:9000"
    assert env["ATTUNE_SERVE_REFRESH_S"] == "3" and env["TOKENIZERS_PARALLELISM"] == "false"
    err = capsys.readouterr().err
    assert "not sent with the job" in err and PASSWORD not in err
    assert "ATTUNE_KEYS_DB_URL, ATTUNE_MLFLOW_TRACKING_URI" in err and _jobs.CREDENTIALS_DOC in err
    assert "is not set" not in caplog.text  # the tracking URI is set, just not sent: no misleading warning


def test_mlflow_tracking_uri_with_a_password_is_withheld_and_without_one_travels(cluster, monkeypatch, capsys,
                                                                                 caplog):
    """attune reads MLFLOW_TRACKING_URI when ATTUNE_MLFLOW_TRACKING_URI is unset (cluster._settings), so
    it goes with a job as an ATTUNE_ setting would: only without a credential in it."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"https://admin:{PASSWORD}@mlflow.example.com")
    assert main(["submit", "--address", REMOTE, "--", "registry", "list"]) == 0
    shipped = json.dumps(cluster.sent[-1])
    assert PASSWORD not in shipped and "MLFLOW_TRACKING_URI" not in shipped
    err = capsys.readouterr().err
    assert "MLFLOW_TRACKING_URI holds a URL with a password" in err and PASSWORD not in err
    assert "is not set" not in caplog.text  # it is set, just not sent

    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow.internal:5000")
    assert main(["submit", "--address", REMOTE, "--", "registry", "list"]) == 0
    env = cluster.sent[-1]["runtime_env"]["env_vars"]
    assert env["MLFLOW_TRACKING_URI"] == "http://mlflow.internal:5000" and "ATTUNE_MLFLOW_TRACKING_URI" not in env
    assert "not sent with the job" not in capsys.readouterr().err


@pytest.mark.parametrize("flag", ["AWS_SECRET_ACCESS_KEY", f"HF_TOKEN={PASSWORD}", f"DATABASE={DB_URL}",
                                  "MLFLOW_TRACKING_PASSWORD"])
def test_env_flag_with_a_credential_is_refused_and_nothing_is_sent(cluster, monkeypatch, capsys, flag):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", PASSWORD)
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", PASSWORD)
    assert main(["submit", "--address", REMOTE, "--env", flag, "--", "registry", "list"]) == 2
    err = capsys.readouterr().err
    assert cluster.sent == []
    assert f"--env {flag.split('=')[0]}: not submitted" in err and "Ray dashboard" in err
    assert "submit without --env" in err and PASSWORD not in err


def test_env_flag_without_a_credential_still_travels():
    env = _jobs.job_env_vars(SimpleNamespace(home=Path(".attune")), REMOTE, ["AWS_PROFILE=prod", "RAY_AUTH_MODE"],
                             environ={"RAY_AUTH_MODE": "token"})
    assert env["AWS_PROFILE"] == "prod" and env["RAY_AUTH_MODE"] == "token"


@pytest.mark.parametrize("name, value, secret", [
    ("ATTUNE_MLFLOW_TRACKING_URI", DB_URL, True),
    ("ATTUNE_MLFLOW_BACKEND_STORE_URI", f"mysql://root:{PASSWORD}@db/mlflow", True),
    ("ATTUNE_MLFLOW_TRACKING_URI", f"https://admin:{PASSWORD}@mlflow.example.com", True),
    ("ATTUNE_KEYS_DB_URL", f"postgresql://db/attune?sslmode=require&password={PASSWORD}", True),
    ("SOME_SETTING", "atn_0123456789ab_" + "x" * 40, True),  # an attune API key
    ("AWS_SECRET_ACCESS_KEY", "x", True), ("AWS_SESSION_TOKEN", "x", True), ("WANDB_API_KEY", "x", True),
    ("PGPASSWORD", "x", True), ("GOOGLE_APPLICATION_CREDENTIALS", "/k.json", True),
    ("ATTUNE_MLFLOW_TRACKING_URI", "http://mlflow.internal:5000", False),
    ("ATTUNE_MLFLOW_TRACKING_URI", "postgresql://attune@db.internal/mlflow", False),  # a user, no password
    ("ATTUNE_MLFLOW_TRACKING_URI", "sqlite:////data/attune/mlflow.db", False),
    ("TOKENIZERS_PARALLELISM", "false", False), ("AWS_ACCESS_KEY_ID", "AKIA", False),
    ("RAY_AUTH_MODE", "token", False), ("ATTUNE_KEYS_DB_URL", "postgresql://db/attune?sslmode=require", False),
])
def test_what_counts_as_a_credential(name, value, secret):
    reason = _jobs.secret_reason(name, value)
    assert (reason is not None) == secret
    assert reason is None or (PASSWORD not in reason and name in reason)


def test_keys_create_cannot_be_submitted(cluster, capsys):
    assert main(["submit", "--address", REMOTE, "--", "keys", "create", "--tenant", "john"]) == 2
    err = capsys.readouterr().err
    assert cluster.sent == []
    assert "prints the new key's secret" in err and "logs on the Ray dashboard" in err
    assert "Run `attune keys create --tenant john` directly on a machine that reaches the key store" in err
    assert checked_argv(["--", "keys", "list"]) == ["keys", "list"]  # no secret printed: submittable


def test_a_credential_in_the_submitted_command_line_is_refused(cluster, capsys):
    argv = ["finetune", "--tenant", "john", "--data", f"https://u:{PASSWORD}@data.example.com/john.jsonl"]
    assert main(["submit", "--address", REMOTE, "--", *argv]) == 2
    err = capsys.readouterr().err
    assert cluster.sent == [] and "argument 5 of `attune finetune ...` holds a URL with a password" in err
    assert "command line" in err and PASSWORD not in err


# -- mlflow gc --------------------------------------------------------------------------------------

def test_gc_command_passes_the_database_uri_in_the_environment():
    cmd, env = store.gc_command(DB_URL, "7", "http://mlflow.internal:5000", environ={"PATH": "/bin"})
    assert PASSWORD not in " ".join(cmd) and cmd[-2:] == ["--experiment-ids", "7"]
    assert env["MLFLOW_BACKEND_STORE_URI"] == DB_URL and env["MLFLOW_TRACKING_URI"] == "http://mlflow.internal:5000"


@pytest.mark.skipif(not HAS_PROC, reason="reads /proc/<pid>/cmdline")
def test_real_mlflow_gc_purges_with_no_store_uri_on_its_command_line(tmp_path, monkeypatch):
    reg = sqlite_registry(tmp_path / "store")
    experiment_id = reg.client.create_experiment("tenant.secret-check")
    reg.client.delete_experiment(experiment_id)
    seen: list[str] = []
    real_run = subprocess.run

    def run(cmd, **kwargs):  # as subprocess.run, reading the child's command line while it runs
        proc = subprocess.Popen(cmd, env=kwargs["env"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        seen.append(wait_for(lambda: _cmdline(proc.pid), 30, "the child's command line", 0.01))
        out, err = proc.communicate(timeout=120)
        return subprocess.CompletedProcess(cmd, proc.returncode, out, err)

    monkeypatch.setattr(store.subprocess, "run", run)
    try:
        store.purge_experiment(reg.tracking_uri, experiment_id, reg.tracking_uri)
    finally:
        monkeypatch.setattr(store.subprocess, "run", real_run)
    db_path = reg.tracking_uri.removeprefix("sqlite:///")
    assert len(seen) == 1 and db_path not in seen[0] and "sqlite:" not in seen[0]
    assert "gc" in seen[0] and f"--experiment-ids {experiment_id}" in seen[0]
    with pytest.raises(Exception, match="(?i)no experiment|not found|does not exist"):
        reg.client.get_experiment(experiment_id)  # purged from the database named only in the environment


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode().replace("\0", " ").strip()
    except FileNotFoundError:
        return ""


# -- attune registry ui -----------------------------------------------------------------------------

def test_ui_command_passes_the_stores_in_the_environment():
    registry = SimpleNamespace(tracking_uri=DB_URL, artifact_root=f"s3://k:{PASSWORD}@bucket/artifacts")
    cmd, env = ui_command(registry, "127.0.0.1", 5000, environ={"PATH": "/bin"})
    assert PASSWORD not in " ".join(cmd) and cmd[cmd.index("server") + 1:][:4] == ["--host", "127.0.0.1", "--port",
                                                                                    "5000"]
    assert env["MLFLOW_BACKEND_STORE_URI"] == DB_URL
    assert env["MLFLOW_DEFAULT_ARTIFACT_ROOT"] == registry.artifact_root


