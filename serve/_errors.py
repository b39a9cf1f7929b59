"""The serving error tree. Every error maps to one HTTP status and a stable ``code``; one that a
client may retry carries ``retry_after_s`` (the ``Retry-After`` header). Errors pickle with their
message, so they can cross a Ray actor boundary.
"""
from __future__ import annotations

import math
from typing import Optional

from cluster import AttuneError, UsageError


class ServeError(AttuneError):
    """A request could not be served; ``http_status`` and ``code`` go into the JSON error body.
    From the CLI, a serving failure (exit status 1)."""

    http_status = 500
    code = "internal"
    retry_after_s: Optional[float] = None

    @property
    def message(self) -> str:
        return str(self.args[0]) if self.args else self.code

    def body(self) -> dict:
        return {"error": {"code": self.code, "message": self.message}}

    def headers(self) -> Optional[dict]:
        headers = {}
        if self.http_status == 401:
            headers["www-authenticate"] = "Bearer"
        if self.retry_after_s is not None:
            headers["retry-after"] = str(max(1, math.ceil(self.retry_after_s)))
        return headers or None


class UnauthorizedError(ServeError):
    http_status = 401
    code = "unauthorized"


class ForbiddenError(ServeError):
    http_status = 403
    code = "forbidden"


class UnknownTenantError(ServeError):
    http_status = 404
    code = "unknown_tenant"


class NotFoundError(ServeError):
    http_status = 404
    code = "not_found"


class NoChampionError(ServeError):
    http_status = 409
    code = "no_champion"


class PayloadTooLargeError(ServeError):
    http_status = 413
    code = "payload_too_large"


class InvalidRequestError(ServeError):
    http_status = 422
    code = "invalid_body"


class UnknownLabelError(InvalidRequestError):
    """Feedback with a label the tenant's champion does not know; the message lists the known ones."""

    code = "unknown_label"


class RetryLaterError(ServeError):
    """A 503 the client may retry: it carries ``Retry-After`` (``retry_after_s``) across actor boundaries."""

    http_status = 503

    def __init__(self, message: str, retry_after_s: Optional[float] = None):
        super().__init__(message)
        self.retry_after_s = retry_after_s

    def __reduce__(self):
        return (type(self), (self.message, self.retry_after_s))


class ModelUnavailableError(RetryLaterError):
    """The tenant's model failed to load (or is backing off before a retry); others are unaffected."""

    code = "model_unavailable"


class RegistryUnavailableError(RetryLaterError):
    """The model registry cannot be read and this replica has no earlier answer for the tenant; the
    message is generic (the store's error, which may name its host or user, goes to the log)."""

    code = "registry_unavailable"


class FeedbackUnavailableError(RetryLaterError):
    """The feedback store cannot be written; the message is generic (the store's error goes to the log)."""

    code = "feedback_unavailable"


class NotReadyError(ServeError):
    http_status = 503
    code = "not_ready"


class ServeConfigError(ServeError, UsageError, ValueError):
    """A serve config file or setting is invalid (a user error of `attune serve up`)."""

    code = "invalid_config"


class DeployError(ServeError):
    """``attune serve up`` could not bring the application up (exit status 1)."""

    code = "deploy_failed"


_BY_STATUS = {401: UnauthorizedError, 403: ForbiddenError, 404: UnknownTenantError, 409: NoChampionError,
              413: PayloadTooLargeError, 422: InvalidRequestError, 503: ModelUnavailableError}


def from_registry_error(exc: Exception) -> ServeError:
    """Map a ``registry.RegistryError`` (which carries ``http_status``) onto this tree."""
    status = getattr(exc, "http_status", 500)
    if status == 422:  # an id that can never be a tenant is simply not one
        return UnknownTenantError(str(exc))
    return _BY_STATUS.get(status, ServeError)(str(exc))


def as_serve_error(exc: BaseException, default: Optional[type] = None) -> ServeError:
    """The :class:`ServeError` behind ``exc``, unwrapping Ray task errors; else ``default`` (503)."""
    seen = exc
    for _ in range(4):  # Ray wraps replica errors (RayTaskError); the clean one is its ``cause``
        cause = getattr(seen, "cause", None) or seen.__cause__
        if isinstance(seen, ServeError) and not isinstance(cause, ServeError):
            return seen
        if cause is None:
            break
        seen = cause
    kind = default or ModelUnavailableError
    return kind(f"the model deployment failed: {type(exc).__name__}: {exc}")
