"""Feedback (issue 29): the store (one row per tenant and text, the newest label wins, tenants kept apart,
erasure), the body's rules (predict's limits, unknown labels listed), and prediction ids (no Ray)."""
from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from cluster import get_settings
from registry import Feedback, FeedbackStore, FeedbackStoreError, erase_feedback, new_prediction_id, prediction_version
from serve._config import AppSpec
from serve._errors import InvalidRequestError, UnknownLabelError
from serve._feedback import check_labels, feedback_body_schema, parse_feedback_body
from serve._validation import PredictResponse

LIMITS = {"max_texts": 64, "max_chars": 10_000}
CHAMPION = SimpleNamespace(version="3", labels=["negative", "positive"])


@pytest.fixture
def store(tmp_path) -> FeedbackStore:
    return FeedbackStore(f"sqlite:///{tmp_path / 'keys.db'}")


def parse(body) -> list[Feedback]:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return parse_feedback_body(raw, **LIMITS)


def test_the_newest_label_of_a_text_wins_and_each_text_is_one_row(store):
    pid = new_prediction_id("3")
    first = store.record("john", [Feedback("gold up", "negative", pid), Feedback("oil down", "negative")])
    assert first == [{"text_sha256": Feedback("gold up", "x").text_sha256, "label": "negative",
                      "prediction_id": pid, "version": "3"},
                     {"text_sha256": Feedback("oil down", "x").text_sha256, "label": "negative",
                      "prediction_id": None, "version": None}]
    again = store.record("john", [Feedback("gold up", "positive"), Feedback("gold up", "negative"),
                                  Feedback("gold up", "positive", new_prediction_id("4"))])
    assert [(row["label"], row["version"]) for row in again] == [("positive", "4")]  # last in the request wins
    rows = {row["text"]: row for row in store.items("john")}
    assert set(rows) == {"gold up", "oil down"}
    assert (rows["gold up"]["label"], rows["gold up"]["version"]) == ("positive", "4")  # later request wins
    assert rows["oil down"]["label"] == "negative"


def test_tenants_are_kept_apart_and_erasure_removes_one(store):
    store.record("john", [Feedback("gold up", "positive")])
    store.record("john-2", [Feedback("gold up", "negative")])
    assert [row["label"] for row in store.items("john")] == ["positive"]
    assert [row["label"] for row in store.items("john-2")] == ["negative"]
    assert store.delete_tenant("john") == 1
    assert store.items("john") == [] and len(store.items("john-2")) == 1
    assert store.delete_tenant("john") == 0  # idempotent


def test_the_eraser_deletes_and_vacuums_and_is_idempotent(tmp_path):
    settings = get_settings({"ATTUNE_HOME": str(tmp_path)})
    assert erase_feedback("john", settings)["removed"] == []  # no database yet: nothing stored, nothing created
    assert not (tmp_path / "keys.db").exists()
    store = FeedbackStore(f"sqlite:///{tmp_path / 'keys.db'}")
    store.record("john", [Feedback("zephyrquill gold", "positive"), Feedback("oil", "negative")])
    store.record("john-2", [Feedback("copper", "positive")])
    part = erase_feedback("john", settings)
    assert part["removed"] == ["feedback on 2 text(s)"] and "vacuumed" in part["notes"][0]
    assert part["where"] == f"sqlite:///{(tmp_path / 'keys.db').resolve()}"
    store.engine.dispose()
    raw = (tmp_path / "keys.db").read_bytes()
    assert b"zephyrquill" not in raw and b"copper" in raw  # not even in the free pages
    assert erase_feedback("john", settings)["removed"] == []


def test_a_store_that_cannot_be_opened_is_a_feedback_store_error(tmp_path):
    (tmp_path / "dir.db").mkdir()
    with pytest.raises(FeedbackStoreError, match="cannot open the feedback store") as err:
        FeedbackStore(f"sqlite:///{tmp_path / 'dir.db'}")
    assert err.value.http_status == 503


def test_prediction_ids_carry_the_version_and_differ():
    first, second = new_prediction_id("12"), new_prediction_id("12")
    assert first != second and prediction_version(first) == prediction_version(second) == "12"
    for bad in ("12", "x.0123456789abcdef", "0.0123456789abcdef", "3.0123456789ABCDEF", "3.0123456789abcdef\n"):
        with pytest.raises(ValueError, match="not a prediction id"):
            prediction_version(bad)
    response = PredictResponse(tenant="john", model_version="12", prediction_id=first, predictions=[])
    assert prediction_version(response.prediction_id) == response.model_version
    assert "prediction_id" in PredictResponse.model_json_schema()["required"]


def test_a_good_body_gives_its_items():
    pid = new_prediction_id("3")
    items = parse({"items": [{"text": "gold", "label": "positive", "prediction_id": pid},
                             {"text": "", "label": "negative", "prediction_id": None}]})
    assert items == [Feedback("gold", "positive", pid), Feedback("", "negative")]
    assert items[0].version == "3" and items[1].version is None
    assert len(parse({"items": [{"text": "x" * 10_000, "label": "a"}] * 64})) == 64


@pytest.mark.parametrize("body, needle", [
    (b"{not json", "not valid UTF-8 JSON"),
    (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
    ([1], "must be a JSON object"),
    ({}, "'items' is missing"),
    ({"items": [], "texts": []}, "unknown key 'texts'; 'items' is empty; send at least one"),
    ({"items": "a"}, "'items' must be a list of objects, got str"),
    ({"items": ["gold"]}, "items[0] is str, not an object"),
    ({"items": [{"text": "a", "label": "b"}] * 65}, "'items' has 65 items, more than max_texts=64"),
    ({"items": [{"label": "b"}]}, "items[0].text is missing"),
    ({"items": [{"text": "a"}]}, "items[0].label is missing"),
    ({"items": [{"text": "a", "label": ""}]}, "items[0].label must be a non-empty string"),
    ({"items": [{"text": "a", "label": 1}]}, "items[0].label must be a non-empty string, got 1"),
    ({"items": [{"text": "a", "label": "b", "score": 1}]}, "items[0] has an unknown key 'score'"),
    ({"items": [{"text": "x" * 10_001, "label": "b"}]}, "items[0].text has 10001 characters, more than max_chars"),
    ({"items": [{"text": 5, "label": "b"}]}, "items[0].text is int, not a string"),
    (b'{"items": [{"text": "a\\u0000b", "label": "b"}]}', "items[0].text contains a NUL character"),
    (b'{"items": [{"text": "\\ud800", "label": "b"}]}', "items[0].text contains a lone surrogate"),
    ({"items": [{"text": "a", "label": "b", "prediction_id": "v3"}]}, "items[0].prediction_id: 'v3' is not a "
                                                                     "prediction id"),
    ({"items": [{"text": "a", "label": "b", "prediction_id": 3}]}, "items[0].prediction_id: '3' is not"),
])
def test_each_invalid_feedback_body_is_422_with_the_reason(body, needle):
    with pytest.raises(InvalidRequestError) as err:
        parse(body)
    assert err.value.http_status == 422 and err.value.code == "invalid_body"
    assert needle in err.value.message


def test_an_unknown_label_is_422_listing_the_known_labels():
    items = parse({"items": [{"text": "a", "label": "positive"}, {"text": "b", "label": "bullish"},
                             {"text": "c", "label": "Positive"}]})
    with pytest.raises(UnknownLabelError) as err:
        check_labels("john", CHAMPION, items)
    assert err.value.http_status == 422 and err.value.code == "unknown_label"
    assert err.value.message == ("unknown label(s) 'Positive', 'bullish': tenant 'john''s champion (version 3) "
                                 "knows 'negative', 'positive'")
    check_labels("john", CHAMPION, items[:1])  # a known label passes (the store is written after this)
    many = SimpleNamespace(version="1", labels=[f"l{i}" for i in range(60)])
    with pytest.raises(UnknownLabelError, match=r"and 10 more: GET /v1/tenants/john lists them all"):
        check_labels("john", many, items[:1])


def test_the_openapi_body_schema_is_self_contained_and_strict():
    schema = feedback_body_schema()
    assert "$defs" not in json.dumps(schema) and "$ref" not in json.dumps(schema)
    item = schema["properties"]["items"]["items"]
    assert item["additionalProperties"] is False and item["required"] == ["text", "label"]


def test_the_spec_stores_feedback_beside_the_keys_even_without_auth(tmp_path):
    settings = get_settings({"ATTUNE_HOME": str(tmp_path)})
    url = f"sqlite:///{tmp_path.resolve() / 'keys.db'}"
    assert AppSpec.from_settings(settings).feedback_url == url
    assert AppSpec.from_settings(settings, insecure_no_auth=True).feedback_url == url


def test_feedback_written_while_its_tenant_is_erased_is_removed_and_answered_404(store, tmp_path):
    """An erasure removes the registered model before the feedback; a replica's write that lands after
    the feedback eraser ran finds the tenant gone on its check and removes what it wrote."""
    from serve._endpoint import Endpoint
    from serve._errors import UnknownTenantError
    from tests.registry_helpers import fake_model_dir, record, sqlite_registry

    reg = sqlite_registry(tmp_path / "registry")
    version = reg.register_candidate("john", fake_model_dir(tmp_path / "m"), record("john")).version
    reg.promote("john", version)
    replica = object.__new__(Endpoint.func_or_class)
    replica.registry, replica.feedback_store = reg, store
    item = parse({"items": [{"text": "gold is up", "label": "positive"}]})
    store.record("john", item)
    replica._still_registered("john")  # registered: the feedback stays
    assert len(store.items("john")) == 1
    reg.delete_tenant("john")
    with pytest.raises(UnknownTenantError):
        replica._still_registered("john")
    assert store.items("john") == []
