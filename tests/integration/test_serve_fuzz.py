"""A property-based fuzz of the endpoint's OpenAPI: Schemathesis reads ``/openapi.json`` from the real
server on 127.0.0.1 and, for every documented operation, sends a bounded number of generated requests
(schema-valid ones, and for the predict body schema-invalid ones too) to a tenant with a champion, one
without, an unknown one and generated names, with the tenant's key, an admin key, a wrong key, a
malformed header and no key.

Every response must be: no 5xx; a non-2xx answer is JSON in the documented error envelope
``{"error": {"code": str, "message": str}}`` (``application/json``, a 401 with ``WWW-Authenticate``);
a 2xx answer matches its response schema and headers; schema-valid data is not rejected and invalid
data is (Schemathesis' checks). Runs are reproducible (Hypothesis derandomized, no example database)
and bounded in count and time. The hostile bodies Schemathesis does not write (lone surrogates, deep
nesting, Latin-1, an over-long body) are in ``test_serve_app.BAD_REQUESTS``.

Run: ``.venv/bin/python -m pytest tests/integration/test_serve_fuzz.py``
"""
from __future__ import annotations

import json
import time

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    positive_data_acceptance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from serve._keys import KeyStore
from tests.registry_helpers import sqlite_registry
from tests.serve_helpers import LABELS, app_spec, constant_export, register, running_app

MAX_EXAMPLES = 150  # per operation and generation mode: about 900 requests, a few seconds on 2 CPUs
MAX_FUZZ_S = 120.0  # a hard bound on the time the generated requests may take together
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_headers_conformance,
          response_schema_conformance, positive_data_acceptance, negative_data_rejection]
TENANTS = ["john", "carl", "ghost"]  # a champion, no champion, unknown (besides generated names)
FEEDBACK = "POST /v1/tenants/{tenant}/feedback"
OPERATIONS = {"POST /v1/tenants/{tenant}/predict", FEEDBACK, "GET /v1/tenants/{tenant}", "GET /healthz",
              "GET /readyz"}
SETTINGS = settings(max_examples=MAX_EXAMPLES, derandomize=True, database=None, deadline=None,
                    suppress_health_check=list(HealthCheck), print_blob=False)


@pytest.fixture(scope="module")
def fuzzed(ray_session, tiny_base, tmp_path_factory):
    root = tmp_path_factory.mktemp("serve-fuzz")
    reg = sqlite_registry(root / "store")
    export = constant_export(tiny_base, root / "exports" / "full", "positive")
    register(reg, "john", export)
    register(reg, "carl", export, promote=False)
    store = KeyStore(f"sqlite:///{root / 'keys.db'}")
    keys = {"john": store.create("john")["key"], "admin": store.create(None, admin=True)["key"],
            "wrong": "atn_000000000000_wrong", "malformed": "not-a-key", "none": None}
    with running_app(app_spec(reg, root, keys_url=store.url)) as client:
        url = str(client.base_url).rstrip("/")
        assert url.startswith("http://127.0.0.1:")  # loopback only
        schema = schemathesis.openapi.from_url(f"{url}/openapi.json", timeout=30)
        yield {"schema": schema, "url": url, "keys": keys}


def _auth(fuzzed, who: str):
    key = fuzzed["keys"][who]
    return {"Authorization": f"Bearer {key}"} if key else None


def _header(response, name: str):
    values = response.headers.get(name.lower())
    return values[0] if values else None


def assert_envelope(response) -> None:
    """A non-2xx answer is ``{"error": {"code": str, "message": str}}`` as JSON, exactly that shape."""
    where = f"{response.request.method} {response.request.url} -> {response.status_code}: {response.content[:300]!r}"
    assert (_header(response, "content-type") or "").split(";")[0] == "application/json", where
    body = json.loads(response.content)
    assert isinstance(body, dict) and set(body) == {"error"}, where
    error = body["error"]
    assert isinstance(error, dict) and set(error) == {"code", "message"}, where
    assert isinstance(error["code"], str) and error["code"], where
    assert isinstance(error["message"], str) and error["message"], where
    if response.status_code == 401:
        assert _header(response, "www-authenticate") == "Bearer", where
    if response.status_code in (429, 503):
        assert int(_header(response, "retry-after")) >= 1, where


def _strategy(operation, mode: GenerationMode):
    """Cases for ``operation`` in ``mode``, for a generated tenant or one of ``TENANTS``; valid feedback
    for ``john`` also with labels its champion knows (a generated label almost never is one)."""
    if "tenant" not in operation.path_parameters:
        return operation.as_strategy(generation_mode=mode)
    fixed = [operation.as_strategy(generation_mode=mode, path_parameters={"tenant": t}) for t in TENANTS]
    if operation.label == FEEDBACK and mode == GenerationMode.POSITIVE:
        fixed.append(fixed[0].map(_known_labels))
    return st.one_of(operation.as_strategy(generation_mode=mode), *fixed)


def _known_labels(case):
    for i, item in enumerate(case.body["items"]):
        item["label"] = LABELS[i % len(LABELS)]
    return case


def _unknown_label(response, case) -> bool:
    """A schema-valid feedback answered 422 ``unknown_label``: right when a label is not the champion's
    (the schema cannot say which labels a tenant's champion knows)."""
    if response.status_code != 422 or json.loads(response.content)["error"]["code"] != "unknown_label":
        return False
    assert any(item["label"] not in LABELS for item in case.body["items"]), response.content
    return True


def fuzz(fuzzed, operation, mode: GenerationMode, deadline: float, seen: dict) -> None:
    """At most ``MAX_EXAMPLES`` generated requests to ``operation``, each answered as the module says."""

    @SETTINGS
    @given(case=_strategy(operation, mode), who=st.sampled_from(sorted(fuzzed["keys"])))
    def run(case, who):
        assert time.monotonic() < deadline, f"the fuzz ran past {MAX_FUZZ_S:g}s"
        headers = _auth(fuzzed, who)
        response = case.call(base_url=fuzzed["url"], headers=headers, timeout=30)
        seen.setdefault(operation.label, set()).add(response.status_code)
        seen["requests"] = seen.get("requests", 0) + 1
        assert response.status_code < 500, f"{case.as_curl_command(headers=headers)} -> {response.status_code}"
        if response.status_code >= 300:
            assert_envelope(response)
        checks = CHECKS
        if operation.label == FEEDBACK and _unknown_label(response, case):
            checks = [check for check in CHECKS if check is not positive_data_acceptance]
        case.validate_response(response, checks=checks, headers=headers)

    run()


@pytest.mark.timeout(300)
def test_openapi_fuzz_no_5xx_and_every_error_in_the_envelope(fuzzed):
    operations = [result.ok() for result in fuzzed["schema"].get_all_operations()]
    assert {op.label for op in operations} == OPERATIONS  # a new route is fuzzed once it is added here
    deadline, seen = time.monotonic() + MAX_FUZZ_S, {}
    for operation in operations:
        # negative mode negates the body: a path's plain string and an absent body have no invalid form
        modes = [GenerationMode.POSITIVE] + ([GenerationMode.NEGATIVE] if operation.body else [])
        for mode in modes:
            fuzz(fuzzed, operation, mode, deadline, seen)
    assert seen["requests"] > MAX_EXAMPLES, seen  # bounded above by MAX_EXAMPLES per operation and mode
    # the fuzz reached every branch, not only the first error it could cause
    assert seen["POST /v1/tenants/{tenant}/predict"] >= {200, 401, 403, 404, 409, 422}, seen
    assert seen["GET /v1/tenants/{tenant}"] >= {200, 401, 403, 404, 409}, seen
    assert seen[FEEDBACK] >= {200, 401, 403, 404, 409, 422}, seen


def test_the_checks_fail_a_response_off_the_schema(fuzzed):
    """The harness bites: a 200 whose body breaks the documented schema fails schemathesis' checks."""
    operation = fuzzed["schema"]["/v1/tenants/{tenant}"]["GET"]
    case = operation.Case(path_parameters={"tenant": "john"})
    headers = _auth(fuzzed, "john")
    response = case.call(base_url=fuzzed["url"], headers=headers, timeout=30)
    assert response.status_code == 200 and response.json()["tenant"] == "john"
    case.validate_response(response, checks=CHECKS, headers=headers)
    response.content = json.dumps({**response.json(), "temperature": "hot"}).encode()
    response.clear_cache()
    with pytest.raises(schemathesis.errors.FailureGroup) as failed:
        case.validate_response(response, checks=CHECKS, headers=headers)
    assert [failure.code for failure in failed.value.exceptions] == ["ST108"]  # response violates schema
    assert '"hot" is not of type "number"' in str(failed.value)


@pytest.mark.parametrize("path", ["/v1/tenants/%C2%80/predict", "/v1/tenants/caf%C3%A9/predict",
                                  "/v1/tenants/%C2%80"])
def test_a_non_ascii_tenant_is_404_in_the_envelope_not_500(fuzzed, path):
    """Found by the fuzz: with an admin key, a non-ASCII tenant in the path reached the per-tenant metric
    tag, which Ray requires to be ASCII, and the request's 404 became a 500 (serve._metrics.tenant_tag)."""
    import httpx

    headers = _auth(fuzzed, "admin")
    with httpx.Client(base_url=fuzzed["url"], timeout=30) as client:
        if path.endswith("/predict"):
            response = client.post(path, headers=headers, json={"texts": ["gold"]})
        else:
            response = client.get(path, headers=headers)
    assert response.status_code == 404, response.text
    assert response.json()["error"]["code"] == "unknown_tenant"
