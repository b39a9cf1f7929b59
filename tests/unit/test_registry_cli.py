"""`attune registry list|show|promote|rollback|delete-tenant` as a user types them, run in-process on
an embedded registry under ATTUNE_HOME, with two registered john versions (no training needed: the
registry stores and checks bytes). v1 passed the gate and is champion; v2 was registered with
--no-promote and stays challenger, as `attune finetune --no-promote` leaves it."""
from __future__ import annotations

import json

from cluster.cli import main
from tests.registry_helpers import fake_model_dir, record, sqlite_registry

NO_PROMOTE = "registered with --no-promote; the gate did not run"


def _json(capsys) -> dict:
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def _two_john_versions(home, tmp_path):
    reg = sqlite_registry(home)
    v1 = reg.register_candidate("john", fake_model_dir(tmp_path / "v1", b"one"), record("john", 0.9)).version
    reg.promote("john", v1, reason="first version: macro-F1 0.9000 >= floor 0.0000")
    v2 = reg.register_candidate("john", fake_model_dir(tmp_path / "v2", b"two"), record("john", 0.8)).version
    reg.record_decision("john", v2, False, NO_PROMOTE)
    reg.register_candidate("jane", fake_model_dir(tmp_path / "jane", b"jane"), record("jane"))
    return v1, v2


def test_list_show_promote_rollback_and_delete_tenant(tmp_path, attune_home, capsys):
    assert _two_john_versions(attune_home, tmp_path) == ("1", "2")

    assert main(["registry", "list", "--json"]) == 0
    rows = {r["tenant"]: r for r in _json(capsys)["tenants"]}
    assert rows["john"]["champion_version"] == "1" and rows["john"]["metrics"]["test_macro_f1"] == 0.9
    assert rows["jane"]["champion_version"] is None
    assert main(["registry", "list"]) == 0
    assert "john" in capsys.readouterr().out

    assert main(["registry", "show", "john", "--json"]) == 0
    shown = _json(capsys)
    assert shown["aliases"] == {"champion": "1", "challenger": "2"}
    v1, v2 = shown["versions"]
    assert v1["promotion"]["promoted"] and v2["promotion"] == {"promoted": False, "reason": NO_PROMOTE}
    assert v2["lineage"]["base"] == "minilm" and v2["lineage"]["data_hash"] == "d" * 64
    assert v2["temperature"] == 1.7 and v2["temperature_slope"] == 0.0
    assert main(["registry", "show", "john"]) == 0
    assert "  T=1.700  base=minilm" in capsys.readouterr().out

    assert main(["registry", "promote", "john", "2", "--json"]) == 0
    assert _json(capsys)["previous"] == "1"
    assert main(["registry", "rollback", "john"]) == 0
    assert "from version 2 to version 1" in capsys.readouterr().out

    assert main(["registry", "delete-tenant", "john"]) == 2
    assert "--yes" in capsys.readouterr().err
    assert main(["registry", "delete-tenant", "john", "--yes", "--json"]) == 0
    report = _json(capsys)
    (registry,) = [part for part in report["stores"] if part["store"] == "registry"]
    assert registry["removed"][0] == "registered model tenant.john and its 2 version(s)"
    assert sum(item.startswith("run ") for item in registry["removed"]) == 2
    assert registry["removed"][-1] == "experiment tenant.john"
    assert not (attune_home / "artifacts" / "tenant.john").exists()
    assert main(["predict", "--tenant", "john", "--text", "x"]) == 2
    assert "has no registered model" in capsys.readouterr().err
    assert main(["registry", "list", "--json"]) == 0
    assert {r["tenant"] for r in _json(capsys)["tenants"]} == {"jane"}


def test_unknown_tenant_and_version_are_clear_errors(tmp_path, attune_home, capsys):
    _two_john_versions(attune_home, tmp_path)
    assert main(["registry", "show", "nobody"]) == 2
    assert "nobody" in capsys.readouterr().err
    assert main(["registry", "promote", "john", "9"]) == 2
    err = capsys.readouterr().err
    assert "9" in err and "john" in err


def test_show_writes_a_sloped_temperature_as_the_formula_it_is():
    from registry import temperature_text

    assert temperature_text(6.17, -0.207) == "6.170*exp(-0.207*margin)"
    assert temperature_text(1.7, 0.0) == "1.700"
