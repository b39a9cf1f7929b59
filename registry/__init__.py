"""The model registry on MLflow: tenant versions, aliases, lineage, promotion, calibration, the UI.

Only this package imports ``mlflow`` (lazily). Everyone else goes through :class:`Registry`.
It also defines the one artifact contract, the model directory that train writes and serve loads
(``registry._artifact``; its PyTorch half, ``registry._classifier``, is imported on first use), and
every registered tenant version is an MLflow Model (``registry._pyfunc``).
"""
from cluster import lazy_exports
from registry._artifact import (
    MEAN_POOL_MODEL_TYPE,
    POOLING_CONFIG,
    LoraAdapter,
    check_model_dir,
    is_mean_pooled,
    mean_pool,
    mean_pool_family,
    model_type,
    read_lora_adapter,
    resolve_base,
    scores,
    softmax,
    temperature_text,
)
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
from registry._live import LiveRun
from registry._manifest import (
    MANIFEST,
    MANIFEST_KEYS,
    build_manifest,
    max_seq_len,
    read_manifest,
    temperature_slope,
    write_manifest,
)
from registry._names import (
    BASE_ALIAS,
    CHALLENGER,
    CHAMPION,
    TAG_ERROR,
    TENANT_ID_PATTERN,
    check_tenant_id,
    parse_base_uri,
    run_name,
    tenant_model_name,
)
from registry._quality import DriftRule, became_champion_at, champion_quality, champion_since, live_quality
from registry._records import Lineage, RunRecord, VersionInfo
from registry._registry import Registry
from registry._relocalize_log import RelocalizeLog, erase_relocalize_log
from registry._store import dir_checksum, erase_rows

_LAZY = {name: "registry._classifier" for name in ("ExportedClassifier", "MeanPoolBertForSequenceClassification",
                                                    "classifier_class", "load_classifier", "save_export")}

__all__ = [
    "Registry",
    "RunRecord",
    "LiveRun",
    "run_name",
    "TAG_ERROR",
    "BASE_ALIAS",
    "parse_base_uri",
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
    "build_manifest",
    "write_manifest",
    "max_seq_len",
    "temperature_slope",
    # the artifact contract (registry._artifact; the PyTorch half, registry._classifier, loads lazily)
    "check_model_dir",
    "softmax",
    "temperature_text",
    "scores",
    "mean_pool",
    "model_type",
    "is_mean_pooled",
    "mean_pool_family",
    "resolve_base",
    "MEAN_POOL_MODEL_TYPE",
    "POOLING_CONFIG",
    "LoraAdapter",
    "read_lora_adapter",
    *_LAZY,
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
    "DriftRule",
    "live_quality",
    "champion_quality",
    "champion_since",
    "became_champion_at",
    "erase_rows",
    "dir_checksum",
    "RelocalizeLog",
    "erase_relocalize_log",
]
__getattr__, __dir__ = lazy_exports(__name__, _LAZY, globals())
