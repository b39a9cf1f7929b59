"""The registry's error tree, under attune's ``AttuneError``. Each error maps to an HTTP status for
the serving layer. A ``RegistryError`` is a store that failed (exit status 1); the ones that also
subclass ``UsageError`` name a tenant or version that is not there (exit status 2)."""
from __future__ import annotations

from cluster import AttuneError, UsageError


class RegistryError(AttuneError):
    """A registry operation failed; the message says what to do next."""

    http_status = 500
    code = "registry_error"


class RegistryUnavailableError(RegistryError):
    """The tracking/registry store cannot be reached: a service that is down (exit status 1)."""

    http_status = 503
    code = "registry_unavailable"


class InvalidTenantError(RegistryError, UsageError, ValueError):
    http_status = 422
    code = "invalid_tenant"


class TenantNotFoundError(RegistryError, UsageError):
    http_status = 404
    code = "unknown_tenant"


class NoChampionError(RegistryError, UsageError):
    http_status = 409
    code = "no_champion"


class VersionNotFoundError(RegistryError, UsageError):
    http_status = 404
    code = "unknown_version"


class ArtifactIntegrityError(RegistryError):
    """Downloaded artifacts do not match the checksum recorded at registration."""

    http_status = 503
    code = "artifact_integrity"


class NothingToRollBackError(RegistryError, UsageError):
    """``rollback`` on a tenant whose champion has no predecessor."""

    http_status = 409
    code = "no_previous_champion"


class InvalidModelDirError(RegistryError, UsageError):
    """A directory that is not an attune export (no readable, complete ``attune.json``)."""

    http_status = 422
    code = "invalid_model_dir"
