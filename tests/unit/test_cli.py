"""The attune CLI in-process: argument handling and failures that happen before Ray starts."""
import json

import pytest

from cluster.cli import main
from tests.conftest import write_jsonl


def _rows(n_per_label=6, labels=("up", "down")):
    return [{"text": f"{label} text {i}", "label": label} for label in labels for i in range(n_per_label)]


def test_finetune_bad_data_exits_nonzero_with_message_and_leaves_nothing(tmp_path, attune_home, capsys):
    rows = _rows() + [{"text": "   ", "label": "up"}, {"text": "up text 0", "label": "down"}]
    data = write_jsonl(tmp_path / "bad.jsonl", rows)
    code = main(["finetune", "--tenant", "john", "--data", str(data), "--json"])
    err = capsys.readouterr().err
    assert code == 2
    assert str(data) in err and "row 13" in err and "row 14" in err
    assert "empty" in err.lower() and "different labels" in err
    assert not (attune_home / "models").exists()


def test_finetune_missing_file_and_bad_tenant_and_bad_base(tmp_path, attune_home, capsys):
    assert main(["finetune", "--tenant", "john", "--data", str(tmp_path / "nope.jsonl")]) == 2
    assert "nope.jsonl" in capsys.readouterr().err
    data = write_jsonl(tmp_path / "ok.jsonl", _rows())
    assert main(["finetune", "--tenant", "../x", "--data", str(data)]) == 2
    assert "invalid tenant id" in capsys.readouterr().err
    assert main(["finetune", "--tenant", "john", "--data", str(data), "--base", str(tmp_path / "nobase")]) == 2
    assert "--base" in capsys.readouterr().err
    assert main(["finetune", "--tenant", "john", "--data", str(data), "--lr", "5"]) == 2
    assert "--lr=5.0" in capsys.readouterr().err
    assert not (attune_home / "models").exists()


def test_finetune_refuses_existing_nonempty_out(tmp_path, attune_home, capsys):
    data = write_jsonl(tmp_path / "ok.jsonl", _rows(n_per_label=20))
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    assert main(["finetune", "--tenant", "john", "--data", str(data), "--out", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err
    assert (out / "keep.txt").read_text() == "x"


def test_data_demo_json_is_last_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("ATTUNE_NEWSDESK_DATA", str(tmp_path / "absent"))
    assert main(["data", "demo", "--out", str(tmp_path / "d")]) == 2
    assert "--newsdesk-source" in capsys.readouterr().err
    monkeypatch.delenv("ATTUNE_NEWSDESK_DATA")
    assert main(["data", "demo", "--out", str(tmp_path / "d"), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["rows"]["john"] == summary["rows"]["jane"] >= 600
    assert summary["conflict_fraction"] >= 0.4
    assert (tmp_path / "d" / "john.jsonl").is_file()


def test_help_lists_subcommands(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for command in ("finetune", "predict", "data"):
        assert command in out
