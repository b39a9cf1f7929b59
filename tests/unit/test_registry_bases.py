"""Pretrained bases in the registry (SQLite + a local folder, no Ray): every `attune pretrain` export is a
version of base.<name>; `--base models:/base.<name>@<alias>` (or /<version>) resolves through the
registry into a verified cache, with clear errors; bases are never mistaken for tenants."""
from __future__ import annotations

import json

import pytest

from cluster import get_settings
from registry import BASE_ALIAS, Lineage, RunRecord
from tests.registry_helpers import fake_model_dir, record, sqlite_registry
from train import BaseModelError, resolve_base
from train._base import fetch_registered_base, pinned_base


@pytest.fixture
def reg(tmp_path):
    return sqlite_registry(tmp_path / "store")


@pytest.fixture
def settings(reg, tmp_path):
    return get_settings(home=str(tmp_path / "home"), mlflow_tracking_uri=reg.tracking_uri,
                        mlflow_artifact_root=reg.artifact_root)


def base_export(path, payload: str = "one"):
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps({"model_type": "bert", "payload": payload}))
    (path / "model.safetensors").write_bytes(payload.encode() * 100)
    (path / "attune.json").write_text(json.dumps({"kind": "pretrain", "name": "wiki"}))
    return path


def base_record(name: str = "pretrain-wiki-tiny") -> RunRecord:
    lineage = Lineage(kind="pretrain", base="tiny", data_uri="/data/wiki.txt", data_hash="c" * 64,
                      code_version="abc123", attune_version="0.1.0")
    return RunRecord(run_name=name, params={"max_steps": 40}, metrics={"final_eval_perplexity": 700.0},
                     lineage=lineage)


def test_each_export_is_the_next_version_of_base_name_and_takes_the_newest_alias(reg, tmp_path):
    first = reg.register_base("wiki", base_export(tmp_path / "a", "one"), base_record())
    second = reg.register_base("wiki", base_export(tmp_path / "b", "two"), base_record())
    assert (first.version, second.version) == ("1", "2")
    model = reg.client.get_registered_model("base.wiki")
    assert dict(model.aliases) == {BASE_ALIAS: 2} and model.tags["attune.kind"] == "base"
    assert second.tags["attune.kind"] == "pretrain" and second.tags["attune.data_hash"] == "c" * 64
    assert reg.client.get_experiment(reg.client.get_run(second.run_id).info.experiment_id).name == "base.wiki"


@pytest.mark.parametrize("uri, version", [("models:/base.wiki@newest", "2"), ("models:/base.wiki/1", "1"),
                                          ("models:/base.wiki/latest", "2")])
def test_a_models_uri_resolves_through_the_registry_pinned_to_its_version(reg, settings, tmp_path, uri, version):
    for payload in ("one", "two"):
        reg.register_base("wiki", base_export(tmp_path / payload, payload), base_record())
    path, pinned = fetch_registered_base(uri, settings)
    assert pinned == f"models:/base.wiki/{version}"
    assert reg.pin_base(uri) == pinned  # what a search records as its trials' lineage, without a download
    assert path == settings.home / "cache" / "bases" / "base.wiki" / version
    expected = "one" if version == "1" else "two"
    assert json.loads((path / "config.json").read_text())["payload"] == expected
    assert resolve_base(uri, settings) == path
    assert pinned_base(uri, settings) == (pinned, path)
    assert pinned_base("minilm", settings) == ("minilm", None)


def test_a_cached_base_is_not_downloaded_again_and_a_damaged_download_is_refused(reg, settings, tmp_path,
                                                                                  monkeypatch):
    from registry import _store

    reg.register_base("wiki", base_export(tmp_path / "a"), base_record())
    path, _ = fetch_registered_base("models:/base.wiki@newest", settings)

    def no_download(*args, **kwargs):
        raise AssertionError("the cached base was downloaded again")
    monkeypatch.setattr(_store, "download", no_download)
    assert fetch_registered_base("models:/base.wiki/1", settings)[0] == path
    monkeypatch.undo()

    stored = next((tmp_path / "store" / "artifacts").rglob("model/model.safetensors"))
    stored.write_bytes(b"tampered")
    (path / ".attune-checksum").unlink()  # not cached any more: fetched again, and checked
    with pytest.raises(Exception, match=r"models:/base.wiki/1: the files at .* do not match the checksum"):
        fetch_registered_base("models:/base.wiki/1", settings)


@pytest.mark.parametrize("uri, message", [
    ("models:/base.nope@newest", r"no base named 'nope' is registered \(registered bases: base.wiki\); "
                                 r"`attune pretrain --name nope \.\.\.` registers one"),
    ("models:/base.wiki@champion", r"base.wiki has no alias 'champion' \(it has versions \[1\]; @newest = "
                                   r"version 1\)"),
    ("models:/base.wiki/7", r"base.wiki has no version '7'"),
    ("models:/tenant.john/1", r"is not a registered base: write models:/base.<name>@<alias>"),
])
def test_an_unknown_base_name_alias_or_version_is_a_clear_error(reg, settings, tmp_path, uri, message):
    reg.register_base("wiki", base_export(tmp_path / "a"), base_record())
    with pytest.raises(BaseModelError, match=message):
        resolve_base(uri, settings)


def test_bases_are_never_mistaken_for_tenants(reg, tmp_path):
    reg.register_base("john", base_export(tmp_path / "base"), base_record("pretrain-john-tiny"))
    version = reg.register_candidate("john", fake_model_dir(tmp_path / "m"), record())
    reg.promote("john", version.version)
    assert [row["tenant"] for row in reg.list_tenants()] == ["john"]
    assert reg.champion_versions() == {"john": "1"}
    summary = reg.delete_tenant("john")
    assert summary["deleted_versions"] == 1
    assert reg.client.get_registered_model("base.john").aliases == {BASE_ALIAS: 1}  # the base stays
    assert reg.client.get_experiment_by_name("base.john").lifecycle_stage == "active"
    assert reg.list_tenants() == []
