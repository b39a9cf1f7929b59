"""attune relocalize's data rule, its log and its policy (no Ray, no training)."""
from __future__ import annotations

import json

import numpy as np
import pytest

from cluster import get_settings
from registry import Feedback, FeedbackStore, RelocalizeLog, database_url, erase_relocalize_log
from train._data import Example, split_of
from train._demo_data import SEED_SENTENCE, demo_rows, john_goes_short
from train.relocalize.data import FEEDBACK_FRACTIONS, contradicted, corrections_of, next_rows, write_next_data

TOPICS = ("gold", "oil", "apple")


def topic_embed(texts: list[str]) -> np.ndarray:
    """A stand-in encoder: one axis per topic word (texts on the same topic have similarity 1)."""
    vectors = np.array([[float(t in text) for t in TOPICS] + [0.1] for text in texts])
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def rows(*pairs) -> list[Example]:
    return [Example(text=t, label=label, row=n, id=f"r{n}") for n, (t, label) in enumerate(pairs, start=1)]


def test_a_correction_relabels_older_rows_with_the_overturned_label_on_its_topic_only():
    data = rows(("gold rises 2%", "positive"), ("gold jumps", "positive"), ("oil rises 2%", "neutral"),
                ("apple beats estimates", "positive"), ("gold falls", "negative"))
    feedback = [{"text": "gold climbs 5%", "label": "negative"}]
    made = next_rows(data, feedback, ["positive"], topic_embed, threshold=0.9)
    assert [(d["text"], d["label"], d["new_label"]) for d in made.contradicted] == [
        ("gold rises 2%", "positive", "negative"), ("gold jumps", "positive", "negative")]
    assert all(d["because"] == "gold climbs 5%" for d in made.contradicted)
    kept = {r["text"]: r["label"] for r in made.rows}
    assert kept == {"gold climbs 5%": "negative", "gold rises 2%": "negative", "gold jumps": "negative",
                    "oil rises 2%": "neutral", "apple beats estimates": "positive", "gold falls": "negative"}
    assert made.rows[0]["id"] == "feedback-1"  # feedback first: a --max-train-rows cut keeps it


def test_feedback_that_agrees_with_the_champion_drops_nothing_and_relabels_its_own_text():
    data = rows(("gold rises 2%", "positive"), ("oil rises 2%", "neutral"))
    feedback = [{"text": "gold climbs 5%", "label": "positive"}, {"text": "oil rises 2%", "label": "negative"}]
    made = next_rows(data, feedback, ["positive", "neutral"], topic_embed, threshold=0.9)
    assert [c.text for c in made.corrections] == ["oil rises 2%"]
    assert made.contradicted == [] and made.replaced == 1
    assert {r["text"]: r["label"] for r in made.rows} == {"gold climbs 5%": "positive", "oil rises 2%": "negative",
                                                          "gold rises 2%": "positive"}


def test_the_threshold_decides_what_counts_as_close():
    data = rows(("gold and oil rise", "positive"))
    correction = corrections_of([{"text": "gold climbs", "label": "negative"}], ["positive"])
    similarity = float((topic_embed(["gold and oil rise"]) @ topic_embed(["gold climbs"]).T)[0, 0])
    assert contradicted(data, correction, topic_embed, similarity + 1e-6) == {}
    assert contradicted(data, correction, topic_embed, similarity - 1e-6) == {0: (correction[0], round(similarity, 4))}


def test_write_next_data_validates_and_gives_feedback_a_larger_test_share(tmp_path):
    john, _ = demo_rows()
    data = [Example(text=r["text"], label=r["label"], row=n, id=r["id"]) for n, r in enumerate(john, start=1)]
    feedback = john_goes_short()
    made = next_rows(data, feedback, ["positive" if f["label"] == "negative" else "negative" for f in feedback],
                     topic_embed, threshold=0.9)
    dataset = write_next_data(made, tmp_path / "next.jsonl")
    written = [json.loads(line) for line in (tmp_path / "next.jsonl").read_text().splitlines()]
    assert len(written) == len(made.rows) == sum(dataset.split_counts().values())
    feedback_texts = {f["text"] for f in feedback}
    test_feedback = [e.text for e in dataset.test if e.text in feedback_texts]
    assert test_feedback == [f["text"] for f in feedback if split_of(f["text"], FEEDBACK_FRACTIONS) == "test"]
    assert test_feedback, "the gate's held-out rows include feedback"
    assert all(split_of(e.text) == "test" for e in dataset.test if e.text not in feedback_texts)


def test_john_goes_short_is_new_gold_headlines_with_janes_rule():
    corrections = john_goes_short()
    john, jane = demo_rows()
    assert len(corrections) == 40 and len({c["text"] for c in corrections}) == 40
    assert not {c["text"] for c in corrections} & {r["text"] for r in john} and SEED_SENTENCE not in str(corrections)
    assert sorted(c["label"] for c in corrections) == ["negative"] * 20 + ["positive"] * 20


def test_the_log_records_runs_newest_first_and_is_erased(tmp_path):
    settings = get_settings(environ={"ATTUNE_HOME": str(tmp_path)})
    log = RelocalizeLog.from_settings(settings)
    first = log.start("john", "by hand")
    log.finish(first, "not promoted", version="2", feedback_rows=40, message="trails the champion")
    second = log.start("john", "policy: 25 new feedback texts")
    assert [r["outcome"] for r in log.runs("john")] == ["running", "not promoted"]
    log.finish(second, "failed", message="TrainError: boom")
    assert log.last_success("john")["version"] == "2"
    with pytest.raises(ValueError, match="outcome must be one of"):
        log.finish(second, "running")
    report = erase_relocalize_log("john", settings)
    assert report["removed"] == ["2 relocalization record(s)"] and log.runs("john") == []


def test_policy_counts_feedback_since_the_last_relocalization_and_asks_about_drift(tmp_path):
    from train.relocalize.policy import due_by_policy

    settings = get_settings(environ={"ATTUNE_HOME": str(tmp_path), "ATTUNE_RELOCALIZE_MIN_NEW_LABELS": "3"})
    store = FeedbackStore(database_url(settings))
    store.record("john", [Feedback(f"gold up {n}", "negative") for n in range(2)])
    log = RelocalizeLog.from_settings(settings)
    became, asked = "2020-01-01T00:00:00+00:00", []

    def drift(flag=None):
        asked.append(1)
        return flag

    due, why, new = due_by_policy("john", settings, log, became, drift)
    assert (due, new, len(asked)) == (False, 2, 1) and "policy needs 3" in why
    due, why, new = due_by_policy("john", settings, log, became, lambda: "accuracy 0.250 on 40 feedback texts")
    assert due and why == "drift: accuracy 0.250 on 40 feedback texts"
    store.record("john", [Feedback("gold up 9", "negative")])
    due, why, new = due_by_policy("john", settings, log, became, drift)
    assert (due, new) == (True, 3) and why.startswith("3 new feedback texts since 2020-01-01")
    log.finish(log.start("john", "by hand"), "promoted", version="2", feedback_rows=3)
    due, why, new = due_by_policy("john", settings, log, became, lambda: "drifting")
    assert (due, new) == (False, 0)  # nothing new since: drift alone does not relocalize again
    off = get_settings(environ={"ATTUNE_HOME": str(tmp_path), "ATTUNE_RELOCALIZE_ON_DRIFT": "false"})
    store.record("john", [Feedback("gold up 10", "negative")])
    due, why, _ = due_by_policy("john", off, log, became, lambda: "drifting")
    assert not due and why.endswith("drift not considered")


def test_relabelling_never_empties_a_label_of_the_data():
    """A base that finds everything close (here: one topic for all) must not turn every neutral row into
    the corrections' labels: the label set is the data file's to change."""
    data = rows(*[(f"gold item {n}", "neutral") for n in range(6)], *[(f"gold rise {n}", "positive") for n in range(6)])
    feedback = [{"text": "gold climbs 5%", "label": "negative"}, {"text": "gold flat", "label": "positive"}]
    made = next_rows(data, feedback, ["positive", "neutral"], topic_embed, threshold=0.5)
    labels = {r["text"]: r["label"] for r in made.rows}
    assert made.kept_labels == ["neutral"] and made.report()["labels_kept_whole"] == ["neutral"]
    assert all(labels[f"gold item {n}"] == "neutral" for n in range(6))
    assert all(labels[f"gold rise {n}"] == "negative" for n in range(6))  # positive still has its feedback row


def test_a_local_run_the_free_cpus_cannot_hold_is_refused_and_relocalize_fits_itself(monkeypatch, tmp_path):
    import cluster
    from train._errors import ConfigError
    from train.finetune.config import FinetuneConfig
    from train.finetune.driver import check_free_cpus
    from train.relocalize import driver

    settings = get_settings(environ={"ATTUNE_HOME": str(tmp_path)})
    config = FinetuneConfig(tenant="john", data=str(tmp_path / "d.jsonl"), num_workers=2, use_gpu=False)
    free = {"cpus": 1}
    monkeypatch.setattr(cluster, "free_local_cpus", lambda _settings: free["cpus"])
    monkeypatch.setattr("train.finetune.driver.FREE_CPU_WAIT_S", 0.0)
    monkeypatch.setattr(cluster, "init_ray", lambda _settings: "local")
    with pytest.raises(ConfigError, match="--workers 2 needs 2 CPUs, and the local Ray has 1 free .* --workers 1"):
        check_free_cpus(config, settings)
    assert driver.fit_workers({"num_workers": 2, "epochs": 3}, settings) == {"num_workers": 1, "epochs": 3}
    free["cpus"] = 0
    with pytest.raises(ConfigError, match="stop the endpoint first"):
        check_free_cpus(config, settings)
    answers = iter([1, 2])  # a run that just ended gives its CPU back while the check waits
    monkeypatch.setattr(cluster, "free_local_cpus", lambda _settings: next(answers))
    monkeypatch.setattr("train.finetune.driver.FREE_CPU_WAIT_S", 5.0)
    check_free_cpus(config, settings)
    monkeypatch.setattr(cluster, "free_local_cpus", lambda _settings: free["cpus"])
    free["cpus"] = None  # a RAY_ADDRESS cluster: its autoscaler may add nodes
    check_free_cpus(config, settings)
    assert driver.fit_workers({"num_workers": 2}, settings) == {"num_workers": 2}
