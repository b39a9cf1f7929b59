"""`attune finetune` refuses bad data as a subprocess, before Ray or anything else starts.

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
