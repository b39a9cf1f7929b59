import pytest
from pydantic import ValidationError

from cluster import SettingsError, get_settings
from registry import check_tenant_id
from train import FinetuneConfig


@pytest.mark.parametrize("tenant", ["", "John", "../etc", "a b", "x" * 64, "-lead", "t/../../x", "a.b"])
def test_bad_tenant_ids_are_rejected_with_the_rule(tenant):
    with pytest.raises(ValueError, match=r"invalid tenant id .*\^\[a-z0-9\]"):
        check_tenant_id(tenant)


@pytest.mark.parametrize("tenant", ["john", "jane_2", "a", "newsdesk-eu", "0" * 63])
def test_good_tenant_ids_pass(tenant):
    assert check_tenant_id(tenant) == tenant


def test_config_forbids_unknown_keys_and_checks_bounds():
    with pytest.raises(ValidationError, match="extra"):
        FinetuneConfig(tenant="john", data="x.jsonl", nonsense=1)
    with pytest.raises(ValidationError, match="zero_stage"):
        FinetuneConfig(tenant="john", data="x.jsonl", zero_stage=4)
    with pytest.raises(ValidationError, match="split fractions"):
        FinetuneConfig(tenant="john", data="x.jsonl", split_fractions=(0.5, 0.5, 0.5))


def test_settings_read_environment_with_units_and_validate():
    s = get_settings({"ATTUNE_HOME": "/tmp/h", "ATTUNE_WORKERS": "3", "AWS_ENDPOINT_URL": "http://127.0.0.1:1"})
    assert str(s.home) == "/tmp/h" and s.num_workers == 3
    assert s.s3_endpoint_url == "http://127.0.0.1:1"
    assert get_settings({"ATTUNE_S3_ENDPOINT_URL": "http://a", "AWS_ENDPOINT_URL": "http://b"}).s3_endpoint_url == "http://a"
    assert get_settings({}, home="/flag").home.as_posix() == "/flag"  # a flag wins over the default


@pytest.mark.parametrize("environ, flag, expected", [
    ({"ATTUNE_MLFLOW_TRACKING_URI": "http://attune:5000", "MLFLOW_TRACKING_URI": "http://mlflow:5000"}, None,
     "http://attune:5000"),  # ATTUNE_ wins
    ({"MLFLOW_TRACKING_URI": "http://mlflow:5000"}, None, "http://mlflow:5000"),  # MLflow's own variable
    ({"ATTUNE_MLFLOW_TRACKING_URI": "", "MLFLOW_TRACKING_URI": "http://mlflow:5000"}, None,
     "http://mlflow:5000"),  # an empty ATTUNE_ value counts as unset
    ({"ATTUNE_MLFLOW_TRACKING_URI": "", "MLFLOW_TRACKING_URI": ""}, None, "sqlite:////h/mlflow.db"),
    ({}, None, "sqlite:////h/mlflow.db"),  # the embedded store
    ({"ATTUNE_MLFLOW_TRACKING_URI": "http://attune:5000", "MLFLOW_TRACKING_URI": "http://mlflow:5000"},
     "sqlite:////flag.db", "sqlite:////flag.db"),  # an explicit value (a flag, a test's override) wins over both
])
def test_tracking_uri_attune_variable_then_mlflow_variable_then_embedded_store(environ, flag, expected):
    settings = get_settings({**environ, "ATTUNE_HOME": "/h"}, mlflow_tracking_uri=flag)
    assert settings.tracking_uri == expected
    # the one resolved value is what every reader of the setting sees (serve's key store, attune submit)
    assert settings.mlflow_tracking_uri == (None if expected.startswith("sqlite:////h/") else expected)


def test_bad_setting_names_the_variable_and_value():
    with pytest.raises(SettingsError, match=r"ATTUNE_ZERO_STAGE='7'"):
        get_settings({"ATTUNE_ZERO_STAGE": "7"})


def test_ray_train_env_polls_faster_and_drops_the_preemption_watcher_on_one_machine(monkeypatch):
    from cluster._runtime import _job_env

    monkeypatch.delenv("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", raising=False)
    monkeypatch.delenv("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", raising=False)
    local, remote = _job_env(local=True), _job_env(local=False)
    assert local["RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"] == remote["RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"] == "0.5"
    assert local["RAY_TRAIN_ENABLE_PREEMPTION_WATCHER"] == "0"
    assert "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER" not in remote  # a real cluster's nodes can be preempted
    assert local["HF_HUB_OFFLINE"] == "1"
    monkeypatch.setenv("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "3")  # the user's own value wins
    assert _job_env(local=True)["RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"] == "3"


def test_deepspeed_is_imported_without_mlflow_and_mlflow_still_imports_after():
    import subprocess
    import sys

    code = ("import sys; from train._deepspeed import import_deepspeed; import_deepspeed(); "
            "loaded = 'mlflow' in sys.modules; import mlflow; print(loaded, mlflow.__name__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split()[-2:] == ["False", "mlflow"]


def test_a_missing_cpp_compiler_is_named_before_training_starts(tmp_path):
    """Without a compiler DeepSpeed fails deep in its comm set-up; build_cpu_ops says what to install."""
    import os
    import subprocess
    import sys

    broken = tmp_path / "c++"
    broken.write_text("#!/bin/sh\nexit 1\n")
    broken.chmod(0o755)
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "CXX": str(broken),
           "TORCH_EXTENSIONS_DIR": str(tmp_path / "extensions")}  # an empty cache: it must compile
    code = "from train._deepspeed import build_cpu_ops; build_cpu_ops()"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    assert out.returncode != 0
    assert "RuntimeError: DeepSpeed could not build its CPU communication op" in out.stderr
    assert "install g++" in out.stderr and str(broken) in out.stderr  # the offending compiler is named
