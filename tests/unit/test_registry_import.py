"""`attune registry import`: exports become tenant versions without training, one or a folder of them."""
from __future__ import annotations

import json
import shutil

from cluster.cli import main
from registry import Registry
from tests.serve_helpers import constant_export


def _json(capsys) -> dict:
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def _fleet(tiny_base, root, tenants):
    template = constant_export(tiny_base, root / "template", "positive", "lora")
    for tenant in tenants:
        shutil.copytree(template, root / "fleet" / tenant)
        manifest = json.loads((root / "fleet" / tenant / "attune.json").read_text())
        (root / "fleet" / tenant / "attune.json").write_text(json.dumps({**manifest, "tenant": tenant}))
    return root / "fleet"


def test_a_folder_of_exports_is_registered_in_one_process_and_promoted(tiny_base, tmp_path, attune_home, capsys):
    folder = _fleet(tiny_base, tmp_path, ["ann", "bob", "cat"])
    assert main(["registry", "import", str(folder), "--promote", "--json"]) == 0
    out = _json(capsys)
    assert out["imported"] == [{"tenant": t, "version": "1", "promoted": True} for t in ("ann", "bob", "cat")]
    assert out["seconds"] >= 0
    reg = Registry(f"sqlite:///{(attune_home / 'mlflow.db').resolve()}")
    bob = reg.champion("bob")
    assert bob.version == "1" and bob.checksum and bob.tags["attune.kind"] == "import"
    assert bob.tags["attune.method"] == "lora" and bob.labels == ["negative", "positive"]
    path, _ = reg.download("bob", "champion", tmp_path / "bob-back")  # checksummed as usual
    adapter = "adapter_model.safetensors"
    assert (path / adapter).read_bytes() == (folder / "bob" / adapter).read_bytes()


def test_one_export_becomes_the_next_version_of_the_tenant_given(tiny_base, tmp_path, attune_home, capsys):
    folder = _fleet(tiny_base, tmp_path, ["ann"])
    assert main(["registry", "import", str(folder / "ann"), "--tenant", "zed", "--json"]) == 0
    assert _json(capsys)["imported"] == [{"tenant": "zed", "version": "1", "promoted": False}]
    assert main(["registry", "import", str(folder / "ann"), "--tenant", "zed", "--json"]) == 0
    assert _json(capsys)["imported"] == [{"tenant": "zed", "version": "2", "promoted": False}]
    reg = Registry(f"sqlite:///{(attune_home / 'mlflow.db').resolve()}")
    assert reg.champion_or_none("zed") is None and reg.get_version("zed", "challenger").version == "2"


def test_what_is_not_an_export_is_refused_before_anything_is_registered(tiny_base, tmp_path, attune_home, capsys):
    folder = _fleet(tiny_base, tmp_path, ["ann", "bob"])
    assert main(["registry", "import", str(tmp_path / "nothing-here")]) == 2
    assert "neither an attune export" in capsys.readouterr().err
    assert main(["registry", "import", str(folder), "--tenant", "zed"]) == 2
    assert "holds 2 exports" in capsys.readouterr().err
    manifest = json.loads((folder / "bob" / "attune.json").read_text())
    del manifest["labels"]
    (folder / "bob" / "attune.json").write_text(json.dumps(manifest))
    assert main(["registry", "import", str(folder)]) == 2
    assert "lacks the keys ['labels']" in capsys.readouterr().err
    assert main(["registry", "list", "--json"]) == 0
    assert _json(capsys)["tenants"] == []  # ann was not registered either: every export is checked first
