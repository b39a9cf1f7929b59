"""The model registry on MLflow: tenant versions, aliases, lineage, promotion, calibration, the UI.

Only this package imports ``mlflow`` (lazily). Everyone else goes through :class:`Registry`.
"""
from registry._erase import erase_registry_data
from registry._errors import (
    ArtifactIntegrityError,
    InvalidModelDirError,
    InvalidTenantError,
    NoChampionError,
    NothingToRollBackError,
    RegistryError,
    RegistryUnavailableError,
    TenantNotFoundError,
    VersionNotFoundError,
)
from registry._feedback import (
    PREDICTION_ID_PATTERN,
    Feedback,
    FeedbackStore,
    FeedbackStoreError,
    database_url,
    erase_feedback,
    new_prediction_id,
    prediction_version,
)
from registry._manifest import MANIFEST, MANIFEST_KEYS, read_manifest
from registry._names import CHALLENGER, CHAMPION, TENANT_ID_PATTERN, check_tenant_id, tenant_model_name
from registry._records import Lineage, RunRecord, VersionInfo
from registry._registry import Registry
from registry._store import erase_rows

__all__ = [
    "Registry",
    "RunRecord",
    "Lineage",
    "VersionInfo",
    "RegistryError",
    "RegistryUnavailableError",
    "InvalidTenantError",
    "TenantNotFoundError",
    "NoChampionError",
    "VersionNotFoundError",
    "NothingToRollBackError",
    "ArtifactIntegrityError",
    "InvalidModelDirError",
    "MANIFEST",
    "MANIFEST_KEYS",
    "read_manifest",
    "CHAMPION",
    "CHALLENGER",
    "TENANT_ID_PATTERN",
    "check_tenant_id",
    "tenant_model_name",
    "erase_registry_data",
    "Feedback",
    "FeedbackStore",
    "FeedbackStoreError",
    "PREDICTION_ID_PATTERN",
    "database_url",
    "new_prediction_id",
    "prediction_version",
    "erase_feedback",
    "erase_rows",
]
