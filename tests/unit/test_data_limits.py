"""Unit tests of tenant data limits (size, rows, labels, label length) and of unusable JSON values."""
from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

import train._data_limits as data_limits
from cluster import SettingsError, get_settings
from train._data import load_tenant_data, read_rows
from train._data_limits import DataLimits
from train._demo_data import demo_rows
from train._errors import DataValidationError

TWEETS = Path(__file__).resolve().parents[3] / "shared" / "data" / "twitter-financial-news-sentiment"
DEFAULTS = DataLimits.from_settings(get_settings(environ={}))


def _limits(**changes) -> DataLimits:
    return dataclasses.replace(DEFAULTS, **changes)


def _jsonl(rows: list[dict]) -> str:
    return "".join(json.dumps(row) + "\n" for row in rows)


def _good_rows(per_label: int = 6, labels=("neg", "pos")) -> list[dict]:
    return [{"text": f"{label} headline number {i}", "label": label} for label in labels for i in range(per_label)]


def _write(tmp_path: Path, name: str, content: str) -> str:
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    return str(path)


def _problems(path: str, **kwargs) -> list[str]:
    with pytest.raises(DataValidationError) as info:
        load_tenant_data(path, **kwargs)
    assert info.value.source == path
    return info.value.problems


# ----------------------------------------------------------------------------- settings


def test_limits_are_settings_with_production_defaults():
    assert DEFAULTS == DataLimits(max_data_file_mb=100.0, max_data_rows=1_000_000, max_labels=500,
                                  max_label_chars=100)
    environ = {"ATTUNE_MAX_DATA_FILE_MB": "2.5", "ATTUNE_MAX_DATA_ROWS": "50", "ATTUNE_MAX_LABELS": "7",
               "ATTUNE_MAX_LABEL_CHARS": "12"}
    assert DataLimits.from_settings(get_settings(environ=environ)) == DataLimits(2.5, 50, 7, 12)


@pytest.mark.parametrize("var,value", [("ATTUNE_MAX_DATA_FILE_MB", "0"), ("ATTUNE_MAX_DATA_ROWS", "0"),
                                       ("ATTUNE_MAX_LABELS", "1"), ("ATTUNE_MAX_LABEL_CHARS", "0")])
def test_unusable_limit_setting_names_the_variable(var, value):
    with pytest.raises(SettingsError, match=var):
        get_settings(environ={var: value})


def _headroom(path: Path) -> None:
    data = load_tenant_data(str(path))
    assert path.stat().st_size * 50 < DEFAULTS.max_data_file_mb * 1_000_000
    assert sum(data.split_counts().values()) * 50 < DEFAULTS.max_data_rows
    assert len(data.labels) * 50 < DEFAULTS.max_labels
    assert max(len(label) for label in data.labels) * 10 < DEFAULTS.max_label_chars


def test_demo_data_is_far_inside_the_default_limits(tmp_path):
    john, jane = demo_rows()
    for name, rows in (("john", john), ("jane", jane)):
        _headroom(Path(_write(tmp_path, f"{name}.jsonl", _jsonl(rows))))


@pytest.mark.skipif(not TWEETS.is_dir(), reason=f"shared tweet data not present at {TWEETS}")
@pytest.mark.parametrize("name", ["sent_train.csv", "sent_valid.csv"])
def test_real_tweet_data_is_far_inside_the_default_limits(name):
    _headroom(TWEETS / name)


# ----------------------------------------------------------------------------- file size


def test_local_file_over_the_size_limit_is_refused_without_being_read(tmp_path, monkeypatch):
    path = _write(tmp_path, "t.jsonl", _jsonl(_good_rows()))  # 588 bytes

    def _no_open(*args, **kwargs):
        raise AssertionError("the file was opened although its size is over the limit")

    monkeypatch.setattr(data_limits, "open", _no_open, raising=False)
    size = Path(path).stat().st_size
    problems = _problems(path, limits=_limits(max_data_file_mb=0.0005))
    assert problems == [f"the file is {size:,} bytes, over the limit of 0.0005 MB; split it into "
                        "smaller files, or raise the limit with ATTUNE_MAX_DATA_FILE_MB"]


def test_size_limit_comes_from_the_environment_and_applies_to_read_rows(tmp_path, monkeypatch):
    path = _write(tmp_path, "t.csv", "text,label\r\n" + "".join(f"t{i},{'ab'[i % 2]}\r\n" for i in range(20_000)))
    monkeypatch.setenv("ATTUNE_MAX_DATA_FILE_MB", "0.1")
    with pytest.raises(DataValidationError) as info:
        read_rows(path)
    (problem,) = info.value.problems
    assert problem.startswith(f"the file is {Path(path).stat().st_size:,} bytes, over the limit of 0.1 MB")
    assert "ATTUNE_MAX_DATA_FILE_MB" in problem
    monkeypatch.setenv("ATTUNE_MAX_DATA_FILE_MB", "0.2")
    assert len(read_rows(path)) == 20_000


class _Body:
    def __init__(self, data: bytes):
        self.data, self.reads, self.closed = data, [], False

    def read(self, amount: int = -1) -> bytes:
        self.reads.append(amount)
        return self.data if amount < 0 else self.data[:amount]

    def close(self) -> None:
        self.closed = True


def _fake_s3(monkeypatch, body: _Body, content_length) -> list:
    calls: list = []
    missing = type("NoSuchKey", (Exception,), {})

    def get_object(**kwargs):
        calls.append(kwargs)
        return {"Body": body, "ContentLength": content_length}

    client = SimpleNamespace(get_object=get_object, exceptions=SimpleNamespace(NoSuchKey=missing, NoSuchBucket=missing))
    monkeypatch.setattr(data_limits, "s3_client", lambda endpoint_url=None: client)
    return calls


def test_s3_object_over_the_size_limit_is_refused_by_its_content_length(monkeypatch):
    body = _Body(_jsonl(_good_rows()).encode())
    calls = _fake_s3(monkeypatch, body, content_length=250_000_000)
    uri = "s3://tenants/jane/big.jsonl"
    problems = _problems(uri, limits=DEFAULTS)
    assert calls == [{"Bucket": "tenants", "Key": "jane/big.jsonl"}]
    assert body.reads == [] and body.closed
    assert problems == ["the file is 250,000,000 bytes (250.0 MB), over the limit of 100 MB; split it into "
                        "smaller files, or raise the limit with ATTUNE_MAX_DATA_FILE_MB"]


def test_s3_read_stops_one_byte_past_the_limit_when_the_length_is_unknown(monkeypatch):
    body = _Body(_jsonl(_good_rows()).encode())
    _fake_s3(monkeypatch, body, content_length=None)
    problems = _problems("s3://tenants/jane.jsonl", limits=_limits(max_data_file_mb=0.0001))
    assert body.reads == [101] and body.closed
    assert problems == ["the file is more than 100 bytes, over the limit of 0.0001 MB; split it into smaller "
                        "files, or raise the limit with ATTUNE_MAX_DATA_FILE_MB"]


def test_s3_object_inside_the_limit_loads_like_a_local_file(monkeypatch, tmp_path):
    content = _jsonl(_good_rows())
    body = _Body(content.encode())
    _fake_s3(monkeypatch, body, content_length=len(content))
    data = load_tenant_data("s3://tenants/jane.jsonl", limits=DEFAULTS)
    local = load_tenant_data(_write(tmp_path, "jane.jsonl", content), limits=DEFAULTS)
    assert (data.train, data.validation, data.test, data.data_hash) == (
        local.train, local.validation, local.test, local.data_hash)
    assert body.closed


# ----------------------------------------------------------------------------- rows and labels


def test_rows_over_the_limit_name_the_count_the_limit_and_the_setting(tmp_path):
    content = _jsonl(_good_rows()[:6]) + "\n" + _jsonl(_good_rows()[6:])  # a blank line 7 is not a row
    path = _write(tmp_path, "t.jsonl", content)
    assert _problems(path, limits=_limits(max_data_rows=10)) == [
        "the file has 12 data rows, over the limit of 10 (row 12 is the first one over it); split the file, "
        "or raise the limit with ATTUNE_MAX_DATA_ROWS"]
    assert sum(load_tenant_data(path, limits=_limits(max_data_rows=12)).split_counts().values()) == 12


def test_csv_rows_over_the_limit_count_records_not_the_header(tmp_path):
    path = _write(tmp_path, "t.csv", "text,label\r\n" + "".join(f"t{i},{'ab'[i % 2]}\r\n" for i in range(12)))
    problems = _problems(path, limits=_limits(max_data_rows=11))
    assert problems == ["the file has 12 data rows, over the limit of 11 (row 13 is the first one over it); "
                        "split the file, or raise the limit with ATTUNE_MAX_DATA_ROWS"]


def test_labels_over_the_limit_name_the_count_the_limit_and_the_setting(tmp_path):
    path = _write(tmp_path, "t.jsonl", _jsonl(_good_rows(per_label=5, labels=("a", "b", "c"))))
    assert _problems(path, limits=_limits(max_labels=2)) == [
        "the file has 3 distinct labels, over the limit of 2; merge or remove labels, "
        "or raise the limit with ATTUNE_MAX_LABELS"]
    assert load_tenant_data(path, limits=_limits(max_labels=3)).labels == ["a", "b", "c"]


def test_long_labels_name_their_rows_the_limit_and_the_setting(tmp_path):
    rows = _good_rows(labels=("short", "twelve chars"))
    rows[3]["label"] = "x" * 30
    problems = _problems(_write(tmp_path, "t.jsonl", _jsonl(rows)), limits=_limits(max_label_chars=10))
    assert problems[0] == (
        "rows 4, 7, 8, 9, 10, 11, 12: label longer than the limit of 10 characters (the longest has 30: "
        f"{'x' * 30!r}); shorten the label, or raise the limit with ATTUNE_MAX_LABEL_CHARS")


def test_long_number_label_and_long_rare_label_are_shortened_in_messages(tmp_path):
    rows = _good_rows() + [{"text": "odd one", "label": int("9" * 150)}]
    problems = _problems(_write(tmp_path, "t.jsonl", _jsonl(rows)), limits=DEFAULTS)
    assert problems == [
        "row 13: label longer than the limit of 100 characters (the longest has 150: "
        f"'{'9' * 57}...'); shorten the label, or raise the limit with ATTUNE_MAX_LABEL_CHARS",
        f"label '{'9' * 57}...' has 1 example(s), fewer than the minimum 5 (row 13); add examples or remove the label"]


# ----------------------------------------------------------------------------- unusable JSON values


def _with_line(tmp_path: Path, line: str, at: int = 3) -> str:
    lines = _jsonl(_good_rows()).splitlines(keepends=True)
    lines.insert(at - 1, line + "\n")
    return _write(tmp_path, "t.jsonl", "".join(lines))


def test_deeply_nested_json_row_is_a_row_problem_collected_with_the_others(tmp_path):
    deep = '{"text": "x", "label": "neg", "meta": ' + "[" * 100_000 + "]" * 100_000 + "}"
    path = _with_line(tmp_path, deep)
    with open(path, "a", encoding="utf-8") as handle:
        handle.write('{"text": "y", label: 1}\n')
    problems = _problems(path, limits=DEFAULTS)
    assert problems[0] == ('row 3: JSON nested too deeply to read; a row must be one flat object such as '
                           '{"text": "...", "label": "..."}')
    assert problems[1].startswith("row 14: not valid JSON")
    assert len(problems) == 2


@pytest.mark.parametrize("field", ["label", "id", "meta"])
def test_integer_longer_than_python_reads_names_the_row(tmp_path, field):
    row = {"text": "x", "label": "neg", field: 0}
    line = json.dumps(row).replace(f'"{field}": 0', f'"{field}": ' + "7" * (sys.get_int_max_str_digits() + 1))
    problems = _problems(_with_line(tmp_path, line, at=5), limits=DEFAULTS)
    assert problems == [f"row 5: a number has more than {sys.get_int_max_str_digits():,} digits, more than Python "
                        "reads; write it as a quoted string or remove it"]


@pytest.mark.parametrize("literal,shown", [
    ("NaN", "NaN"), ("Infinity", "Infinity (or a number too large for a float)"),
    ("-Infinity", "-Infinity (or a number too large for a float)"),
    ("1e999", "Infinity (or a number too large for a float)")])
def test_non_finite_label_is_refused_with_its_row(tmp_path, literal, shown):
    path = _with_line(tmp_path, '{"text": "gold flat", "label": ' + literal + '}', at=4)
    assert _problems(path, limits=DEFAULTS) == [
        f"row 4: label is {shown}, which is not a class name; give the row a string label or remove it"]
    with pytest.raises(DataValidationError, match="row 4: label is"):
        read_rows(path, limits=DEFAULTS)


@pytest.mark.parametrize("field,row,expected", [
    ("text", {"text": "gold \\ud800 up", "label": "pos"}, "text holds a lone surrogate \\ud800 at character 6"),
    ("label", {"text": "gold up", "label": "pos\\udfff"}, "label holds a lone surrogate \\udfff at character 4"),
    ("id", {"id": "\\udc80", "text": "gold up", "label": "pos"}, "id holds a lone surrogate \\udc80 at character 1"),
])
def test_lone_surrogate_is_refused_with_its_row_and_field(tmp_path, field, row, expected):
    line = json.dumps(row).replace("\\\\u", "\\u")  # the file holds the escape itself
    problems = _problems(_with_line(tmp_path, line, at=2), limits=DEFAULTS)
    assert problems == [f"row 2: {expected}, which is not valid Unicode; fix the \\u escape in the file"]
    assert field in problems[0]


def test_escaped_surrogate_pair_is_a_valid_character(tmp_path):
    rows = _good_rows()
    rows[0]["text"] = "gold \U0001F4C8 up"
    path = _write(tmp_path, "t.jsonl", _jsonl(rows))  # json.dumps writes "\ud83d\udcc8"
    assert "\\ud83d\\udcc8" in Path(path).read_text()
    examples = read_rows(path, limits=DEFAULTS)
    assert examples[0].text == "gold \U0001F4C8 up"
