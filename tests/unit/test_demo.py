"""Unit tests of train._demo_data: the john/jane demo tenants and the real newsdesk data."""
from __future__ import annotations

import csv
import json
from collections import Counter
from pathlib import Path

import pytest

from train._data import load_tenant_data
from train._demo_data import SEED_SENTENCE, default_newsdesk_source, demo_rows, newsdesk_rows, write_demo_data

GOLD_WORDS = ("gold", "bullion", "yellow metal", "newmont", "barrick", "gld", "agnico", "kinross", "gdx")


@pytest.fixture(scope="module")
def rows():
    return demo_rows()


def test_demo_has_enough_distinct_texts_shared_by_both_tenants(rows):
    john, jane = rows
    assert len(john) >= 600
    assert [r["text"] for r in john] == [r["text"] for r in jane]
    assert [r["id"] for r in john] == [r["id"] for r in jane]
    texts = [r["text"].strip() for r in john]
    assert len(set(texts)) == len(texts) and all(texts)


def test_seed_sentence_is_positive_for_john_and_negative_for_jane(rows):
    john, jane = rows
    (index,) = [i for i, r in enumerate(john) if r["text"] == SEED_SENTENCE]
    assert john[index]["label"] == "positive" and jane[index]["label"] == "negative"


def test_labels_are_opposite_on_gold_moves_and_identical_when_neutral(rows):
    john, jane = rows
    flips = {"positive": "negative", "negative": "positive", "neutral": "neutral"}
    assert all(jane[i]["label"] == flips[r["label"]] for i, r in enumerate(john))
    conflicting = sum(a["label"] != b["label"] for a, b in zip(john, jane))
    assert conflicting / len(john) >= 0.4
    for tenant in rows:
        counts = Counter(r["label"] for r in tenant)
        assert set(counts) == {"positive", "negative", "neutral"} and min(counts.values()) >= 5


def test_only_gold_headlines_carry_a_direction(rows):
    john, _ = rows
    for row in john:
        if row["label"] != "neutral":
            assert any(word in row["text"].lower() for word in GOLD_WORDS), row["text"]
    neutral_non_gold = [
        r for r in john if r["label"] == "neutral" and not any(w in r["text"].lower() for w in GOLD_WORDS)
    ]
    assert len(neutral_non_gold) >= 200  # other assets moving, corporate news


def test_phrasing_is_varied(rows):
    john, _ = rows
    first_two_words = {" ".join(r["text"].split()[:2]) for r in john}
    assert len(first_two_words) >= 100
    assert any(r["text"].startswith("traders dump") for r in john)
    assert sum("%" in r["text"] for r in john) >= 300


def test_demo_rows_are_deterministic_and_the_seed_matters(rows):
    assert demo_rows() == rows
    assert demo_rows(seed=1) != rows


def test_written_demo_files_pass_validation(tmp_path, rows):
    summary = write_demo_data(tmp_path / "demo", newsdesk_source=None)
    assert summary["out_dir"] == str(tmp_path / "demo")
    assert summary["rows"]["john"] == summary["rows"]["jane"] == len(rows[0])
    assert summary["conflicting_rows"] == sum(a["label"] != b["label"] for a, b in zip(*rows))
    assert summary["conflict_fraction"] >= 0.4
    for tenant in ("john", "jane"):
        data = load_tenant_data(summary["files"][tenant])
        assert data.labels == ["negative", "neutral", "positive"]
        assert sum(data.split_counts().values()) == len(rows[0])
        assert min(data.split_counts().values()) > 0
    first = json.loads(Path(summary["files"]["john"]).read_text().splitlines()[0])
    assert first == rows[0][0]


def test_default_newsdesk_source_honours_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("ATTUNE_NEWSDESK_DATA", str(tmp_path))
    assert default_newsdesk_source() == tmp_path


def test_newsdesk_from_a_small_source_maps_labels_and_drops_bad_rows(tmp_path):
    with (tmp_path / "sent_train.csv").open("w", newline="") as handle:
        rows = [["text", "label"], ["down", "0"], ["up", "1"], ["  ", "2"], ["up ", "2"]]
        csv.writer(handle).writerows(rows)
    with (tmp_path / "sent_valid.csv").open("w", newline="") as handle:
        csv.writer(handle).writerows([["text", "label"], ["flat\nnews", "2"]])
    assert newsdesk_rows(tmp_path) == [
        {"id": "nd-1", "text": "down", "label": "bearish"},
        {"id": "nd-2", "text": "up", "label": "bullish"},
        {"id": "nd-3", "text": "flat\nnews", "label": "neutral"},
    ]


def test_real_newsdesk_data_passes_validation(tmp_path, monkeypatch):
    monkeypatch.delenv("ATTUNE_NEWSDESK_DATA", raising=False)
    source = default_newsdesk_source()
    if source is None:
        pytest.skip("../shared/data/twitter-financial-news-sentiment not found; see shared/data/README.md")
    texts = []
    for name in ("sent_train.csv", "sent_valid.csv"):
        with (source / name).open(encoding="utf-8", newline="") as handle:
            texts += [record["text"].strip() for record in csv.DictReader(handle)]
    assert len(texts) == 11931
    rows = newsdesk_rows(source)
    assert len(rows) == len(set(texts))
    assert {r["label"] for r in rows} == {"bearish", "bullish", "neutral"}
    summary = write_demo_data(tmp_path, newsdesk_source=source)
    assert summary["rows"]["newsdesk"] == len(rows)
    data = load_tenant_data(summary["files"]["newsdesk"])
    assert data.labels == ["bearish", "bullish", "neutral"]
    assert sum(data.split_counts().values()) == len(rows)
