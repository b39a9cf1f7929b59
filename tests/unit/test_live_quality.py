"""Live quality per tenant (issue 29): the drift test's statistics, the feedback store's tally of what the
champion scored, when a version became champion, `attune registry show`, and the replica's pieces (no Ray)."""
from __future__ import annotations

import json
import math
from types import SimpleNamespace

import pytest
import sqlalchemy as sa

from cluster import SettingsError, get_settings
from registry import DriftRule, Feedback, FeedbackStore, became_champion_at
from registry._feedback import ECE_BINS, _now
from registry._quality import assess, binomial_lower_tail, drift_test, expected_calibration_error
from serve._quality import LiveQuality, QualityWatch, outcomes, scored_items

RULE = DriftRule()  # 30 rows, alpha 0.01, tolerance 0.05


def exact_lower_tail(k: int, n: int, p: float) -> float:
    return sum(math.comb(n, i) * p**i * (1 - p) ** (n - i) for i in range(k + 1))


# -- the statistics ------------------------------------------------------------------------------

def test_forty_of_forty_correct_is_no_drift():
    verdict = drift_test(40, 40, 0.97, RULE)
    assert (verdict["flag"], verdict["status"], verdict["p_value"]) == (False, "no_drift", 1.0)
    assert verdict["null_accuracy"] == pytest.approx(0.92) and verdict["n"] == 40


def test_ten_of_forty_against_097_is_drift():
    verdict = drift_test(10, 40, 0.97, RULE)
    assert verdict["flag"] and verdict["status"] == "drift"
    assert verdict["p_value"] == pytest.approx(exact_lower_tail(10, 40, 0.92), rel=1e-9)
    assert verdict["p_value"] < 1e-20 and "Binomial(n, test_accuracy - 0.05)" in verdict["rule"]


def test_three_wrong_of_three_is_not_enough_rows():
    verdict = drift_test(0, 3, 0.97, RULE)
    assert (verdict["flag"], verdict["status"], verdict["p_value"]) == (False, "not_enough_rows", None)


def test_a_small_shortfall_is_no_drift_and_a_version_without_test_accuracy_is_not_tested():
    # 36/40 = 0.90 is below 0.92, but 36 or fewer of 40 happens often enough at 0.92: no drift
    verdict = drift_test(36, 40, 0.97, RULE)
    assert verdict["status"] == "no_drift" and 0.01 < verdict["p_value"] < 0.6
    assert drift_test(0, 100, None, RULE)["status"] == "no_test_accuracy"
    strict = DriftRule(min_rows=3, alpha=0.05, tolerance=0.0)
    assert drift_test(0, 3, 0.97, strict)["flag"]  # the settings decide: 3 wrong of 3 at 0.97 is p = 2.7e-5


@pytest.mark.parametrize("k, n, p", [(0, 1, 0.5), (3, 10, 0.5), (7, 10, 0.5), (9, 10, 0.9), (10, 10, 0.9),
                                     (25, 40, 0.92), (38, 40, 0.92), (0, 40, 0.92), (60, 200, 0.3), (-1, 5, 0.5)])
def test_the_binomial_tail_matches_the_exact_sum(k, n, p):
    assert binomial_lower_tail(k, n, p) == pytest.approx(max(0.0, exact_lower_tail(k, n, p)), rel=1e-9, abs=1e-15)


def test_the_binomial_tail_is_accurate_for_many_rows_and_tiny_p_values():
    scipy_stats = pytest.importorskip("scipy.stats")
    for k, n, p in [(9_000, 10_000, 0.92), (9_150, 10_000, 0.92), (9_300, 10_000, 0.92), (450_000, 500_000, 0.92)]:
        assert binomial_lower_tail(k, n, p) == pytest.approx(scipy_stats.binom.cdf(k, n, p), rel=1e-7, abs=1e-300)


def test_ece_of_bins():
    bins = [{"bin": 14, "rows": 10, "correct": 1, "confidence": 9.9},   # 99% sure, 10% right
            {"bin": 8, "rows": 10, "correct": 6, "confidence": 5.5}]
    assert expected_calibration_error(bins) == pytest.approx((8.9 + 0.5) / 20)
    assert expected_calibration_error([]) is None
    quality = assess(bins, "3", None, 0.9, RULE)
    assert (quality["rows"], quality["correct"], quality["accuracy"]) == (20, 7, 0.35)
    assert quality["drift"]["status"] == "not_enough_rows"
    LiveQuality.model_validate(quality)  # the HTTP answer's schema is what assess returns


def test_the_drift_settings_are_read_from_the_environment_and_checked():
    settings = get_settings({"ATTUNE_DRIFT_MIN_ROWS": "50", "ATTUNE_DRIFT_ALPHA": "0.05",
                             "ATTUNE_DRIFT_TOLERANCE_FRACTION": "0.02"})
    assert DriftRule.from_settings(settings) == DriftRule(min_rows=50, alpha=0.05, tolerance=0.02)
    assert DriftRule.from_settings(get_settings({})) == RULE
    with pytest.raises(SettingsError, match="ATTUNE_DRIFT_ALPHA"):
        get_settings({"ATTUNE_DRIFT_ALPHA": "5"})


# -- the store -------------------------------------------------------------------------------------

@pytest.fixture
def store(tmp_path) -> FeedbackStore:
    return FeedbackStore(f"sqlite:///{tmp_path / 'keys.db'}")


def scored(text, label, version, answer, confidence):
    return Feedback(text, label, scored_version=version, scored_label=answer, scored_confidence=confidence)


def test_the_tally_counts_only_what_the_version_scored_since_a_time(store):
    store.record("john", [scored("a", "positive", "1", "positive", 0.95),
                          scored("b", "negative", "1", "positive", 0.95),
                          scored("c", "negative", "1", "negative", 0.55), scored("d", "negative", "1", "positive", 1.0),
                          scored("e", "negative", "2", "negative", 0.9), Feedback("f", "negative")])
    store.record("jane", [scored("a", "negative", "1", "positive", 0.95)])
    bins = store.tally("john", "1")
    assert bins == [{"bin": 8, "rows": 1, "correct": 1, "confidence": 0.55},
                    {"bin": ECE_BINS - 1, "rows": 3, "correct": 1, "confidence": pytest.approx(2.9)}]
    assert store.tally("john", "2") == [{"bin": 13, "rows": 1, "correct": 1, "confidence": 0.9}]
    assert store.tally("john", "3") == []
    later = _now()  # as if the version became champion again now
    assert store.tally("john", "1", since=later) == []  # rows scored before the version became champion
    # the newest label wins, and the row's correctness follows it
    store.record("john", [scored("b", "positive", "1", "positive", 0.95)])
    assert store.tally("john", "1", since=later) == [{"bin": 14, "rows": 1, "correct": 1, "confidence": 0.95}]
    assert sum(b["correct"] for b in store.tally("john", "1")) == 3


def test_a_table_made_before_the_score_columns_gets_them(tmp_path):
    url = f"sqlite:///{tmp_path / 'keys.db'}"
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.execute(sa.text("CREATE TABLE attune_feedback (tenant VARCHAR(64), text_sha256 VARCHAR(64), text TEXT "
                             "NOT NULL, label TEXT NOT NULL, prediction_id VARCHAR(40), version VARCHAR(16), "
                             "received_at VARCHAR(40) NOT NULL, PRIMARY KEY (tenant, text_sha256))"))
        conn.execute(sa.text("INSERT INTO attune_feedback VALUES ('john', 'x', 'old', 'positive', NULL, NULL, "
                             "'2026-01-01T00:00:00+00:00')"))
    store = FeedbackStore(url)
    assert {"scored_version", "scored_confidence"} <= {c["name"] for c in sa.inspect(engine).get_columns(
        "attune_feedback")}
    store.record("john", [scored("new", "positive", "1", "positive", 0.8)])
    assert [row["text"] for row in store.items("john")] == ["old", "new"]
    assert store.tally("john", "1") == [{"bin": 12, "rows": 1, "correct": 1, "confidence": 0.8}]
    FeedbackStore(url)  # opening an upgraded table again changes nothing


# -- when a version became champion ----------------------------------------------------------------

def event(ns: int, **body) -> tuple[str, str]:
    return f"attune.champion_event.{ns:020d}-abcdef01", json.dumps({**body, "at": "2026-01-01T00:00:00+00:00"})


def test_a_rolled_back_to_champion_counts_from_the_rollback():
    second = 1_800_000_000 * 10**9
    tags = dict([event(second, op="promote", version="1"), event(second + 10**9, op="promote", version="2"),
                 event(second + 5 * 10**9, op="rollback", **{"from": "2", "to": "1"})])
    v1 = SimpleNamespace(version="1", tags={"attune.promoted_at": "2027-01-15T08:00:00+00:00"})
    v2 = SimpleNamespace(version="2", tags={})
    assert became_champion_at(tags, v1) == "2027-01-15T08:00:05.000000+00:00"  # the rollback, not its promotion
    assert became_champion_at(tags, v2) == "2027-01-15T08:00:01.000000+00:00"
    assert became_champion_at({}, v1) == "2027-01-15T08:00:00.000000+00:00"  # no history: its promoted_at tag
    assert became_champion_at({}, v2) is None


# -- the replica's pieces --------------------------------------------------------------------------

def test_feedback_is_scored_and_counted_against_the_champion():
    items = [Feedback("a", "positive"), Feedback("b", "negative"), Feedback("c", "negative")]
    answers = [{"label": "positive", "scores": {"positive": 0.9, "negative": 0.1}}] * 3
    done = scored_items(items, "3", answers)
    assert [(i.scored_version, i.scored_label, i.scored_confidence) for i in done] == [("3", "positive", 0.9)] * 3
    assert outcomes(done, "3") == {"correct": 1, "wrong": 2, "unscored": 0}
    assert outcomes(done, "4") == {"correct": 0, "wrong": 0, "unscored": 3}  # a fallback version answered


class Gauges:
    def __init__(self):
        self.seen = []

    def measured(self, tenant, quality):
        self.seen.append((tenant, quality["rows"]))


def test_the_watch_reads_the_champion_history_once_per_ttl_and_records_the_gauges(store):
    now = [0.0]
    reads = []
    model = SimpleNamespace(tags=dict([event(1_700_000_000 * 10**9, op="promote", version="1")]))
    registry = SimpleNamespace(_model=lambda tenant: reads.append(tenant) or model)
    gauges = Gauges()
    watch = QualityWatch(registry, lambda: store, RULE, ttl_s=5.0, metrics=gauges, clock=lambda: now[0])
    info = SimpleNamespace(version="1", tags={}, metrics={"test_accuracy": 0.97})
    store.record("john", [scored(str(i), "negative", "1", "positive", 0.99) for i in range(30)])
    quality = watch.measure("john", info)
    assert quality["rows"] == 30 and quality["accuracy"] == 0.0 and quality["drift"]["flag"]
    assert quality["ece"] == pytest.approx(0.99) and quality["since"] == "2023-11-14T22:13:20.000000+00:00"
    watch.measure("john", info)
    assert reads == ["john"] and gauges.seen == [("john", 30), ("john", 30)]
    now[0] = 6.0
    watch.measure("john", info)
    assert reads == ["john", "john"]


def test_the_watch_answers_none_when_the_store_is_down():
    from registry import FeedbackStoreError

    def down():
        raise FeedbackStoreError("cannot open the feedback store at sqlite:///x: locked")

    gauges = Gauges()
    watch = QualityWatch(SimpleNamespace(_model=lambda t: SimpleNamespace(tags={})), down, RULE, 5.0, gauges)
    assert watch.measure("john", SimpleNamespace(version="1", tags={}, metrics={})) is None and gauges.seen == []


# -- attune registry show ----------------------------------------------------------------------------

def test_show_reports_the_champions_live_quality_and_starts_afresh_when_the_champion_changes(
        tmp_path, attune_home, capsys, monkeypatch):
    from cluster.cli import main
    from tests.registry_helpers import fake_model_dir, record, sqlite_registry

    def shown(key="live_quality"):
        assert main(["registry", "show", "john", "--json"]) == 0
        return json.loads(capsys.readouterr().out.strip().splitlines()[-1])[key]

    reg = sqlite_registry(attune_home)
    v1 = reg.register_candidate("john", fake_model_dir(tmp_path / "v1", b"one"), record("john", 0.9)).version
    reg.promote("john", v1)
    assert shown()["rows"] == 0 and not (attune_home / "keys.db").exists()  # show creates no feedback store
    store = FeedbackStore(f"sqlite:///{attune_home.resolve() / 'keys.db'}")
    store.record("john", [scored(f"t{i}", "negative" if i < 10 else "positive", v1, "negative", 0.9)
                          for i in range(40)])  # v1 answered "negative" to all: 10 of 40 right
    quality = shown()
    assert (quality["version"], quality["rows"], quality["accuracy"], quality["test_accuracy"]) == (v1, 40, 0.25, 0.9)
    assert quality["drift"]["flag"] and quality["drift"]["p_value"] < 0.01
    assert quality["ece"] == pytest.approx(0.65)
    assert main(["registry", "show", "john"]) == 0
    text = capsys.readouterr().out
    assert "accuracy 0.2500 (10/40), ECE 0.6500" in text and "DRIFT (p = " in text and "rule: one-sided" in text

    v2 = reg.register_candidate("john", fake_model_dir(tmp_path / "v2", b"two"), record("john", 0.9)).version
    reg.promote("john", v2)
    assert (shown()["version"], shown()["rows"]) == (v2, 0)  # v1's rows do not count for v2
    reg.rollback("john")
    back = shown()
    assert (back["version"], back["rows"], back["drift"]["status"]) == (v1, 0, "not_enough_rows")  # nor its old reign
    store.record("john", [scored("fresh", "negative", v1, "negative", 0.9)])
    assert shown()["rows"] == 1
    (tmp_path / "dir.db").mkdir()
    monkeypatch.setenv("ATTUNE_KEYS_DB_URL", f"sqlite:///{tmp_path / 'dir.db'}")  # a store that cannot be opened
    assert "cannot open the feedback store" in shown("live_quality_error")  # the rest of show stands


def test_feedback_the_model_cannot_score_is_stored_unscored_and_the_batcher_stays_balanced():
    import asyncio

    from serve._batcher import Batcher
    from serve._endpoint import Endpoint
    from serve._errors import ModelUnavailableError

    class Down:
        async def acquire(self, tenant, info):
            raise ModelUnavailableError("model john:3 failed to load (x): broken")

    replica = object.__new__(Endpoint.func_or_class)
    replica.fallback, replica.batcher = Down(), Batcher(lambda requests: [], max_batch_size=4)
    items = [Feedback("gold up", "positive")]
    assert asyncio.run(replica._scored("john", SimpleNamespace(version="3"), items)) == items
    assert replica.batcher.arriving == 0  # the scoring attempt left the batcher's count as it found it
