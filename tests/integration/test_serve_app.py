"""The Serve application over real HTTP on 127.0.0.1: localization, the error table, replica survival,
tenant isolation, LoRA base sharing, key revocation, alias follow with zero failures, metrics, feedback.

Models are tiny constant-answer exports registered in a SQLite registry (no training); one endpoint
replica with 0.25 CPU runs on the shared 2-CPU test Ray. The app is the ``served`` fixture of
tests/integration/conftest.py, which test_serve_fallback.py then uses too.
"""
from __future__ import annotations

import time
import urllib.request
from pathlib import Path

import pytest
from ray import serve as ray_serve

from registry import FeedbackStore, prediction_version
from serve._app import APP_NAME, DEPLOYMENT
from tests.serve_helpers import calibrated_top_score
from tests.waiting import wait_for

REFRESH_S = 1.0  # the shared app's (tests/integration/conftest.py: SERVED_REFRESH_S)
TEXT = "gold is up 150% in after-hours trading"


def predict(served, tenant, texts=(TEXT,), key=None, **kwargs):
    key = served["keys"]["admin"] if key is None else key
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    if "content" not in kwargs and "json" not in kwargs:
        kwargs["json"] = {"texts": list(texts)}
    return served["client"].post(f"/v1/tenants/{tenant}/predict", headers=headers, **kwargs)


def test_localization_one_endpoint_opposite_labels(served):
    john = predict(served, "john", key=served["keys"]["john"])
    jane = predict(served, "jane", key=served["keys"]["jane"])
    assert john.status_code == jane.status_code == 200
    assert john.headers["x-attune-model-version"] == john.json()["model_version"] == served["versions"]["john"]
    assert jane.headers["x-attune-model-version"] == served["versions"]["jane"]
    (jp,), (np_,) = john.json()["predictions"], jane.json()["predictions"]
    assert (jp["label"], np_["label"]) == ("positive", "negative")
    # calibrated with the version's temperature (1.7), not raw softmax
    assert jp["scores"]["positive"] == pytest.approx(calibrated_top_score(), abs=1e-4)
    assert sum(jp["scores"].values()) == pytest.approx(1.0, abs=1e-5)


def test_tenant_info(served):
    resp = served["client"].get("/v1/tenants/john", headers={"Authorization": f"Bearer {served['keys']['john']}"})
    body = resp.json()
    assert resp.status_code == 200 and body["model_version"] == served["versions"]["john"]
    assert body["labels"] == ["negative", "positive"] and body["metrics"]["test_macro_f1"] == 0.9
    assert body["promoted_at"] and body["temperature"] == 1.7 and body["temperature_slope"] == 0.0
    assert served["client"].get("/v1/tenants/john").status_code == 401


BAD_REQUESTS = [  # (tenant, key name or raw key, kwargs, status, code)
    ("john", "", {}, 401, "unauthorized"),
    ("john", "atn_000000000000_wrong", {}, 401, "unauthorized"),
    ("jane", "john", {}, 403, "forbidden"),
    ("ghost", "admin", {}, 404, "unknown_tenant"),
    ("Not A Tenant!", "admin", {}, 404, "unknown_tenant"),
    ("carl", "admin", {}, 409, "no_champion"),
    ("john", "john", {"content": b'{"texts": ["' + b"x" * (1024 * 1024) + b'"]}'}, 413, "payload_too_large"),
    ("john", "john", {"content": b"{not json"}, 422, "invalid_body"),
    ("john", "john", {"json": {"text": ["a"]}}, 422, "invalid_body"),
    ("john", "john", {"json": {"texts": "a"}}, 422, "invalid_body"),
    ("john", "john", {"json": {"texts": ["a", 1]}}, 422, "invalid_body"),
    ("john", "john", {"json": {"texts": []}}, 422, "invalid_body"),
    ("john", "john", {"json": {"texts": ["a"] * 65}}, 422, "invalid_body"),
    ("john", "john", {"json": {"texts": ["x" * 10_001]}}, 422, "invalid_body"),
    ("john", "john", {"content": b'{"texts": ["\\ud800"]}'}, 422, "invalid_body"),  # a lone surrogate
    ("john", "john", {"content": b'{"texts": ["a\\u0000b"]}'}, 422, "invalid_body"),
    ("john", "john", {"content": b'{"texts": ' + b"[" * 50_000 + b"]" * 50_000 + b"}"}, 422, "invalid_body"),
    ("john", "john", {"content": b'{"texts": ["caf\xe9"]}'}, 422, "invalid_body"),  # Latin-1, not UTF-8
]


def _send_bad(served, case):
    tenant, who, kwargs, _, _ = case
    key = served["keys"].get(who, who)
    return predict(served, tenant, key=key if key else "", **kwargs)


@pytest.mark.parametrize("case", BAD_REQUESTS, ids=lambda c: f"{c[3]}-{c[0]}-{list(c[2]) or 'auth'}")
def test_error_table(served, case):
    resp = _send_bad(served, case)
    assert resp.status_code == case[3], resp.text
    body = resp.json()
    assert set(body) == {"error"} and body["error"]["code"] == case[4] and body["error"]["message"]


def test_replica_survives_200_mixed_bad_requests(served):
    statuses = [_send_bad(served, BAD_REQUESTS[i % len(BAD_REQUESTS)]).status_code for i in range(200)]
    assert set(statuses) == {401, 403, 404, 409, 413, 422}
    good = predict(served, "john", key=served["keys"]["john"])
    assert good.status_code == 200 and good.json()["predictions"][0]["label"] == "positive"


def test_every_cross_tenant_key_is_403(served):
    tenants = ["john", "jane", "bob", "dave"]
    results = {(owner, target): predict(served, target, key=served["keys"][owner]).status_code
               for owner in tenants for target in tenants + ["ann", "carl", "ghost"] if owner != target}
    assert set(results.values()) == {403}, results


def _corrupt(reg, tenant) -> tuple[Path, bytes]:
    info = reg.get_version(tenant, "champion")
    target = Path(info.source.removeprefix("file://")) / "config.json"
    original = target.read_bytes()
    target.write_bytes(original + b" ")
    return target, original


def test_corrupt_artifact_is_503_for_that_tenant_only_and_is_retried(served):
    target, original = _corrupt(served["reg"], "bob")
    try:
        first = predict(served, "bob", key=served["keys"]["bob"])
        assert first.status_code == 503 and first.json()["error"]["code"] == "model_unavailable"
        assert "checksum" in first.json()["error"]["message"] and int(first.headers["retry-after"]) >= 1
        again = predict(served, "bob", key=served["keys"]["bob"])  # backing off: answered at once
        assert again.status_code == 503 and "next attempt" in again.json()["error"]["message"]
        assert int(again.headers["retry-after"]) >= 1
        for tenant in ("john", "jane"):
            assert predict(served, tenant).status_code == 200
    finally:
        target.write_bytes(original)
    # not cached forever: once the artifact is whole again a retry after the back-off loads it
    wait_for(lambda: predict(served, "bob").status_code == 200, 15, "bob to load after the back-off")


def test_lora_tenants_share_the_base_in_the_replica(served):
    assert predict(served, "ann").json()["predictions"][0]["label"] == "positive"
    assert predict(served, "jane").json()["predictions"][0]["label"] == "negative"
    stats = ray_serve.get_deployment_handle(DEPLOYMENT, app_name=APP_NAME).stats.remote().result()
    models = {key.rsplit(":", 1)[0]: m for key, m in stats["models"].items()}
    jane, ann = models[f"jane:{served['versions']['jane']}"], models[f"ann:{served['versions']['ann']}"]
    assert jane["kind"] == ann["kind"] == "lora" and jane["slot"] != ann["slot"]
    assert len(stats["bases"]) == 1  # one base encoder in the replica, both adapters in its bank
    (base,) = stats["bases"].values()
    assert base["adapters"] >= 2 and stats["adapter_bytes"] == base["adapters"] * base["slot_bytes"]


def test_revoked_key_is_rejected_within_ten_seconds(served):
    created = served["store"].create("john")
    assert predict(served, "john", key=created["key"]).status_code == 200
    served["store"].revoke(created["key_id"])
    revoked_at = time.monotonic()
    wait_for(lambda: predict(served, "john", key=created["key"]).status_code == 401, 10, "revocation")
    assert time.monotonic() - revoked_at < 10


def test_promote_and_rollback_are_followed_with_zero_failures(served):
    reg, key = served["reg"], served["keys"]["dave"]
    v1 = served["versions"]["dave"]
    v2 = str(int(v1) + 1)
    seen, failures = [], []

    def run_until(version, started, limit_s):
        """~20 req/s until ``version`` is served; returns seconds from ``started`` to the switch."""
        deadline = time.monotonic() + limit_s
        while time.monotonic() < deadline:
            tick = time.monotonic()
            resp = predict(served, "dave", key=key)
            if resp.status_code != 200:
                failures.append((resp.status_code, resp.text))
            else:
                seen.append(resp.headers["x-attune-model-version"])
                if seen[-1] == version:
                    return time.monotonic() - started
            time.sleep(max(0.0, 0.05 - (time.monotonic() - tick)))
        return None

    assert run_until(v1, time.monotonic(), 5) is not None
    started = time.monotonic()
    reg.promote("dave", v2, reason="test")
    to_v2 = run_until(v2, started, REFRESH_S + 5)
    started = time.monotonic()
    reg.rollback("dave")
    to_v1 = run_until(v1, started, REFRESH_S + 5)
    assert failures == []
    assert to_v2 is not None and to_v2 <= REFRESH_S + 1, to_v2
    assert to_v1 is not None and to_v1 <= REFRESH_S + 1, to_v1
    assert predict(served, "dave", key=key).json()["predictions"][0]["label"] == "positive"  # v1 answers positive


def feedback(served, tenant, items, key=None, **kwargs):
    key = served["keys"]["admin"] if key is None else key
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return served["client"].post(f"/v1/tenants/{tenant}/feedback", headers=headers,
                                 **(kwargs or {"json": {"items": items}}))


def test_feedback_is_stored_with_the_version_its_prediction_id_names(served):
    answer = predict(served, "john", texts=[TEXT, "oil slides"], key=served["keys"]["john"]).json()
    pid = answer["prediction_id"]
    assert prediction_version(pid) == answer["model_version"] == served["versions"]["john"]
    assert predict(served, "john").json()["prediction_id"] != pid  # one id per answer
    sent = [{"text": TEXT, "label": "negative", "prediction_id": pid}, {"text": "oil slides", "label": "positive"}]
    resp = feedback(served, "john", sent, key=served["keys"]["john"])
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["tenant"] == "john" and body["stored"] == 2
    assert [(i["label"], i["prediction_id"], i["version"]) for i in body["items"]] == [
        ("negative", pid, served["versions"]["john"]), ("positive", None, None)]
    again = feedback(served, "john", [{"text": TEXT, "label": "positive"}])  # an admin key; the newest label wins
    assert again.status_code == 200 and again.json()["stored"] == 1
    rows = {row["text"]: row for row in FeedbackStore(served["store"].url).items("john")}
    assert rows[TEXT]["label"] == "positive" and rows["oil slides"]["label"] == "positive"
    assert len(rows) == 2


FEEDBACK_ERRORS = [  # (tenant, key name or raw key, items or request kwargs, status, code)
    ("john", "", [{"text": "a", "label": "positive"}], 401, "unauthorized"),
    ("john", "atn_000000000000_wrong", [{"text": "a", "label": "positive"}], 401, "unauthorized"),
    ("john", "jane", [{"text": "a", "label": "positive"}], 403, "forbidden"),
    ("ghost", "admin", [{"text": "a", "label": "positive"}], 404, "unknown_tenant"),
    ("carl", "admin", [{"text": "a", "label": "positive"}], 409, "no_champion"),
    ("john", "john", [{"text": "a", "label": "bullish"}], 422, "unknown_label"),
    ("john", "john", [{"text": "a", "label": "positive", "prediction_id": "v1"}], 422, "invalid_body"),
    ("john", "john", [{"text": "a", "label": "positive"}] * 65, 422, "invalid_body"),
    ("john", "john", [{"text": "x" * 10_001, "label": "positive"}], 422, "invalid_body"),
    ("john", "john", {"content": b'{"items": [{"text": "\\ud800", "label": "positive"}]}'}, 422, "invalid_body"),
    ("john", "john", {"content": b'{"items": ' + b"[" * 50_000 + b"]" * 50_000 + b"}"}, 422, "invalid_body"),
    ("john", "john", {"content": b'{"items": [{"text": "' + b"x" * (1024 * 1024) + b'"}]}'}, 413,
     "payload_too_large"),
]


def test_feedback_error_table(served):
    """Same keys and limits as predict; a label the champion does not know is listed against the known ones."""
    before = len(FeedbackStore(served["store"].url).items("jane"))
    for tenant, who, items, status, code in FEEDBACK_ERRORS:
        key = served["keys"].get(who, who)
        kwargs = items if isinstance(items, dict) else {}
        resp = feedback(served, tenant, items, key=key if key else "", **kwargs)
        assert (resp.status_code, resp.json()["error"]["code"]) == (status, code), (tenant, who, resp.text)
        if code == "unknown_label":
            assert "'bullish'" in resp.json()["error"]["message"]
            assert "knows 'negative', 'positive'" in resp.json()["error"]["message"]
    assert "a" not in {row["text"] for row in FeedbackStore(served["store"].url).items("john")}
    assert len(FeedbackStore(served["store"].url).items("jane")) == before


def test_health_and_openapi(served):
    client = served["client"]
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").status_code == 200
    doc = client.get("/docs").json()
    assert doc["openapi"].startswith("3.") and doc["info"]["title"] == "attune"
    assert {"/v1/tenants/{tenant}/predict", "/v1/tenants/{tenant}/feedback", "/v1/tenants/{tenant}", "/healthz",
            "/readyz"} <= set(doc["paths"])
    predict_op = doc["paths"]["/v1/tenants/{tenant}/predict"]["post"]
    assert predict_op["requestBody"]["content"]["application/json"]["schema"]["required"] == ["texts"]
    assert {"200", "401", "403", "404", "409", "413", "422", "503"} <= set(predict_op["responses"])
    assert "prediction_id" in doc["components"]["schemas"]["PredictResponse"]["required"]
    feedback_op = doc["paths"]["/v1/tenants/{tenant}/feedback"]["post"]
    assert feedback_op["requestBody"]["content"]["application/json"]["schema"]["required"] == ["items"]
    assert {"200", "401", "403", "404", "409", "413", "422", "503"} <= set(feedback_op["responses"])
    _check_refs(doc, doc)
    from openapi_spec_validator import validate

    validate(doc)  # raises on any OpenAPI 3 schema violation
    assert "swagger" in client.get("/docs", headers={"accept": "text/html"}).text.lower()
    assert client.get("/nope").json()["error"]["code"] == "not_found"


def _check_refs(node, doc):
    """Every ``$ref`` in the document points at an existing component."""
    if isinstance(node, dict):
        ref = node.get("$ref")
        if ref is not None:
            target = doc
            for part in ref.removeprefix("#/").split("/"):
                assert part in target, f"dangling $ref {ref}"
                target = target[part]
        for value in node.values():
            _check_refs(value, doc)
    elif isinstance(node, list):
        for value in node:
            _check_refs(value, doc)


def test_per_tenant_metrics_reach_prometheus(served):
    import ray

    port = ray._private.worker.global_worker.node.metrics_export_port

    def scrape():
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
            text = resp.read().decode()
        wanted = ('attune_requests_total{', 'tenant="john"', "attune_request_latency_ms_bucket",
                  "attune_model_loads_total", "attune_model_load_seconds", "attune_model_cache_total",
                  'status="503"', 'status="401"', 'outcome="error"', 'result="hit"', 'result="miss"')
        return text if all(w in text for w in wanted) else None

    text = wait_for(scrape, 40, "attune metrics on Ray's Prometheus endpoint", interval_s=1.0)
    assert 'tenant="_unauthorized"' in text  # no free-form tenant tags before authentication


def _samples(text: str, metric: str, *labels: str) -> list[float]:
    """The values of ``metric``'s series with ``labels`` (``'tenant="ann"'``) in a Prometheus scrape."""
    return [float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
            if line.removeprefix("ray_").startswith(f"{metric}{{") and all(label in line for label in labels)]


def test_live_quality_and_drift_from_feedback_that_contradicts_the_champion(served):
    """ann's champion answers "positive" to every text; 36 of 40 feedback labels say "negative". The
    replica scores each text with the champion on arrival, so ann's tenant info reports accuracy 0.1 on
    40 rows and the drift flag (test_accuracy 0.9: the binomial test's p-value is tiny), and so do the gauges."""
    import ray

    items = [{"text": f"live quality {i}", "label": "negative" if i < 36 else "positive"} for i in range(40)]
    assert feedback(served, "ann", items).status_code == 200
    resp = served["client"].get("/v1/tenants/ann", headers={"Authorization": f"Bearer {served['keys']['admin']}"})
    quality = resp.json()["live_quality"]
    assert (quality["version"], quality["rows"], quality["correct"]) == (served["versions"]["ann"], 40, 4)
    assert quality["accuracy"] == 0.1 and quality["test_accuracy"] == 0.9 and quality["since"]
    assert quality["ece"] == pytest.approx(calibrated_top_score() - 0.1, abs=1e-4)  # 99.7% sure, 10% right
    drift = quality["drift"]
    assert (drift["flag"], drift["status"], drift["n"]) == (True, "drift", 40)
    assert drift["p_value"] < drift["alpha"] and "binomial" in drift["rule"]
    port = ray._private.worker.global_worker.node.metrics_export_port

    def scrape():
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as page:
            text = page.read().decode()
        wanted = {"attune_live_drift": 1.0, "attune_live_accuracy": 0.1, "attune_live_feedback_rows": 40.0}
        return all(_samples(text, name, 'tenant="ann"') == [value] for name, value in wanted.items()) and text

    text = wait_for(scrape, 40, "ann's live quality gauges on Ray's Prometheus endpoint", interval_s=1.0)
    assert _samples(text, "attune_feedback_total", 'tenant="ann"', 'outcome="wrong"') == [36.0]
    assert _samples(text, "attune_feedback_total", 'tenant="ann"', 'outcome="correct"') == [4.0]
