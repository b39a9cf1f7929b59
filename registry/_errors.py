"""The registry's error tree. Each error maps to an HTTP status for the serving layer."""
from __future__ import annotations


class RegistryError(Exception):
    """A registry operation failed; the message says what to do next."""

    http_status = 500
    code = "registry_error"

    def __reduce__(self):  # pickles across Ray actor boundaries with its message
        return (type(self), self.args)


class InvalidTenantError(RegistryError, ValueError):
    http_status = 422
    code = "invalid_tenant"


class TenantNotFoundError(RegistryError):
    http_status = 404
    code = "unknown_tenant"


class NoChampionError(RegistryError):
    http_status = 409
    code = "no_champion"


class VersionNotFoundError(RegistryError):
    http_status = 404
    code = "unknown_version"


class ArtifactIntegrityError(RegistryError):
    """Downloaded artifacts do not match the checksum recorded at registration."""

    http_status = 503
    code = "artifact_integrity"
