"""`attune registry delete-tenant` erases a tenant from every store: its API keys, the registry
(versions, runs, artifacts, the experiment, purged and vacuumed out of SQLite), its feedback, and its
files under ATTUNE_HOME (exports, Train runs, progress logs, the Tune experiment), and leaves other tenants,
including one whose id starts with the same letters, as they were. Run in-process, as a user types it."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from cluster import get_settings
from cluster.cli import main
from registry import Feedback, FeedbackStore, RelocalizeLog
from serve import KeyStore
from tests.registry_helpers import fake_model_dir, record, sqlite_registry

STAMP = "20261207-101112-123456"


def _json(capsys) -> dict:
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def _touch(path: Path, text: str = "x") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


@pytest.fixture
def two_tenants(attune_home, tmp_path):
    """john and john-2, each with a champion, keys and the files training and tuning leave behind."""
    reg = sqlite_registry(attune_home)
    keys = KeyStore(f"sqlite:///{attune_home / 'keys.db'}")
    feedback = FeedbackStore(keys.url)
    files = {}
    for tenant in ("john", "john-2"):
        version = reg.register_candidate(tenant, fake_model_dir(tmp_path / tenant, tenant.encode()),
                                         record(tenant)).version
        reg.promote(tenant, version, reason="first")
        keys.create(tenant)
        feedback.record(tenant, [Feedback(f"{tenant} feedback one", "positive"),
                                 Feedback(f"{tenant} feedback two", "negative")])
        log = RelocalizeLog(keys.url)
        log.finish(log.start(tenant, "by hand"), "promoted", version="2", feedback_rows=2, message=f"{tenant} won")
        log.engine.dispose()
        runs = attune_home / "ray_results"
        files[tenant] = [
            _touch(attune_home / "models" / tenant / "20261207T101112" / "model" / "attune.json", tenant),
            _touch(runs / f"finetune-{tenant}-{STAMP}" / "checkpoint_000000" / "shard.pt"),
            _touch(runs / ".progress" / f"finetune-{tenant}-{STAMP}.jsonl"),
            _touch(runs / f"tune-{tenant}" / "attune-search.json"),
            _touch(attune_home / "data" / tenant / "relocalized-20261207T101112Z.jsonl", f"{tenant} feedback one"),
        ]
    keys.create("john")
    feedback.engine.dispose()
    return {"keys": keys, "feedback": feedback, "files": files, "home": attune_home}


def test_delete_tenant_erases_every_store_and_leaves_the_others(two_tenants, capsys):
    home = two_tenants["home"]
    assert main(["registry", "delete-tenant", "john", "--yes", "--json"]) == 0
    captured = capsys.readouterr()
    report = json.loads(captured.out.strip().splitlines()[-1])
    assert "erasing tenant john" in captured.err and "training" in captured.err
    stores = {part["store"]: part for part in report["stores"]}
    assert list(stores) == ["keys", "registry", "feedback", "relocalize", "training", "tuning"]
    assert len(stores["keys"]["removed"]) == 2
    assert stores["feedback"]["removed"] == ["feedback on 2 text(s)"]
    assert stores["relocalize"]["removed"] == ["1 relocalization record(s)"]
    assert stores["registry"]["removed"][0] == "registered model tenant.john and its 1 version(s)"
    export, run, progress, _, relocalized = two_tenants["files"]["john"]
    assert sorted(stores["training"]["removed"]) == sorted(map(str, [export.parents[2], run.parents[1],
                                                                        progress, relocalized.parent]))
    assert stores["tuning"]["removed"] == [str(two_tenants["files"]["john"][3].parent)]
    assert report["removed"] == sum(len(part["removed"]) for part in report["stores"])

    assert [row["tenant"] for row in two_tenants["keys"].list()] == ["john-2"]
    assert two_tenants["feedback"].items("john") == [] and len(two_tenants["feedback"].items("john-2")) == 2
    assert all(path.exists() for path in two_tenants["files"]["john-2"])
    assert not (home / "models" / "john").exists()
    for database in ("mlflow.db", "keys.db"):  # vacuumed: not even the free pages hold the tenant
        raw = (home / database).read_bytes()
        assert b"tenant.john\x00" not in raw and b"tenant.john'" not in raw
    assert main(["registry", "list", "--json"]) == 0
    assert [row["tenant"] for row in _json(capsys)["tenants"]] == ["john-2"]


def test_the_sqlite_files_hold_nothing_of_an_erased_tenant(two_tenants, tmp_path):
    """Deleted rows stay in a SQLite file's free pages until it is vacuumed: scan the bytes."""
    home = two_tenants["home"]
    marker = b"tenant.john"
    assert marker in (home / "mlflow.db").read_bytes()
    assert main(["registry", "delete-tenant", "john", "--yes"]) == 0
    raw = (home / "mlflow.db").read_bytes()
    assert raw.count(marker) == raw.count(b"tenant.john-2")  # only john-2's names start with it
    keys = (home / "keys.db").read_bytes()  # the API keys and the feedback
    assert keys.count(b"john") == keys.count(b"john-2") and b"john feedback" not in keys and b"john won" not in keys


def test_an_interrupted_erasure_reports_the_failed_store_and_a_second_run_finishes(two_tenants, capsys,
                                                                                  monkeypatch):
    import cluster._erasure as erasure

    real = shutil.rmtree
    calls = []

    def failing_once(path, *args, **kwargs):  # the first export folder cannot be removed, once
        if not calls and Path(path).parent.name == "models":
            calls.append(path)
            raise PermissionError(13, "Permission denied", str(path))
        return real(path, *args, **kwargs)

    monkeypatch.setattr(erasure.shutil, "rmtree", failing_once)
    assert main(["registry", "delete-tenant", "john", "--yes"]) == 1
    err = capsys.readouterr().err
    assert "not fully erased" in err and "training" in err and "Permission denied" in err
    assert "run `attune registry delete-tenant john --yes` again" in err
    assert [row["tenant"] for row in two_tenants["keys"].list()] == ["john-2"]  # the other stores did their part
    assert (two_tenants["home"] / "models" / "john").exists()

    assert main(["registry", "delete-tenant", "john", "--yes", "--json"]) == 0
    stores = {part["store"]: part for part in _json(capsys)["stores"]}
    assert stores["registry"]["removed"] == stores["keys"]["removed"] == stores["feedback"]["removed"] == []
    assert not (two_tenants["home"] / "models" / "john").exists()
    assert main(["registry", "delete-tenant", "john", "--yes"]) == 2
    assert "nothing to erase" in capsys.readouterr().err


def test_an_invalid_tenant_id_erases_nothing(two_tenants, capsys):
    assert main(["registry", "delete-tenant", "../models", "--yes"]) == 2
    assert "invalid tenant id" in capsys.readouterr().err
    assert (two_tenants["home"] / "models" / "john").exists()


def test_every_erasers_entry_point_loads(attune_home):
    from cluster._entry_points import entry_points
    from cluster._erasure import ERASERS_GROUP

    erasers = entry_points(ERASERS_GROUP)
    assert [e.name for e in erasers] == ["keys", "registry", "feedback", "relocalize", "training", "tuning"]
    settings = get_settings()
    for entry in erasers:  # nothing stored yet: every store answers, removes nothing
        part = entry.load()("nobody", settings)
        assert part["removed"] == [] and part["where"] and "store" not in part
