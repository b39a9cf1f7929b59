"""The endpoint: one Ray Serve deployment that serves the HTTP API and holds the tenant models.

A request crosses Serve's HTTP proxy and one replica, which authenticates, validates, resolves the
tenant's champion (TTL cache), pins its model (``serve._cache``), and adds it to the replica's next
batch (``serve._batch``). Any replica can serve any tenant: LoRA tenants load as small adapters onto
the replica's shared base, so Serve's proxy spreads requests over the replicas by their load.

Routes: ``POST /v1/tenants/{tenant}/predict``, ``POST /v1/tenants/{tenant}/feedback`` (labelled texts,
stored for relocalization: ``serve._feedback``), ``GET /v1/tenants/{tenant}`` (the champion, with its
live quality on that feedback: ``serve._quality``), ``GET /healthz``,
``GET /readyz``, ``GET /docs`` (the OpenAPI document as JSON; Swagger UI for browsers) and
``GET /openapi.json``. Every error is ``{"error": {"code", "message"}}``; a 503 the client may retry
carries ``Retry-After``. A champion that fails to load on a replica is answered by the tenant's
previous version, with ``x-attune-fallback`` saying so (``serve._fallback``).
"""

import asyncio
import logging
import os
import tempfile
import time
import uuid
from pathlib import Path
from typing import Optional

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import JSONResponse
from ray import serve as ray_serve
from starlette.exceptions import HTTPException as StarletteHTTPException

from registry import new_prediction_id
from serve._auth import Authenticator, authorize
from serve._backoff import LoadBackoff
from serve._batch import Request as BatchRequest
from serve._batch import run_batch
from serve._batcher import Batcher
from serve._cache import ModelCache
from serve._champions import ChampionDirectory
from serve._config import AppSpec
from serve._errors import FeedbackUnavailableError, InvalidRequestError, ServeError, from_registry_error
from serve._fallback import LastGood
from serve._feedback import FeedbackResponse, check_labels, feedback_body_schema, parse_feedback_body
from serve._metrics import EndpointMetrics
from serve._quality import QualityWatch, outcomes, scored_items
from serve._validation import ErrorBody, PredictBody, PredictResponse, TenantInfo, parse_predict_body, read_limited

logger = logging.getLogger("attune.serve")
VERSION_HEADER = "x-attune-model-version"
REQUEST_ID_HEADER = "x-attune-request-id"  # on a 500: the id that the replica's log line carries
FALLBACK_HEADER = "x-attune-fallback"  # the champion failed to load; an earlier version answered
STATUS_MODELS = 200  # model keys a replica reports to `attune serve status`

_ERRORS = {status: {"model": ErrorBody, "description": text} for status, text in (
    (401, "key missing or invalid"), (403, "a valid key for another tenant"), (404, "unknown tenant"),
    (409, "the tenant has no champion"), (413, "body larger than the limit"),
    (422, "invalid body (`invalid_body`); for feedback also a label the champion does not know (`unknown_label`)"),
    (429, "too many requests waiting; retry after Retry-After seconds"),
    (503, "the tenant's model failed to load, or the registry, key store or feedback store cannot be read; "
            "retry after Retry-After seconds"))}

_PREDICT_HEADERS = {200: {"headers": {
    VERSION_HEADER: {"description": "the version that answered", "schema": {"type": "string"}},
    FALLBACK_HEADER: {"description": "only when the champion failed to load on this replica and its previous "
                                     "version answered instead, e.g. `champion v3 failed to load (<reason>); "
                                     "served v2`", "schema": {"type": "string"}}}}}

app = FastAPI(title="attune", version="1", docs_url=None, redoc_url=None,
              description="Every tenant's calibrated classifier behind one endpoint. "
                          "Authenticate with `Authorization: Bearer <key>` (`attune keys create`).")


@app.exception_handler(ServeError)
async def _serve_error(_request: Request, exc: ServeError) -> JSONResponse:
    return JSONResponse(exc.body(), status_code=exc.http_status, headers=exc.headers())


@app.exception_handler(StarletteHTTPException)
async def _http_error(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
    return JSONResponse({"error": {"code": code, "message": str(exc.detail)}}, status_code=exc.status_code)


@app.exception_handler(RequestValidationError)
async def _validation_error(_request: Request, exc: RequestValidationError) -> JSONResponse:
    return JSONResponse(InvalidRequestError(f"invalid request: {exc.errors()[:3]}").body(), status_code=422)


@app.exception_handler(Exception)
async def _unexpected(_request: Request, exc: Exception) -> JSONResponse:
    """A bug's details (its message may hold a path, a query or a database URL) go to the replica's log
    only; the client gets an id to quote, which the log line carries too."""
    request_id = uuid.uuid4().hex[:16]
    logger.error("unexpected error (request id %s)", request_id, exc_info=exc)
    return JSONResponse({"error": {"code": "internal",
                                   "message": f"internal error (request id {request_id}); the endpoint's log "
                                              "has the details"}},
                        status_code=500, headers={REQUEST_ID_HEADER: request_id})


# Helpers are defined before the class: Serve pickles the class by value when it is decorated.
def _warm_imports() -> None:
    import safetensors.torch  # noqa: F401
    from transformers import AutoTokenizer, BertModel  # noqa: F401


def _device(num_gpus: float) -> str:
    if num_gpus > 0:
        import torch

        if torch.cuda.is_available():
            return "cuda"
    return "cpu"


def _rss_bytes() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@ray_serve.deployment(name="Endpoint")
@ray_serve.ingress(app)
class Endpoint:
    """One replica: keys, champions, the tenant models it holds, and its batches."""

    def __init__(self, spec: dict):
        from registry import Registry

        self.spec = AppSpec(**spec)
        cfg = self.spec.config.model
        _warm_imports()  # so the first request does not pay for importing transformers and safetensors
        self.registry = Registry(self.spec.tracking_uri, self.spec.artifact_root)
        self.champions = ChampionDirectory(self.registry, self.spec.refresh_s,
                                           on_snapshot=self._retain)
        self.auth = Authenticator(self._key_store(), self.spec.keys_refresh_s,
                                  insecure_no_auth=self.spec.insecure_no_auth)
        self.metrics = EndpointMetrics()
        self.replica_id = ray_serve.get_replica_context().replica_id.unique_id
        root = Path(self.spec.config.cache_dir or Path(tempfile.gettempdir()) / "attune-serve-cache")
        self.models = ModelCache(self._download, device=_device(cfg.num_gpus),
                                 adapter_budget_bytes=int(cfg.adapter_cache_mib * 2**20),
                                 max_full_models=cfg.max_models_per_replica, load_timeout_s=cfg.load_timeout_s,
                                 backoff=LoadBackoff(cfg.load_retry_initial_s, cfg.load_retry_max_s),
                                 max_seq_len=cfg.max_seq_len, scratch=root / self.replica_id,
                                 on_load=self.metrics.loaded, on_lookup=self.metrics.lookup)
        self.fallback = LastGood(self.models, self.registry, self.spec.refresh_s)
        cross_tenant = cfg.cross_tenant_batching
        self.batcher = Batcher(lambda requests: run_batch(requests, cross_tenant), max_batch_size=cfg.max_batch_size,
                               wait_s=cfg.batch_wait_timeout_s, gather_s=cfg.batch_gather_s)
        self.served = 0
        self.feedback_store = None  # opened by the first feedback: a store that is down must not stop predict
        self.quality = QualityWatch(self.registry, self._open_feedback_store, self.spec.drift, self.spec.refresh_s,
                                    self.metrics)

    def _key_store(self):
        if self.spec.insecure_no_auth:
            logger.warning("AUTHENTICATION IS DISABLED (--insecure-no-auth): anyone can call every tenant")
            return None
        from serve._keys import KeyStore

        return KeyStore(self.spec.keys_url)

    @app.post("/v1/tenants/{tenant}/predict", response_model=PredictResponse,
              responses={**_PREDICT_HEADERS, **_ERRORS},
              openapi_extra={"requestBody": {"required": True, "content": {
                  "application/json": {"schema": PredictBody.model_json_schema()}}}},
              summary="Calibrated predictions from the tenant's champion model")
    async def predict(self, tenant: str, request: Request) -> JSONResponse:
        started, status, tag = time.perf_counter(), 500, "_unauthorized"  # no free-form tags before auth
        self.batcher.expect()  # the batcher may wait for this request; _predict takes the count over
        counted = True
        try:
            await self._authorize(request, tenant)
            tag = tenant
            limits = self.spec.config.ingress
            raw = await read_limited(request.headers.get("content-length"), request.stream(),
                                     limits.max_body_bytes)
            texts = parse_predict_body(raw, max_texts=limits.max_texts, max_chars=limits.max_chars)
            info = await self._champion(tenant)
            counted = False
            predictions, served = await self._predict(tenant, info, texts)
            status = 200
            version = served.info.version
            headers = {VERSION_HEADER: version, **({FALLBACK_HEADER: served.note} if served.note else {})}
            return JSONResponse({"tenant": tenant, "model_version": version,
                                 "prediction_id": new_prediction_id(version), "predictions": predictions},
                                headers=headers)
        except ServeError as exc:
            status = exc.http_status
            raise
        finally:
            if counted:
                self.batcher.gone()
            self.metrics.observe(tag, status, (time.perf_counter() - started) * 1000)

    async def _predict(self, tenant: str, info, texts: list[str]):
        """Pin the model (the champion's, or the previous version's when it fails to load), join the next
        batch, release; the predictions and what served them. Until it joins, the request counts as
        arriving (the batcher waits a little for such requests rather than starting a batch without them)."""
        joined = False
        try:
            served = await self.fallback.acquire(tenant, info)
            try:
                joined = True
                predictions = await self.batcher.submit(
                    BatchRequest(model=served.model, texts=texts, temperature=served.info.temperature,
                                 temperature_slope=served.info.temperature_slope))
                self.fallback.succeeded(tenant, served.info)
                return predictions, served
            finally:
                self.models.release(served.model)
                self.served += 1
        finally:
            if not joined:
                self.batcher.gone()

    @app.post("/v1/tenants/{tenant}/feedback", response_model=FeedbackResponse, responses=_ERRORS,
              openapi_extra={"requestBody": {"required": True, "content": {
                  "application/json": {"schema": feedback_body_schema()}}}},
              summary="Store correct labels for texts (one row per text; the newest label wins)")
    async def feedback(self, tenant: str, request: Request) -> JSONResponse:
        await self._authorize(request, tenant)
        limits = self.spec.config.ingress
        raw = await read_limited(request.headers.get("content-length"), request.stream(), limits.max_body_bytes)
        items = parse_feedback_body(raw, max_texts=limits.max_texts, max_chars=limits.max_chars)
        info = await self._champion(tenant)
        check_labels(tenant, info, items)
        items = await self._scored(tenant, info, items)
        stored = await asyncio.to_thread(self._store_feedback, tenant, items, info)
        return JSONResponse({"tenant": tenant, "stored": len(stored), "items": stored},
                            headers={VERSION_HEADER: info.version})

    async def _scored(self, tenant: str, info, items: list) -> list:
        """``items`` with the answer of the model serving the tenant on each text (the champion's, or its
        fallback's), for the live quality (``serve._quality``); unscored when no model answered, for the
        feedback is stored all the same."""
        self.batcher.expect()  # _predict takes the count over
        try:
            predictions, served = await self._predict(tenant, info, [item.text for item in items])
        except Exception as exc:  # noqa: BLE001 - a model that cannot answer must not lose the labels
            logger.warning("feedback for tenant %s is stored unscored: %s", tenant, exc)
            return items
        return scored_items(items, served.info.version, predictions)

    def _open_feedback_store(self):
        from registry import FeedbackStore

        if self.feedback_store is None:
            url = self.spec.feedback_url or self.spec.keys_url
            if url is None:
                raise FeedbackUnavailableError("this endpoint has no feedback store: its spec "
                                               "sets neither feedback_url nor keys_url", retry_after_s=60.0)
            self.feedback_store = FeedbackStore(url)
        return self.feedback_store

    def _store_feedback(self, tenant: str, items: list, info) -> list[dict]:
        from registry import FeedbackStoreError

        try:
            stored = self._open_feedback_store().record(tenant, items)
            self._still_registered(tenant)
        except FeedbackStoreError:  # logged by the store, with the database's own error
            raise FeedbackUnavailableError("cannot store the feedback: the feedback store is unavailable; retry "
                                           "after Retry-After seconds", retry_after_s=5.0) from None
        self.metrics.scored(tenant, outcomes(items, info.version))
        self.quality.measure(tenant, info)  # the gauges follow the new rows
        return stored

    def _still_registered(self, tenant: str) -> None:
        """After a feedback write: the tenant is still in the registry (read now, not from a cache), or its
        feedback goes and the answer is the 404. An erasure removes the registered model before the
        feedback, so a write racing it is removed by the erasure or here: never kept past one."""
        from registry import TenantNotFoundError

        try:
            self.registry.champion(tenant)
        except TenantNotFoundError as exc:
            self.feedback_store.delete_tenant(tenant)
            raise from_registry_error(exc) from None
        except Exception:  # noqa: BLE001 - a champion-less tenant (409) or a registry hiccup is no erasure
            pass

    @app.get("/v1/tenants/{tenant}", response_model=TenantInfo, responses=_ERRORS,
             summary="The tenant's champion version, labels, test metrics, promotion time and live quality")
    async def tenant_info(self, tenant: str, request: Request) -> JSONResponse:
        await self._authorize(request, tenant)
        info = await self._champion(tenant)
        quality = await asyncio.to_thread(self.quality.measure, tenant, info)
        body = {"tenant": tenant, "model_version": info.version, "labels": info.labels,
                "metrics": info.metrics, "temperature": info.temperature,
                "temperature_slope": info.temperature_slope,
                "promoted_at": info.tags.get("attune.promoted_at"), "live_quality": quality}
        return JSONResponse(body, headers={VERSION_HEADER: info.version})

    @app.get("/healthz", summary="200 while the process is up")
    async def healthz(self) -> dict:
        return {"status": "ok"}

    @app.get("/readyz", summary="200 once a replica serves requests", responses={503: {"model": ErrorBody}})
    async def readyz(self) -> dict:
        return {"status": "ready"}  # a request only reaches a replica that finished starting

    @app.get("/docs", include_in_schema=False)
    async def docs(self, request: Request):
        if "text/html" in request.headers.get("accept", ""):
            return get_swagger_ui_html(openapi_url="/openapi.json", title="attune API")
        return JSONResponse(app.openapi())

    async def _authorize(self, request: Request, tenant: str) -> None:
        header: Optional[str] = request.headers.get("authorization")
        if self.auth.needs_store(header):
            principal = await asyncio.to_thread(self.auth.authenticate, header)
        else:
            principal = self.auth.authenticate(header)
        authorize(principal, tenant)

    async def _champion(self, tenant: str):
        return await self.champions.get(tenant)

    def _retain(self, champions: dict) -> None:
        """After each champions snapshot: drop the models that neither a champion nor a fallback needs."""
        self.models.retain(champions, self.fallback.keep(champions))

    def _download(self, tenant: str, version: str, dest: Path) -> Path:
        path, _ = self.registry.download(tenant, version, dest)
        return path

    async def stats(self) -> dict:
        """This replica's models (each with its slot and pins), bases and counters (tests, benchmarks)."""
        return {"replica": self.replica_id, "pid": os.getpid(), "served": self.served,
                "batches": dict(self.batcher.stats), "rss_bytes": _rss_bytes(), **self.models.stats()}

    async def record_routing_stats(self) -> dict:
        """Serve's per-replica stats hook (Serve's controller asks every few seconds, and ``attune serve
        status`` reads it from each replica actor): :meth:`stats` with the models as a list of keys, at
        most ``STATUS_MODELS`` of them, so that it stays small with thousands of tenants."""
        stats = await self.stats()
        models = list(stats.pop("models"))
        return {**stats, "num_models": len(models), "models": models[:STATUS_MODELS]}
