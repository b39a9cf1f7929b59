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


class EndpointMetrics(IngressMetrics, ModelMetrics):
    """Everything an endpoint replica records: requests and latency, model loads and cache lookups."""

    def __init__(self):
        IngressMetrics.__init__(self)
        ModelMetrics.__init__(self)
