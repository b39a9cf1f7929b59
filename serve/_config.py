"""The serve config file (YAML), validated by pydantic; every key is optional.

    attune serve up --config serve/configs/example.yaml

Cross-field checks name the YAML key they concern, and every problem is reported at once.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from registry import DriftRule
from serve._errors import ServeConfigError

MIB = 1024 * 1024


class Autoscaling(BaseModel):
    """Ray Serve autoscaling of the endpoint's replicas."""

    model_config = ConfigDict(extra="forbid")

    min_replicas: int = Field(default=1, ge=0)
    max_replicas: int = Field(default=2, ge=1)
    target_ongoing_requests: float = Field(default=8.0, gt=0, description="requests in flight per replica that "
                                           "Serve aims for; with batching a replica serves many at once")
    upscale_delay_s: Optional[float] = Field(default=None, ge=0, description="Serve's default when unset (30 s)")
    downscale_delay_s: Optional[float] = Field(default=None, ge=0, description="Serve's default when unset (600 s)")
    look_back_period_s: Optional[float] = Field(default=None, gt=0, description="the window Serve averages load "
                                                "over; Serve's default when unset (30 s)")

    @model_validator(mode="after")
    def _bounds(self) -> Autoscaling:
        if self.min_replicas > self.max_replicas:
            raise ValueError(f"min_replicas ({self.min_replicas}) must not exceed max_replicas "
                             f"({self.max_replicas})")
        return self

    def ray_options(self) -> dict:
        return self.model_dump(exclude_none=True)


class ModelConfig(BaseModel):
    """The endpoint's replicas (YAML key ``model``): each serves HTTP and holds tenant models."""

    model_config = ConfigDict(extra="forbid")

    adapter_cache_mib: float = Field(default=1024, gt=0, description="memory for LoRA adapters per replica; the "
                                   "least recently used idle adapter makes room for a new one")
    max_models_per_replica: int = Field(default=8, ge=1, description="full-model tenants per replica (LRU)")
    cross_tenant_batching: bool = Field(default=True, description="LoRA requests of different tenants on one base "
                                        "share a forward pass; false batches each tenant on its own")
    max_batch_size: int = Field(default=16, ge=1, description="requests batched together")
    batch_wait_timeout_s: float = Field(
        default=0.0, ge=0, le=1.0, description="a fixed wait for a batch to fill, even for a lone request; 0: none")
    batch_gather_s: float = Field(default=0.01, ge=0, le=1.0, description="how long a batch waits for the "
                                  "requests the replica is already handling; a lone request never waits")
    max_ongoing_requests: int = Field(default=64, ge=1, description="requests a replica takes at once")
    max_queued_requests: int = Field(default=256, ge=1, description="requests waiting for a replica, per HTTP "
                                     "proxy; beyond, 429 with Retry-After")
    queue_full_retry_after_s: float = Field(default=1.0, ge=0, description="Retry-After of a 429")
    num_cpus: float = Field(default=1.0, ge=0)
    num_gpus: float = Field(default=0.0, ge=0)
    autoscaling: Autoscaling = Autoscaling()
    load_timeout_s: float = Field(default=30.0, gt=0, description="a model load that takes longer answers 503")
    load_retry_initial_s: float = Field(default=1.0, gt=0, description="first back-off after a failed load")
    load_retry_max_s: float = Field(default=30.0, gt=0, description="longest back-off between load attempts")
    max_seq_len: Optional[int] = Field(default=None, ge=8, description="overrides the manifest's max_seq_len")

    @model_validator(mode="after")
    def _consistent(self) -> ModelConfig:
        problems = []
        if self.max_ongoing_requests < self.max_batch_size:
            problems.append(f"model.max_ongoing_requests ({self.max_ongoing_requests}) must be at least "
                            f"model.max_batch_size ({self.max_batch_size}) or batches never fill")
        if self.load_retry_initial_s > self.load_retry_max_s:
            problems.append(f"model.load_retry_initial_s ({self.load_retry_initial_s}) must not exceed "
                            f"model.load_retry_max_s ({self.load_retry_max_s})")
        if problems:
            raise ValueError("; ".join(problems))
        return self


class IngressConfig(BaseModel):
    """What the endpoint accepts (YAML key ``ingress``): request limits."""

    model_config = ConfigDict(extra="forbid")

    max_body_bytes: int = Field(default=MIB, ge=1024, description="larger bodies get 413")
    max_texts: int = Field(default=64, ge=1, description="more texts per request get 422")
    max_chars: int = Field(default=10_000, ge=1, description="a longer text gets 422")


class ServeConfig(BaseModel):
    """Everything ``attune serve up --config FILE`` accepts."""

    model_config = ConfigDict(extra="forbid")

    model: ModelConfig = ModelConfig()
    ingress: IngressConfig = IngressConfig()
    cache_dir: Optional[str] = Field(
        default=None, description="where replicas download models before loading them (default: a temp folder)")
    access_log: bool = Field(
        default=False, description="Serve's access log line per request (proxy and replicas); costs CPU per request")


def parse_config(data: Optional[dict], source: str = "serve config") -> ServeConfig:
    """Validate a mapping; every problem is reported in one error naming the YAML keys."""
    try:
        return ServeConfig(**(data or {}))
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            key = ".".join(str(part) for part in err["loc"]) or "(top level)"
            message = err["msg"].removeprefix("Value error, ")
            problems.append(message if message.startswith(key) else f"{key}: {message}")
        raise ServeConfigError(f"{source} is invalid: " + "; ".join(problems)) from None


def load_config(path: Optional[Path]) -> ServeConfig:
    """Read ``--config FILE`` (YAML); no file means every default."""
    if path is None:
        return ServeConfig()
    import yaml

    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ServeConfigError(f"--config {path}: no such file") from None
    except yaml.YAMLError as exc:
        raise ServeConfigError(f"--config {path} is not valid YAML: {exc}") from None
    if data is not None and not isinstance(data, dict):
        raise ServeConfigError(f"--config {path} must hold a mapping with the keys model, ingress, cache_dir, "
                               "access_log")
    return parse_config(data, f"--config {path}")


class AppSpec(BaseModel):
    """What every replica needs, resolved by the driver and passed to the deployments' constructors."""

    model_config = ConfigDict(extra="forbid")

    config: ServeConfig = ServeConfig()
    tracking_uri: str
    artifact_root: Optional[str] = None
    keys_url: Optional[str] = None
    feedback_url: Optional[str] = Field(default=None, description="the feedback store's SQLAlchemy URL; unset: "
                                        "keys_url's database")
    refresh_s: float = Field(default=5.0, gt=0, le=10, description="ATTUNE_SERVE_REFRESH_S: champion cache TTL")
    keys_refresh_s: float = Field(default=5.0, gt=0, le=10, description="ATTUNE_SERVE_KEYS_REFRESH_S")
    insecure_no_auth: bool = False
    drift: DriftRule = Field(default=DriftRule(), description="ATTUNE_DRIFT_*: the live quality's drift test")

    @classmethod
    def from_settings(cls, settings, config: Optional[ServeConfig] = None, *,
                      insecure_no_auth: bool = False) -> AppSpec:
        from serve._keys import keys_url

        return cls(config=config or ServeConfig(), tracking_uri=settings.tracking_uri,
                   artifact_root=settings.artifact_root, keys_url=None if insecure_no_auth else keys_url(settings),
                   feedback_url=keys_url(settings),
                   refresh_s=settings.serve_refresh_s, keys_refresh_s=settings.serve_keys_refresh_s,
                   insecure_no_auth=insecure_no_auth, drift=DriftRule.from_settings(settings))
