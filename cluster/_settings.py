"""All ``ATTUNE_*`` environment settings, parsed and validated in one place.

Every setting has an environment variable; the CLI exposes a flag where one
makes sense and the flag wins over the variable. Two settings fall back to the variable their
tool's users already set (see ``FALLBACKS``): ``ATTUNE_MLFLOW_TRACKING_URI`` wins, otherwise
``MLFLOW_TRACKING_URI`` is used, otherwise the embedded SQLite store.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from cluster._errors import UsageError, flag_errors

# env var -> field name. Keep the names in one table so the README can list them.
ENV_VARS: dict[str, str] = {
    "ATTUNE_HOME": "home",
    "RAY_ADDRESS": "ray_address",
    "ATTUNE_RAY_DASHBOARD": "ray_dashboard",
    "ATTUNE_RAY_NUM_CPUS": "ray_num_cpus",
    "ATTUNE_S3_ENDPOINT_URL": "s3_endpoint_url",
    "ATTUNE_LOG_LEVEL": "log_level",
    "ATTUNE_BASE": "base",
    "ATTUNE_BASES_DIR": "bases_path",
    "ATTUNE_WORKERS": "num_workers",
    "ATTUNE_ZERO_STAGE": "zero_stage",
    "ATTUNE_MAX_FAILURES": "max_failures",
    "ATTUNE_PROGRESS_INTERVAL_S": "progress_interval_s",
    "ATTUNE_NEWSDESK_DATA": "newsdesk_data",
    "ATTUNE_MLFLOW_TRACKING_URI": "mlflow_tracking_uri",
    "ATTUNE_MLFLOW_ARTIFACT_ROOT": "mlflow_artifact_root",
    "ATTUNE_MLFLOW_BACKEND_STORE_URI": "mlflow_backend_store_uri",
    "ATTUNE_PROMOTION_MARGIN": "promotion_margin",
    "ATTUNE_PROMOTION_FLOOR": "promotion_floor",
    "ATTUNE_SERVE_REFRESH_S": "serve_refresh_s",
    "ATTUNE_SERVE_KEYS_REFRESH_S": "serve_keys_refresh_s",
    "ATTUNE_KEYS_DB_URL": "keys_db_url",
    "ATTUNE_MAX_DATA_FILE_MB": "max_data_file_mb",
    "ATTUNE_MAX_DATA_ROWS": "max_data_rows",
    "ATTUNE_MAX_LABELS": "max_labels",
    "ATTUNE_MAX_LABEL_CHARS": "max_label_chars",
    "ATTUNE_RELOCALIZE_MIN_NEW_LABELS": "relocalize_min_new_labels",
    "ATTUNE_RELOCALIZE_ON_DRIFT": "relocalize_on_drift",
    "ATTUNE_RELOCALIZE_SIMILARITY": "relocalize_similarity",
    "ATTUNE_DRIFT_MIN_ROWS": "drift_min_rows",
    "ATTUNE_DRIFT_ALPHA": "drift_alpha",
    "ATTUNE_DRIFT_TOLERANCE_FRACTION": "drift_tolerance_fraction",
}
# setting's env var -> the variable read when that one is unset or empty (the tool's own name for it)
FALLBACKS: dict[str, str] = {
    "ATTUNE_S3_ENDPOINT_URL": "AWS_ENDPOINT_URL",
    "ATTUNE_MLFLOW_TRACKING_URI": "MLFLOW_TRACKING_URI",
}


class SettingsError(UsageError):
    """A setting has a value attune cannot use."""


class Settings(BaseModel):
    """Process-wide settings. Build with :func:`get_settings`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    home: Path = Field(default=Path(".attune"), description="All embedded state lives here.")
    ray_address: Optional[str] = Field(default=None, description="Connect to this Ray cluster.")
    ray_dashboard: Optional[str] = Field(
        default=None, description="Ray dashboard (Jobs API) URL for `attune submit` and `attune jobs`, "
                                  "e.g. http://HEAD:8265")
    ray_num_cpus: Optional[int] = Field(default=None, ge=1, description="CPUs for the embedded Ray.")
    s3_endpoint_url: Optional[str] = Field(default=None, description="S3-compatible endpoint.")
    log_level: str = "INFO"
    base: str = "minilm"
    bases_path: Optional[Path] = Field(default=None, description="where `attune bases install` puts named bases "
                                                                 "(default $ATTUNE_HOME/bases)")
    num_workers: int = Field(default=2, ge=1)
    zero_stage: int = Field(default=2, ge=0, le=3)
    max_failures: int = Field(default=2, ge=0)
    progress_interval_s: float = Field(default=10.0, gt=0, le=10.0)
    newsdesk_data: Optional[Path] = Field(default=None, description="Twitter Financial News CSV folder.")
    mlflow_tracking_uri: Optional[str] = Field(
        default=None, description="MLflow tracking/registry URI: http(s)://server, postgresql://..., sqlite:///... "
                                  "(else MLFLOW_TRACKING_URI, else sqlite:///$ATTUNE_HOME/mlflow.db)")
    mlflow_artifact_root: Optional[str] = Field(
        default=None, description="artifact root for new experiments with a direct database URI: "
                                  "a folder or s3://bucket/prefix (default $ATTUNE_HOME/artifacts)")
    mlflow_backend_store_uri: Optional[str] = Field(
        default=None, description="the database behind an `mlflow server`, so delete-tenant can purge runs")
    promotion_margin: float = Field(default=0.0, ge=0, le=1,
                                    description="a challenger may trail the champion's macro-F1 by this much")
    promotion_floor: float = Field(default=0.5, ge=0, le=1,
                                   description="test macro-F1 a tenant's first version needs to be promoted")
    serve_refresh_s: float = Field(default=5.0, gt=0, le=10,
                                   description="serve: seconds a tenant's resolved champion is cached (at most 10, "
                                               "so an erased tenant leaves every replica within 10 s)")
    serve_keys_refresh_s: float = Field(default=5.0, gt=0, le=10,
                                        description="serve: seconds an API key check is cached (revocation delay)")
    keys_db_url: Optional[str] = Field(
        default=None, description="SQLAlchemy URL of the API key store (default: the registry's PostgreSQL, "
                                  "else sqlite:///$ATTUNE_HOME/keys.db)")
    max_data_file_mb: float = Field(default=100.0, gt=0,
                                    description="tenant data: largest file, in MB of 1,000,000 bytes")
    max_data_rows: int = Field(default=1_000_000, ge=1, description="tenant data: most data rows in a file")
    max_labels: int = Field(default=500, ge=2, description="tenant data: most distinct labels in a file")
    max_label_chars: int = Field(default=100, ge=1, description="tenant data: longest label, in characters")
    drift_min_rows: int = Field(default=30, ge=1, description="live quality: feedback rows scored by the champion "
                                "since its promotion before the drift test runs (registry._quality)")
    drift_alpha: float = Field(default=0.01, gt=0, lt=0.5, description="live quality: the drift test's level, a "
                               "probability (one-sided exact binomial test; drift when its p-value is below)")
    drift_tolerance_fraction: float = Field(default=0.05, ge=0, lt=1, description="live quality: accuracy, as a "
                                            "fraction (0.05 = 5 points), the champion may lose against its "
                                            "test_accuracy before it counts as drift")
    relocalize_min_new_labels: int = Field(
        default=20, ge=1, description="`attune relocalize --auto`: feedback texts received since the tenant's last "
                                      "relocalization (or its champion's promotion) that make it due")
    relocalize_on_drift: bool = Field(default=True, description="`attune relocalize --auto`: a drift flag on the "
                                                                "champion also makes the tenant due")
    relocalize_similarity: float = Field(
        default=0.4, gt=0, le=1, description="relocalize: cosine similarity (base encoder, mean pooling) at which an "
                                             "older row is taken to be contradicted by a correction")

    @field_validator("log_level")
    @classmethod
    def _level(cls, value: str) -> str:
        value = value.upper()
        if value not in {"DEBUG", "INFO", "WARNING", "ERROR"}:
            raise ValueError(f"must be DEBUG, INFO, WARNING or ERROR, got {value!r}")
        return value

    @property
    def bases_dir(self) -> Path:
        """``ATTUNE_BASES_DIR``, else ``$ATTUNE_HOME/bases``: the named bases ``attune bases install`` puts there."""
        return (self.bases_path or self.home / "bases").resolve()

    @property
    def models_dir(self) -> Path:
        return self.home / "models"

    @property
    def tracking_uri(self) -> str:
        """``ATTUNE_MLFLOW_TRACKING_URI``, else ``MLFLOW_TRACKING_URI`` (both read into ``mlflow_tracking_uri``
        by :func:`get_settings`), else the embedded SQLite store in ``home``."""
        return self.mlflow_tracking_uri or f"sqlite:///{(self.home / 'mlflow.db').resolve()}"

    @property
    def artifact_root(self) -> str:
        return self.mlflow_artifact_root or str((self.home / "artifacts").resolve())

    @property
    def ray_storage_dir(self) -> Path:
        return (self.home / "ray_results").resolve()


def get_settings(environ: Optional[dict[str, str]] = None, **overrides) -> Settings:
    """Read settings from the environment; ``overrides`` (CLI flags) win when not None."""
    environ = os.environ if environ is None else environ
    values: dict = {}
    for var, field in ENV_VARS.items():
        raw = environ.get(var) or environ.get(FALLBACKS.get(var, ""))  # an empty value counts as unset
        if raw:
            values[field] = raw
    values.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return Settings(**values)
    except ValidationError as exc:
        raise SettingsError(flag_errors(exc, "attune settings", {f: v for v, f in ENV_VARS.items()})) from None
