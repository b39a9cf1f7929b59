"""Per-tenant metric tags: only tenant ids (ASCII) and the reserved tags reach Ray's metrics (no Ray)."""
from __future__ import annotations

import pytest

from serve._metrics import INVALID_TENANT_TAG, UNAUTHORIZED_TAG, IngressMetrics, tenant_tag


class AsciiTagRecorder:
    """Records like a Ray metric, which encodes its tag values as ASCII (a non-ASCII one raises)."""

    def __init__(self):
        self.tags = []

    def _record(self, tags: dict) -> None:
        for value in tags.values():
            value.encode("ascii")
        self.tags.append(dict(tags))

    def inc(self, value, tags):
        self._record(tags)

    def observe(self, value, tags):
        self._record(tags)


@pytest.mark.parametrize("tenant, tag", [
    ("john", "john"), ("t-1_b", "t-1_b"), (UNAUTHORIZED_TAG, UNAUTHORIZED_TAG),
    ("\x80", INVALID_TENANT_TAG), ("caf\u00e9", INVALID_TENANT_TAG), ("_\u00e9", INVALID_TENANT_TAG),
    ("Not A Tenant!", INVALID_TENANT_TAG), ("a" * 64, INVALID_TENANT_TAG), ("john\n", INVALID_TENANT_TAG),
    ("", INVALID_TENANT_TAG),
])
def test_tenant_tag(tenant, tag):
    assert tenant_tag(tenant) == tag


def test_observe_a_non_ascii_tenant_path_records_the_invalid_tag():
    """A non-ASCII tenant in the path (an admin key reaches the metrics with it) raised in Ray's metrics
    and turned the request's 404 into a 500 (found by tests/integration/test_serve_fuzz.py)."""
    metrics = IngressMetrics.__new__(IngressMetrics)  # without Ray's metric objects
    metrics.requests, metrics.latency = AsciiTagRecorder(), AsciiTagRecorder()
    metrics.observe("\u0080", 404, 1.0)
    metrics.observe("john", 200, 1.0)
    assert metrics.requests.tags == [{"tenant": INVALID_TENANT_TAG, "status": "404"},
                                     {"tenant": "john", "status": "200"}]
    assert metrics.latency.tags == [{"tenant": INVALID_TENANT_TAG}, {"tenant": "john"}]
