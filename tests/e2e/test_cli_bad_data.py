"""`attune` as a subprocess: `attune finetune` refuses bad data before Ray or anything else starts,
and a first registry command prints attune's answer without MLflow's set-up lines.

The successful path (data, fine-tune, predict, registry commands) runs in tests/e2e/test_demo.py.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e
REPO = Path(__file__).resolve().parents[2]


def attune(*args: str, home: Path, timeout: int = 600, **env) -> subprocess.CompletedProcess:
    environ = dict(os.environ, ATTUNE_HOME=str(home), **env)
    environ.pop("RAY_ADDRESS", None)
    return subprocess.run([sys.executable, "-m", "cluster.cli", *args], cwd=REPO, env=environ,
                          capture_output=True, text=True, timeout=timeout)


def test_bad_data_exits_nonzero_before_starting_anything(tmp_path):
    home = tmp_path / "home"
    bad = tmp_path / "bad.csv"
    bad.write_text("text,label\n" + "".join(f"t{i},a\n" for i in range(5)) + "t0,b\n,a\n")
    proc = attune("finetune", "--tenant", "john", "--data", str(bad), "--json", home=home, timeout=120)
    assert proc.returncode != 0
    assert str(bad) in proc.stderr and "row 7" in proc.stderr and "row 8" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not home.exists() or not any(home.rglob("*"))


def test_a_first_registry_command_prints_attunes_answer_only(tmp_path):
    """The first command on a new ATTUNE_HOME creates the registry's database: MLflow's and alembic's
    set-up lines ("Creating initial MLflow database tables...") stay out of the user's output."""
    proc = attune("registry", "list", home=tmp_path / "home", timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "no tenants registered yet" in proc.stdout
    assert "mlflow" not in proc.stderr.lower() and "alembic" not in proc.stderr.lower(), proc.stderr
