"""The HTTP ingress: FastAPI behind ``@ray_serve.ingress``. Authenticates, validates, resolves the
tenant's champion (TTL cache) and calls ``TenantModel`` with ``multiplexed_model_id="<tenant>:<version>"``.

Routes: ``POST /v1/tenants/{tenant}/predict``, ``GET /v1/tenants/{tenant}``, ``GET /healthz``,
``GET /readyz``, ``GET /docs`` (the OpenAPI document as JSON; Swagger UI for browsers) and
``GET /openapi.json``. Every error is ``{"error": {"code", "message"}}``.
"""

import asyncio
import logging
import time
from typing import Optional

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import JSONResponse
from ray import serve as ray_serve
from starlette.exceptions import HTTPException as StarletteHTTPException

from serve._auth import Authenticator, authorize
from serve._champions import ChampionCache
from serve._config import AppSpec
from serve._errors import InvalidRequestError, NotReadyError, ServeError, as_serve_error
from serve._metrics import IngressMetrics
from serve._validation import ErrorBody, PredictBody, PredictResponse, TenantInfo, parse_predict_body, read_limited

logger = logging.getLogger("attune.serve")
VERSION_HEADER = "x-attune-model-version"
READY_TIMEOUT_S = 5.0

_ERRORS = {status: {"model": ErrorBody, "description": text} for status, text in (
    (401, "key missing or invalid"), (403, "a valid key for another tenant"), (404, "unknown tenant"),
    (409, "the tenant has no champion"), (413, "body larger than the limit"), (422, "invalid body"),
    (503, "the tenant's model failed to load"))}

app = FastAPI(title="attune", version="1", docs_url=None, redoc_url=None,
              description="Every tenant's calibrated classifier behind one endpoint. "
                          "Authenticate with `Authorization: Bearer <key>` (`attune keys create`).")


@app.exception_handler(ServeError)
async def _serve_error(_request: Request, exc: ServeError) -> JSONResponse:
    headers = {"www-authenticate": "Bearer"} if exc.http_status == 401 else None
    return JSONResponse(exc.body(), status_code=exc.http_status, headers=headers)


@app.exception_handler(StarletteHTTPException)
async def _http_error(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
    return JSONResponse({"error": {"code": code, "message": str(exc.detail)}}, status_code=exc.status_code)


@app.exception_handler(RequestValidationError)
async def _validation_error(_request: Request, exc: RequestValidationError) -> JSONResponse:
    return JSONResponse(InvalidRequestError(f"invalid request: {exc.errors()[:3]}").body(), status_code=422)


@app.exception_handler(Exception)
async def _unexpected(_request: Request, exc: Exception) -> JSONResponse:
    logger.exception("unexpected error")
    return JSONResponse({"error": {"code": "internal", "message": f"{type(exc).__name__}: {exc}"}},
                        status_code=500)


@ray_serve.deployment(name="Ingress")
@ray_serve.ingress(app)
class Ingress:
    """One ingress replica: a key cache, a champion cache and a handle to ``TenantModel``."""

    def __init__(self, model_handle, spec: dict):
        from registry import Registry

        self.spec = AppSpec(**spec)
        self.model = model_handle
        self.registry = Registry(self.spec.tracking_uri, self.spec.artifact_root)
        self.champions = ChampionCache(self.registry.champion, self.spec.refresh_s)
        store = None
        if not self.spec.insecure_no_auth:
            from serve._keys import KeyStore

            store = KeyStore(self.spec.keys_url)
        else:
            logger.warning("AUTHENTICATION IS DISABLED (--insecure-no-auth): anyone can call every tenant")
        self.auth = Authenticator(store, self.spec.keys_refresh_s, insecure_no_auth=self.spec.insecure_no_auth)
        self.metrics = IngressMetrics()

    @app.post("/v1/tenants/{tenant}/predict", response_model=PredictResponse, responses=_ERRORS,
              openapi_extra={"requestBody": {"required": True, "content": {
                  "application/json": {"schema": PredictBody.model_json_schema()}}}},
              summary="Calibrated predictions from the tenant's champion model")
    async def predict(self, tenant: str, request: Request) -> JSONResponse:
        started, status, tag = time.perf_counter(), 500, "_unauthorized"  # no free-form tags before auth
        try:
            await self._authorize(request, tenant)
            tag = tenant
            limits = self.spec.config.ingress
            raw = await read_limited(request.headers.get("content-length"), request.stream(),
                                     limits.max_body_bytes)
            texts = parse_predict_body(raw, max_texts=limits.max_texts, max_chars=limits.max_chars)
            info = await self._champion(tenant)
            try:
                predictions = await self.model.options(
                    multiplexed_model_id=f"{tenant}:{info.version}").predict.remote(texts)
            except Exception as exc:  # noqa: BLE001 - replica errors arrive wrapped by Ray
                raise as_serve_error(exc) from None
            status = 200
            return JSONResponse({"tenant": tenant, "model_version": info.version, "predictions": predictions},
                                headers={VERSION_HEADER: info.version})
        except ServeError as exc:
            status = exc.http_status
            raise
        finally:
            self.metrics.observe(tag, status, (time.perf_counter() - started) * 1000)

    @app.get("/v1/tenants/{tenant}", response_model=TenantInfo, responses=_ERRORS,
             summary="The tenant's champion version, labels, test metrics and promotion time")
    async def tenant_info(self, tenant: str, request: Request) -> JSONResponse:
        await self._authorize(request, tenant)
        info = await self._champion(tenant)
        body = {"tenant": tenant, "model_version": info.version, "labels": info.labels,
                "metrics": info.metrics, "temperature": info.temperature,
                "promoted_at": info.tags.get("attune.promoted_at")}
        return JSONResponse(body, headers={VERSION_HEADER: info.version})

    @app.get("/healthz", summary="200 while the process is up")
    async def healthz(self) -> dict:
        return {"status": "ok"}

    @app.get("/readyz", summary="200 once a TenantModel replica answers", responses={503: {"model": ErrorBody}})
    async def readyz(self) -> dict:
        try:
            await asyncio.wait_for(self.model.ready.remote(), timeout=READY_TIMEOUT_S)
        except Exception as exc:  # noqa: BLE001 - any failure means not ready
            raise NotReadyError(f"no healthy TenantModel replica yet: {type(exc).__name__}") from None
        return {"status": "ready"}

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
        if self.champions.fresh(tenant):
            return self.champions.get(tenant)
        return await asyncio.to_thread(self.champions.get, tenant)

