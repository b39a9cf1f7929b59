"""Per-tenant serving metrics through Ray's metrics API.

Ray exports them on each node's Prometheus endpoint (the metrics agent, port
``--metrics-export-port`` of ``ray start``) with the prefix ``ray_``, e.g.
``ray_attune_requests_total{tenant="john",status="200"}``.
"""
from __future__ import annotations

import re
from typing import Optional

from registry import TENANT_ID_PATTERN

# Tags that name no tenant (no tenant id starts with "_"): before authentication, and a path that is no tenant id
UNAUTHORIZED_TAG, INVALID_TENANT_TAG = "_unauthorized", "_invalid"
_TENANT_ID = re.compile(TENANT_ID_PATTERN)
LATENCY_BOUNDARIES_MS = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000]
LOAD_BOUNDARIES_S = [0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60]


def tenant_tag(tenant: str) -> str:
    """``tenant`` as a metric tag: a tenant id (ASCII, at most 63 characters) or a reserved tag as it is,
    anything else that a request's path may hold as ``INVALID_TENANT_TAG``. Ray's metric tags must be
    ASCII: a path such as ``/v1/tenants/%C2%80/predict`` raised in the metrics and turned a 404 into a 500."""
    if tenant in (UNAUTHORIZED_TAG, INVALID_TENANT_TAG) or _TENANT_ID.fullmatch(tenant):
        return tenant
    return INVALID_TENANT_TAG


class IngressMetrics:
    """Requests by tenant and status, and their latency."""

    def __init__(self):
        from ray.util import metrics

        self.requests = metrics.Counter("attune_requests_total", description="HTTP requests by tenant and status",
                                        tag_keys=("tenant", "status"))
        self.latency = metrics.Histogram("attune_request_latency_ms", description="request latency per tenant",
                                         boundaries=LATENCY_BOUNDARIES_MS, tag_keys=("tenant",))

    def observe(self, tenant: str, status: int, latency_ms: float) -> None:
        """One request; ``tenant`` is the path's tenant once authenticated, else ``UNAUTHORIZED_TAG``."""
        tag = tenant_tag(tenant)
        self.requests.inc(1, tags={"tenant": tag, "status": str(status)})
        self.latency.observe(latency_ms, tags={"tenant": tag})


class ModelMetrics:
    """Model loads (by outcome), load time, and model-cache hits and misses, per tenant."""

    def __init__(self):
        from ray.util import metrics

        self.loads = metrics.Counter("attune_model_loads_total", description="model loads by tenant and outcome",
                                     tag_keys=("tenant", "outcome"))
        self.load_time = metrics.Histogram("attune_model_load_seconds", description="model load time per tenant",
                                           boundaries=LOAD_BOUNDARIES_S, tag_keys=("tenant",))
        self.cache = metrics.Counter("attune_model_cache_total", description="model cache lookups by result",
                                     tag_keys=("tenant", "result"))

    def loaded(self, tenant: str, seconds: Optional[float], ok: bool) -> None:
        self.loads.inc(1, tags={"tenant": tenant, "outcome": "ok" if ok else "error"})
        if ok and seconds is not None:
            self.load_time.observe(seconds, tags={"tenant": tenant})

    def lookup(self, tenant: str, hit: bool) -> None:
        self.cache.inc(1, tags={"tenant": tenant, "result": "hit" if hit else "miss"})


class QualityMetrics:
    """Feedback by outcome, and each tenant's live quality as this replica last measured it.

    Bounded: a tenant that receives feedback adds three counter series (``outcome`` is ``correct``,
    ``wrong`` or ``unscored``) and four gauges; nothing else is a label, and a tenant without feedback
    adds none. The gauges are set when the replica measures the tenant (after its feedback is stored,
    and on ``GET /v1/tenants/{tenant}``); accuracy and ECE are NaN while the champion has no scored
    rows (e.g. just after a promotion). With several replicas, each reports what it last measured.
    """

    def __init__(self):
        from ray.util import metrics

        self.feedback = metrics.Counter("attune_feedback_total", description="feedback texts by tenant and how the "
                                        "champion had answered them", tag_keys=("tenant", "outcome"))
        self.gauges = {key: metrics.Gauge(name, description=text, tag_keys=("tenant",)) for key, name, text in (
            ("accuracy", "attune_live_accuracy", "champion's accuracy on feedback since its promotion"),
            ("ece", "attune_live_ece", "champion's expected calibration error on feedback since its promotion"),
            ("rows", "attune_live_feedback_rows", "feedback texts the champion scored since its promotion"),
            ("drift", "attune_live_drift", "1 when the drift test flags the champion, else 0"))}
        self.reported: set[str] = set()  # tenants with gauges on this replica

    def scored(self, tenant: str, counts: dict[str, int]) -> None:
        for outcome, count in counts.items():
            if count:
                self.feedback.inc(count, tags={"tenant": tenant_tag(tenant), "outcome": outcome})

    def measured(self, tenant: str, quality: dict) -> None:
        tag = tenant_tag(tenant)
        if not quality["rows"] and tag not in self.reported:
            return  # no series for a tenant without feedback
        self.reported.add(tag)
        values = {"rows": quality["rows"], "drift": 1.0 if quality["drift"]["flag"] else 0.0,
                  "accuracy": quality["accuracy"], "ece": quality["ece"]}
        for key, value in values.items():
            self.gauges[key].set(float("nan") if value is None else float(value), tags={"tenant": tag})


class EndpointMetrics(IngressMetrics, ModelMetrics, QualityMetrics):
    """Everything an endpoint replica records: requests and latency, model loads and cache lookups,
    feedback and live quality."""

    def __init__(self):
        IngressMetrics.__init__(self)
        ModelMetrics.__init__(self)
        QualityMetrics.__init__(self)
