"""`attune demo`'s pieces that need no cluster: parsing, output, and its checks."""
from __future__ import annotations

import socket

import pytest

from cluster import demo as _demo
from cluster.cli import build_parser


def _row(text, john, jane):
    answer = lambda label: {"label": label, "scores": {"positive": 0.7, "negative": 0.2, "neutral": 0.1}  # noqa: E731
                            | {label: 0.7}, "model_version": "3"}
    return {"text": text, "john": answer(john), "jane": answer(jane)}


def test_parser_defaults_and_flags():
    args = build_parser().parse_args(["demo"])
    assert (args.port, args.keep_running, args.retrain, args.base, args.json) == (8000, False, False, "minilm", False)
    args = build_parser().parse_args(["demo", "--keep-running", "--port", "8100", "--json", "--retrain"])
    assert (args.port, args.keep_running, args.retrain, args.json) == (8100, True, True, True)


def test_seed_sentence_comes_first_and_training_covers_the_three_tenants():
    assert _demo.TEXTS[0] == "gold is up 150% in after-hours trading"
    assert set(_demo.TRAINING) == {"john", "jane", "newsdesk"}
    assert _demo.COMMON == ["--workers", "2", "--zero-stage", "2"]


def test_last_json_skips_log_lines_after_the_summary():
    out = 'progress line\n{"a": 1}\n(RayTrainWorker) a late log line\n'
    assert _demo._last_json(out, ["finetune"]) == {"a": 1}
    with pytest.raises(_demo.DemoError, match="printed no JSON summary"):
        _demo._last_json("no json here\n", ["keys", "create"])


def test_table_puts_tenants_side_by_side():
    table = _demo._table([_row(_demo.SEED_SENTENCE, "positive", "negative")])
    header, line = table.strip().splitlines()
    assert "john" in header and "jane" in header
    assert line.startswith(_demo.SEED_SENTENCE)
    assert line.index("positive") < line.index("negative") and line.count("v3") == 2


def test_next_steps_print_curl_lines_with_each_key():
    args = build_parser().parse_args(["--home", "/tmp/h", "demo", "--keep-running"])
    text = _demo._next_steps("http://127.0.0.1:8000", {"john": "atn_j", "jane": "atn_k"}, args)
    assert "Authorization: Bearer atn_j" in text and "/v1/tenants/jane/predict" in text
    assert "attune --home /tmp/h registry ui" in text and "attune --home /tmp/h serve down" in text


def test_a_busy_port_is_refused_before_anything_runs():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        with pytest.raises(_demo.DemoError, match=f"port {port} .* already in use"):
            _demo._check_port_free(port)


def test_side_by_side_shows_john_before_and_after_and_jane():
    before = [_row(_demo.SEED_SENTENCE, "positive", "negative")]
    after = [_row(_demo.SEED_SENTENCE, "negative", "negative")]
    after[0]["john"]["model_version"] = "4"
    header, line = _demo._side_by_side(before, after).strip().splitlines()
    assert header.index("john before") < header.index("john after") < header.index("jane")
    assert line.startswith(_demo.SEED_SENTENCE)
    cells = line[len(_demo.SEED_SENTENCE):].split()
    assert [c for c in cells if c in ("positive", "negative")] == ["positive", "negative", "negative"]
    assert line.index("v3") < line.index("v4") < line.rindex("v3")
