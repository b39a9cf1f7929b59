"""Every worker of a local attune Ray points Ray's state API at its own cluster."""
from __future__ import annotations

import importlib
import os

import pytest

from cluster import _worker_setup, get_settings
from cluster._runtime import _runtime_env


def test_local_runs_install_the_hook_and_remote_clusters_do_not(tmp_path):
    local = _runtime_env(get_settings(environ={}, home=str(tmp_path)))
    remote = _runtime_env(get_settings(environ={"RAY_ADDRESS": "10.0.0.5:6379"}, home=str(tmp_path)))
    assert local["worker_process_setup_hook"] == _worker_setup.SETUP_HOOK
    assert "worker_process_setup_hook" not in remote
    module, _, func = _worker_setup.SETUP_HOOK.rpartition(".")
    assert getattr(importlib.import_module(module), func) is _worker_setup.point_state_api_at_own_cluster


def test_local_workers_get_the_named_bases_folder_as_an_absolute_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the default ATTUNE_HOME (.attune) is relative to the driver's directory
    local = _runtime_env(get_settings(environ={}))
    assert local["env_vars"]["ATTUNE_BASES_DIR"] == str(tmp_path.resolve() / ".attune" / "bases")
    chosen = _runtime_env(get_settings(environ={"ATTUNE_BASES_DIR": "shared-bases"}))
    assert chosen["env_vars"]["ATTUNE_BASES_DIR"] == str(tmp_path.resolve() / "shared-bases")
    remote = _runtime_env(get_settings(environ={"RAY_ADDRESS": "10.0.0.5:6379"}))
    assert "ATTUNE_BASES_DIR" not in remote["env_vars"]  # other nodes: their own settings


def test_the_hook_sets_the_clusters_dashboard_over_an_inherited_one(monkeypatch):
    monkeypatch.setenv("RAY_API_SERVER_ADDRESS", "http://127.0.0.1:1111")  # another Ray's, from the driver
    monkeypatch.setattr(_worker_setup, "own_api_server_url", lambda: "http://127.0.0.1:8266")
    _worker_setup.point_state_api_at_own_cluster()
    assert os.environ["RAY_API_SERVER_ADDRESS"] == "http://127.0.0.1:8266"


@pytest.mark.parametrize("lookup", [lambda: None, lambda: (_ for _ in ()).throw(ConnectionError("no GCS"))])
def test_without_a_dashboard_or_on_error_the_hook_changes_nothing_and_never_raises(monkeypatch, lookup):
    monkeypatch.delenv("RAY_API_SERVER_ADDRESS", raising=False)
    monkeypatch.setattr(_worker_setup, "own_api_server_url", lookup)
    _worker_setup.point_state_api_at_own_cluster()
    assert "RAY_API_SERVER_ADDRESS" not in os.environ
