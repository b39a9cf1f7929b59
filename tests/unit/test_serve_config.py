"""The serve config file: defaults, every shipped YAML, and errors that name the YAML key (no Ray)."""
from __future__ import annotations

from pathlib import Path

import pytest

from cluster import SettingsError, get_settings
from serve._config import AppSpec, ServeConfig, load_config, parse_config
from serve._errors import ServeConfigError

CONFIG_DIR = Path(__file__).resolve().parents[2] / "serve" / "configs"


def test_defaults_match_the_issue():
    cfg = ServeConfig()
    assert (cfg.ingress.max_body_bytes, cfg.ingress.max_texts, cfg.ingress.max_chars) == (1024 * 1024, 64, 10_000)
    # the endpoint scales out by default (min 1, max above 1), and a replica holds thousands of adapters
    assert cfg.model.autoscaling.ray_options() == {"min_replicas": 1, "max_replicas": 2,
                                                   "target_ongoing_requests": 8.0}
    assert cfg.model.adapter_cache_mib == 1024 and cfg.model.cross_tenant_batching is True
    assert cfg.model.batch_wait_timeout_s == 0.0  # a lone request never waits for a batch to fill


@pytest.mark.parametrize("path", sorted(CONFIG_DIR.glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_config_loads(path):
    cfg = load_config(path)
    assert cfg.model.autoscaling.max_replicas >= cfg.model.autoscaling.min_replicas
    assert cfg.model.max_batch_size <= cfg.model.max_ongoing_requests


def test_example_sets_the_autoscaling_it_documents():
    cfg = load_config(CONFIG_DIR / "example.yaml")
    assert cfg.model.autoscaling.max_replicas == 4 and cfg.model.autoscaling.target_ongoing_requests == 8.0


def test_every_problem_is_reported_with_its_key():
    with pytest.raises(ServeConfigError) as err:
        parse_config({"model": {"autoscaling": {"min_replicas": 3, "max_replicas": 2}, "num_cpus": -1},
                      "ingress": {"max_texts": 0}, "bogus": 1})
    text = str(err.value)
    for needle in ("model.autoscaling: min_replicas (3) must not exceed max_replicas (2)", "model.num_cpus",
                   "ingress.max_texts", "bogus: Extra inputs are not permitted"):
        assert needle in text


def test_batch_larger_than_ongoing_requests_is_rejected():
    with pytest.raises(ServeConfigError, match=r"model.max_ongoing_requests \(4\) must be at least "
                                                r"model.max_batch_size \(8\)"):
        parse_config({"model": {"max_ongoing_requests": 4, "max_batch_size": 8}})


def test_config_file_errors(tmp_path):
    with pytest.raises(ServeConfigError, match="no such file"):
        load_config(tmp_path / "missing.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(ServeConfigError, match="must hold a mapping"):
        load_config(tmp_path / "list.yaml")
    (tmp_path / "bad.yaml").write_text("model: [unclosed\n")
    with pytest.raises(ServeConfigError, match="not valid YAML"):
        load_config(tmp_path / "bad.yaml")


def test_spec_takes_serve_settings_from_the_environment(tmp_path):
    settings = get_settings({"ATTUNE_HOME": str(tmp_path), "ATTUNE_SERVE_REFRESH_S": "2.5",
                             "ATTUNE_SERVE_KEYS_REFRESH_S": "3"})
    spec = AppSpec.from_settings(settings)
    assert (spec.refresh_s, spec.keys_refresh_s) == (2.5, 3.0)
    assert spec.keys_url == f"sqlite:///{(tmp_path / 'keys.db').resolve()}"
    assert AppSpec.from_settings(settings, insecure_no_auth=True).keys_url is None
    assert get_settings({}).serve_refresh_s == 5.0


def test_key_refresh_above_ten_seconds_is_rejected():
    with pytest.raises(SettingsError, match="ATTUNE_SERVE_KEYS_REFRESH_S='11'"):
        get_settings({"ATTUNE_SERVE_KEYS_REFRESH_S": "11"})


def test_the_champion_refresh_is_at_most_ten_seconds_so_an_erasure_reaches_every_replica(tmp_path):
    assert get_settings({"ATTUNE_SERVE_REFRESH_S": "10"}).serve_refresh_s == 10.0
    with pytest.raises(SettingsError, match="ATTUNE_SERVE_REFRESH_S"):
        get_settings({"ATTUNE_SERVE_REFRESH_S": "60"})
