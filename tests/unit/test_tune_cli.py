"""`attune tune` refuses bad input before Ray starts: exit 2, a message naming the problem, no MLflow runs."""
import pytest

from cluster.cli import main
from tests.conftest import write_jsonl


@pytest.fixture
def data(tmp_path):
    rows = [{"text": f"{label} headline {i}", "label": label} for label in ("up", "down") for i in range(40)]
    return write_jsonl(tmp_path / "john.jsonl", rows)


def _tune(*args: str) -> int:
    return main(["tune", "--tenant", "john", *args])


def _nothing_left(home) -> None:
    assert not (home / "mlflow.db").exists(), "an MLflow store (and so maybe a run) was created"
    assert not (home / "ray_results").exists() and not (home / "models").exists()


def test_zero_trials_is_refused(data, attune_home, capsys):
    assert _tune("--data", str(data), "--trials", "0") == 2
    err = capsys.readouterr().err
    assert "--trials=0" in err and "greater than or equal to 1" in err
    _nothing_left(attune_home)


def test_unknown_data_path_is_refused(tmp_path, attune_home, capsys):
    missing = tmp_path / "nobody.jsonl"
    assert _tune("--data", str(missing)) == 2
    assert "nobody.jsonl" in capsys.readouterr().err
    _nothing_left(attune_home)


@pytest.mark.parametrize("text, message", [
    ("", "defines no hyperparameter"),
    ("lr: 0.001\n", "nothing to search"),
    ("learnin_rate: {loguniform: [1.0e-5, 1.0e-3]}\n", "unknown key 'learnin_rate'"),
    ("lora_rank: {choice: [4, 8]}\n", "only apply with --method lora"),
])
def test_bad_space_is_refused_naming_the_problem(tmp_path, data, attune_home, capsys, text, message):
    space = tmp_path / "space.yaml"
    space.write_text(text)
    assert _tune("--data", str(data), "--space", str(space)) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    _nothing_left(attune_home)


def test_inconsistent_flags_are_refused(data, attune_home, capsys):
    assert _tune("--data", str(data), "--scheduler", "pbt", "--search", "optuna") == 2
    assert "--search random" in capsys.readouterr().err
    assert _tune("--data", str(data), "--base", str(data.parent / "no-such-model")) == 2
    assert "--base" in capsys.readouterr().err
    _nothing_left(attune_home)


def test_asha_flags_are_checked_before_anything_runs(data, attune_home, capsys):
    assert _tune("--data", str(data), "--max-epochs", "4", "--grace-period", "4") == 2
    err = capsys.readouterr().err
    assert "--grace-period 4 is not below" in err and "Traceback" not in err
    assert _tune("--data", str(data), "--scheduler", "fifo", "--reduction-factor", "3") == 2
    assert "--scheduler fifo has none" in capsys.readouterr().err
    _nothing_left(attune_home)


def test_resume_without_an_interrupted_search_is_refused(data, attune_home, capsys):
    assert _tune("--data", str(data), "--resume") == 2
    assert "no interrupted search for tenant 'john'" in capsys.readouterr().err
    _nothing_left(attune_home)


def test_help_lists_tune(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "tune" in capsys.readouterr().out


def test_a_second_driver_on_a_running_search_is_refused(data, attune_home, capsys):
    import json
    import socket
    import subprocess
    import sys

    running = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "tune", "--tenant", "john"])
    try:
        experiment = attune_home / "ray_results" / "tune-john"
        experiment.mkdir(parents=True)
        state = {"status": "running", "driver": {"host": socket.gethostname(), "pid": running.pid}}
        (experiment / "attune-search.json").write_text(json.dumps(state))
        for extra in ([], ["--resume"]):
            assert _tune("--data", str(data), *extra) == 2
            assert f"already running in {experiment} (pid {running.pid})" in capsys.readouterr().err
    finally:
        running.kill()
        running.wait()
    assert not (attune_home / "mlflow.db").exists()
