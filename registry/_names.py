"""Names in the registry: tenant ids, registered-model and experiment names, aliases, tag keys."""
from __future__ import annotations

import datetime as _dt
import re
from typing import Optional

from registry._errors import InvalidTenantError

TENANT_ID_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,62}$"
_TENANT_RE = re.compile(TENANT_ID_PATTERN)
TENANT_PREFIX = "tenant."
BASE_PREFIX = "base."
CHAMPION = "champion"
CHALLENGER = "challenger"
BASE_ALIAS = "newest"  # every registered base version takes it (MLflow reserves "latest" for its own use)
MODELS_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:@(?P<alias>[A-Za-z0-9_-]+)|/(?P<version>\d+|latest))$")

# version / run tag keys (the MLflow UI shows them as they are)
TAG_CHECKSUM = "attune.checksum"
TAG_TEMPERATURE = "attune.temperature"
TAG_TEMPERATURE_SLOPE = "attune.temperature_slope"  # set only when not 0 (train._calibration)
TAG_PROMOTED = "attune.promotion.promoted"
TAG_REASON = "attune.promotion.reason"
TAG_PROMOTED_AT = "attune.promoted_at"
TAG_CHAMPION_HISTORY = "attune.champion_history"  # on the registered model: JSON list of versions
TAG_ERROR = "attune.error"  # on a run that ended FAILED or KILLED: what stopped it


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
        raise InvalidTenantError(f"invalid base model name {name!r}: it must match {TENANT_ID_PATTERN} (the "
                                 "`attune pretrain --name`)")
    return name


def tenant_model_name(tenant: str) -> str:
    """``tenant.<id>``: both the registered model and the experiment of a tenant."""
    return TENANT_PREFIX + check_tenant_id(tenant)


def base_model_name(name: str) -> str:
    return BASE_PREFIX + check_base_name(name)


def base_uri(name: str, version: str) -> str:
    """``models:/base.<name>/<version>``: a registered base, pinned to one version (a tenant's lineage)."""
    return f"models:/{base_model_name(name)}/{version}"


def parse_base_uri(uri: str) -> tuple[str, str]:
    """``models:/base.<name>@<alias>``, ``/<version>`` or ``/latest`` -> (name, alias or version)."""
    match = MODELS_URI.fullmatch(uri)
    if match is None or not match["name"].startswith(BASE_PREFIX):
        raise InvalidTenantError(
            f"{uri!r} is not a registered base: write models:/base.<name>@<alias> (e.g. @{BASE_ALIAS}) or "
            "models:/base.<name>/<version>; `attune pretrain --name NAME` registers base.NAME")
    return check_base_name(match["name"][len(BASE_PREFIX):]), match["alias"] or match["version"]


def run_name(kind: str, subject: str, detail: Optional[str] = None, when: Optional[_dt.datetime] = None) -> str:
    """A run's name says what it is: ``finetune-john-lora-20261207-141500`` (kind, tenant or base, method
    or preset, local start time). ``Registry.open_run`` appends ``-2``, ``-3`` if the experiment has it."""
    when = when or _dt.datetime.now()
    return "-".join(part for part in (kind, subject, detail, f"{when:%Y%m%d-%H%M%S}") if part)


def tenant_of(model_name: str) -> str:
    return model_name[len(TENANT_PREFIX):] if model_name.startswith(TENANT_PREFIX) else model_name
