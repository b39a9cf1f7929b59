"""Names in the registry: tenant ids, registered-model and experiment names, aliases, tag keys."""
from __future__ import annotations

import re

from registry._errors import InvalidTenantError

TENANT_ID_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,62}$"
_TENANT_RE = re.compile(TENANT_ID_PATTERN)
TENANT_PREFIX = "tenant."
BASE_PREFIX = "base."
CHAMPION = "champion"
CHALLENGER = "challenger"

# version / run tag keys (the MLflow UI shows them as they are)
TAG_CHECKSUM = "attune.checksum"
TAG_TEMPERATURE = "attune.temperature"
TAG_PROMOTED = "attune.promotion.promoted"
TAG_REASON = "attune.promotion.reason"
TAG_PROMOTED_AT = "attune.promoted_at"
TAG_CHAMPION_HISTORY = "attune.champion_history"  # on the registered model: JSON list of versions


def check_tenant_id(tenant: object) -> str:
    """Return ``tenant`` if it is a valid tenant id, else raise InvalidTenantError naming the rule."""
    if not isinstance(tenant, str) or not _TENANT_RE.fullmatch(tenant):
        raise InvalidTenantError(
            f"invalid tenant id {tenant!r}: it must match {TENANT_ID_PATTERN} "
            "(lower-case letters, digits, '_' and '-', starting with a letter or digit, at most 63 characters)"
        )
    return tenant


def check_base_name(name: object) -> str:
    if not isinstance(name, str) or not _TENANT_RE.fullmatch(name):
        raise InvalidTenantError(f"invalid base model name {name!r}: it must match {TENANT_ID_PATTERN}")
    return name


def tenant_model_name(tenant: str) -> str:
    """``tenant.<id>``: both the registered model and the experiment of a tenant."""
    return TENANT_PREFIX + check_tenant_id(tenant)


def base_model_name(name: str) -> str:
    return BASE_PREFIX + check_base_name(name)


def tenant_of(model_name: str) -> str:
    return model_name[len(TENANT_PREFIX):] if model_name.startswith(TENANT_PREFIX) else model_name
