import pytest
from pydantic import ValidationError

from cluster import SettingsError, get_settings
from train import FinetuneConfig, check_tenant_id


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


def test_bad_setting_names_the_variable_and_value():
    with pytest.raises(SettingsError, match=r"ATTUNE_ZERO_STAGE='7'"):
        get_settings({"ATTUNE_ZERO_STAGE": "7"})
