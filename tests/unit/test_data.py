"""Unit tests of train._data: parsing, validation messages and deterministic splits."""
from __future__ import annotations

import hashlib
import json
import pickle
import random
import string
from pathlib import Path

import pytest

from train._data import Example, TenantData, load_tenant_data, read_rows, split_of
from train._errors import ConfigError, DataValidationError

TWEETS = Path(__file__).resolve().parents[3] / "shared" / "data" / "twitter-financial-news-sentiment"


def _jsonl(rows: list[dict]) -> str:
    return "".join(json.dumps(row) + "\n" for row in rows)


def _good_rows(per_label: int = 6, labels=("neg", "pos")) -> list[dict]:
    return [
        {"text": f"{label} headline number {i}", "label": label} for label in labels for i in range(per_label)
    ]


def _write(tmp_path: Path, name: str, content) -> str:
    path = tmp_path / name
    if isinstance(content, str):
        content = content.encode("utf-8")
    path.write_bytes(content)
    return str(path)


def _problems(path: str, **kwargs) -> list[str]:
    with pytest.raises(DataValidationError) as info:
        load_tenant_data(path, **kwargs)
    assert info.value.source == path
    return info.value.problems


# ----------------------------------------------------------------------------- good files


def test_jsonl_loads_with_string_labels_ids_and_hash(tmp_path):
    rows = [{"id": i, "text": f"text {i}", "label": i % 2, "extra": "ignored"} for i in range(12)]
    path = _write(tmp_path, "t.jsonl", _jsonl(rows))
    data = load_tenant_data(path)
    assert isinstance(data, TenantData)
    assert data.labels == ["0", "1"]
    assert data.label_index() == {"0": 0, "1": 1}
    assert sum(data.split_counts().values()) == 12
    assert data.data_hash == hashlib.sha256(Path(path).read_bytes()).hexdigest()
    everything = sorted(data.train + data.validation + data.test, key=lambda e: e.row)
    assert everything[0] == Example(text="text 0", label="0", row=1, id="0")
    assert [e.row for e in everything] == list(range(1, 13))


def test_json_suffix_is_read_as_json_lines_and_blank_lines_keep_numbering(tmp_path):
    content = _jsonl(_good_rows()[:6]) + "\n   \n" + _jsonl(_good_rows()[6:])
    examples = read_rows(_write(tmp_path, "t.json", content))
    assert [e.row for e in examples] == list(range(1, 7)) + list(range(9, 15))


def test_csv_with_crlf_and_quoted_newline_uses_spreadsheet_rows(tmp_path):
    lines = ["id,text,label,source"] + [f"r{i},plain text {i},{'ab'[i % 2]},x" for i in range(10)]
    quoted = 'r99,"first line\nsecond, line",a,x'
    content = "\r\n".join(lines[:3] + [quoted] + lines[3:]) + "\r\n"
    examples = read_rows(_write(tmp_path, "t.csv", content))
    assert examples[0] == Example(text="plain text 0", label="a", row=2, id="r0")
    multi = [e for e in examples if e.id == "r99"][0]
    assert multi.text == "first line\nsecond, line" and multi.row == 4
    assert examples[-1].row == 12


def test_csv_with_utf8_bom_finds_the_text_column(tmp_path):
    content = "\ufefftext,label\r\n" + "".join(f"t{i},{'ab'[i % 2]}\r\n" for i in range(10))
    assert load_tenant_data(_write(tmp_path, "t.csv", content)).labels == ["a", "b"]


@pytest.mark.skipif(not TWEETS.is_dir(), reason=f"shared tweet data not present at {TWEETS}")
def test_real_tweet_csv_parses_every_record():
    data = load_tenant_data(str(TWEETS / "sent_valid.csv"))
    assert sum(data.split_counts().values()) == 2388
    assert data.labels == ["0", "1", "2"]
    assert any("\n" in e.text for e in data.train + data.validation + data.test)


# ----------------------------------------------------------------------------- bad files


def test_missing_column_names_it_and_the_columns_found(tmp_path):
    rows = [{"sentence": r["text"], "label": r["label"]} for r in _good_rows()]
    (problem,) = _problems(_write(tmp_path, "t.jsonl", _jsonl(rows)))
    assert problem == "column 'text' is missing; columns found: label, sentence"


def test_missing_label_column_in_csv(tmp_path):
    content = "text,category\r\nhello,a\r\n"
    (problem,) = _problems(_write(tmp_path, "t.csv", content))
    assert problem == "column 'label' is missing; columns found: category, text"


def test_missing_field_on_some_jsonl_rows_names_the_rows(tmp_path):
    rows = _good_rows()
    rows[2] = {"txt": "oops", "label": "neg"}
    rows[4] = {"label": "neg"}
    problems = _problems(_write(tmp_path, "t.jsonl", _jsonl(rows)))
    assert "rows 3, 5: no 'text' field (fields found: label, txt)" in problems


def test_empty_and_whitespace_texts_name_their_rows(tmp_path):
    rows = _good_rows()
    rows[1]["text"], rows[7]["text"] = "", " \t "
    problems = _problems(_write(tmp_path, "t.jsonl", _jsonl(rows)))
    assert problems == ["rows 2, 8: empty or whitespace-only text"]


def test_non_utf8_bytes_name_row_and_byte_offset(tmp_path):
    good = _jsonl(_good_rows()).encode()
    content = good + b'{"text": "caf\xe9 au lait", "label": "pos"}\n'
    problems = _problems(_write(tmp_path, "t.jsonl", content))
    offset = len(good) + len(b'{"text": "caf')
    assert problems == [f"row 13: not valid UTF-8 (1 bad byte(s), the first at byte offset {offset}: 0xe9); "
                        "save the file as UTF-8"]


def test_non_utf8_in_csv_names_the_record_row(tmp_path):
    content = b'text,label\r\n"two\nlines",a\r\nbad \xff\xfe text,b\r\n'
    problems = _problems(_write(tmp_path, "t.csv", content))
    offset = content.index(b"\xff")
    expected = f"row 3: not valid UTF-8 (2 bad byte(s), the first at byte offset {offset}: 0xff)"
    assert f"{expected}; save the file as UTF-8" in problems


def test_rare_label_names_label_count_and_rows(tmp_path):
    rows = _good_rows() + [{"text": "rare one", "label": "rare"}, {"text": "rare two", "label": "rare"}]
    problems = _problems(_write(tmp_path, "t.jsonl", _jsonl(rows)))
    assert problems == ["label 'rare' has 2 example(s), fewer than the minimum 5 (rows 13, 14); "
                        "add examples or remove the label"]
    assert load_tenant_data(_write(tmp_path, "t2.jsonl", _jsonl(rows)), min_examples_per_label=2).labels == [
        "neg", "pos", "rare"]


def test_single_label_is_reported(tmp_path):
    problems = _problems(_write(tmp_path, "t.jsonl", _jsonl(_good_rows(labels=("only",)))))
    assert problems == ["only one label ('only') found; a classifier needs two or more"]


def test_conflicting_labels_name_text_labels_and_rows(tmp_path):
    long_text = "gold is up 150% in after-hours trading while the dollar slides against the yen today"
    rows = _good_rows() + [{"text": long_text, "label": "pos"}, {"text": f"  {long_text} ", "label": "neg"}]
    problems = _problems(_write(tmp_path, "t.jsonl", _jsonl(rows)))
    assert len(problems) == 1
    assert problems[0].startswith(
        "the same text 'gold is up 150% in after-hours trading while the dollar s...' has different labels: "
        "'pos' (row 13) and 'neg' (row 14)")


def test_allow_conflicts_keeps_both_copies(tmp_path):
    rows = _good_rows() + [{"text": "same", "label": "pos"}, {"text": "same", "label": "neg"}]
    data = load_tenant_data(_write(tmp_path, "t.jsonl", _jsonl(rows)), allow_conflicts=True)
    copies = [e for e in data.train + data.validation + data.test if e.text == "same"]
    assert sorted(e.label for e in copies) == ["neg", "pos"]


def test_same_text_same_label_is_not_a_conflict(tmp_path):
    rows = _good_rows() + [{"text": "dup", "label": "pos"}, {"text": "dup", "label": "pos"}]
    assert load_tenant_data(_write(tmp_path, "t.jsonl", _jsonl(rows))).split_counts()["train"] >= 1


@pytest.mark.parametrize("name", ["missing.jsonl", "missing.csv"])
def test_missing_file(tmp_path, name):
    path = str(tmp_path / name)
    assert _problems(path) == [f"file not found: {path}; check the path"]


def test_unsupported_suffix(tmp_path):
    problems = _problems(_write(tmp_path, "t.txt", "text,label\n"))
    assert problems == ["unsupported file type '.txt'; use .jsonl, .json or .csv"]


def test_bad_json_line_and_non_object_line_name_their_rows(tmp_path):
    content = _jsonl(_good_rows()[:3]) + '{"text": "x", label: 1}\n' + "[1, 2]\n" + _jsonl(_good_rows()[3:])
    problems = _problems(_write(tmp_path, "t.jsonl", content))
    assert problems[0].startswith("row 4: not valid JSON (Expecting property name enclosed in double quotes")
    assert problems[1] == "row 5: expected a JSON object, found list"


def test_json_array_file_says_how_to_convert(tmp_path):
    problems = _problems(_write(tmp_path, "t.json", json.dumps(_good_rows(), indent=2)))
    assert problems[0].startswith("found a JSON array, expected JSON Lines")
    assert "jq -c" in problems[0]


def test_bad_csv_quoting_names_the_row(tmp_path):
    content = 'text,label\r\nfine,a\r\n"unterminated,b\r\nmore,a\r\n'
    problems = _problems(_write(tmp_path, "t.csv", content))
    assert problems == ["row 3 (line 4): not valid CSV (unexpected end of data)"]


def test_csv_row_with_extra_fields_is_reported(tmp_path):
    content = "text,label\r\n" + "".join(f"t{i},{'ab'[i % 2]}\r\n" for i in range(10)) + "gold, up 2%,a\r\n"
    problems = _problems(_write(tmp_path, "t.csv", content))
    assert problems == ["row 12: has 3 field(s) but the header has 2; quote texts that contain commas"]


@pytest.mark.parametrize(
    "name,content", [("t.jsonl", ""), ("t.jsonl", "\n \n"), ("t.csv", ""), ("t.csv", "text,label\r\n")]
)
def test_empty_file(tmp_path, name, content):
    assert _problems(_write(tmp_path, name, content)) == ["no data rows found; the file is empty"]


def test_every_problem_is_reported_together_in_file_order(tmp_path):
    rows = _good_rows()
    rows[0]["text"] = ""
    rows += [{"text": "rare", "label": "rare"}, {"text": "neg headline number 2", "label": "pos"}]
    content = _jsonl(rows).encode() + b"{not json}\n" + b'{"text": "\xff", "label": "neg"}\n'
    with pytest.raises(DataValidationError) as info:
        load_tenant_data(_write(tmp_path, "t.jsonl", content))
    problems = info.value.problems
    assert len(problems) == 5
    assert problems[0] == "row 1: empty or whitespace-only text"
    assert problems[1].startswith("the same text 'neg headline number 2' has different labels: 'neg' (row 3)")
    assert problems[2].startswith("label 'rare' has 1 example(s)")
    assert problems[3].startswith("row 15: not valid JSON")
    assert problems[4].startswith("row 16: not valid UTF-8")
    assert "5 problem(s)" in str(info.value) and "row 16" in str(info.value)


def test_data_validation_error_pickles():
    error = DataValidationError("s3://bucket/t.jsonl", ["row 2: empty or whitespace-only text", "other"])
    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is DataValidationError
    assert copy.problems == error.problems and copy.source == error.source and str(copy) == str(error)


def test_bad_split_fractions_are_rejected(tmp_path):
    with pytest.raises(ConfigError, match="sum to 1"):
        split_of("x", (0.8, 0.1, 0.2))
    with pytest.raises(ConfigError, match="three non-negative"):
        load_tenant_data(str(tmp_path / "t.jsonl"), fractions=(0.9, 0.1))


# ----------------------------------------------------------------------------- splits


def _random_texts(count: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return ["".join(rng.choices(string.ascii_letters + " ", k=24)) for _ in range(count)]


def test_split_of_is_deterministic_and_ignores_outer_whitespace():
    texts = _random_texts(200, seed=1)
    assert [split_of(t) for t in texts] == [split_of(t) for t in texts]
    assert all(split_of(t) == split_of(f"  {t}\n") for t in texts)



def test_split_of_follows_sha256_of_the_stripped_text():
    # recomputed independently, so a switch to Python's per-process salted hash() fails here
    for text in _random_texts(200, seed=6):
        point = int.from_bytes(hashlib.sha256(text.strip().encode()).digest()[:8], "big") / 2**64
        expected = "train" if point < 0.8 else "validation" if point < 0.9 else "test"
        assert split_of(text) == expected


def test_split_fractions_are_close_to_80_10_10():
    splits = [split_of(t) for t in _random_texts(5000, seed=2)]
    for name, expected in (("train", 0.8), ("validation", 0.1), ("test", 0.1)):
        assert abs(splits.count(name) / 5000 - expected) <= 0.02, name


def test_split_fractions_are_configurable():
    splits = [split_of(t, (0.5, 0.0, 0.5)) for t in _random_texts(2000, seed=3)]
    assert "validation" not in splits and abs(splits.count("train") / 2000 - 0.5) <= 0.05


def test_grown_data_keeps_old_rows_in_their_splits(tmp_path):
    old = [{"text": t, "label": "ab"[i % 2]} for i, t in enumerate(_random_texts(300, seed=4))]
    new = old + [{"text": t, "label": "ab"[i % 2]} for i, t in enumerate(_random_texts(300, seed=5))]
    before = load_tenant_data(_write(tmp_path, "old.jsonl", _jsonl(old)))
    after = load_tenant_data(_write(tmp_path, "new.jsonl", _jsonl(new)))
    for name in ("train", "validation", "test"):
        old_texts = {e.text for e in getattr(before, name)}
        assert old_texts <= {e.text for e in getattr(after, name)}, name
    assert sum(after.split_counts().values()) == 600
