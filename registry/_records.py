"""What crosses into the registry (a finished run's record) and what comes out (a version's info)."""
from __future__ import annotations

import getpass
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, field_validator

from registry._names import (
    TAG_CHECKSUM,
    TAG_PROMOTED,
    TAG_PROMOTED_AT,
    TAG_REASON,
    TAG_TEMPERATURE,
    TAG_TEMPERATURE_SLOPE,
    tenant_of,
)

METRIC_PREFIX = "attune.metric."
FIGURES_DIR = "figures"  # a run's pictures (reliability diagram, confusion matrix, a search's curves)
RUN_TAG_MAX_CHARS = 8000  # MLflow cuts a run tag's value at this length (a version tag's at 100,000)
DIGEST_MAX_CHARS = 36  # MLflow's datasets table keeps a digest of at most 36 characters
_COMMIT = re.compile(r"[0-9a-f]{6,40}")


class Lineage(BaseModel):
    """Where a model came from. Logged as run tags and copied onto the registered version."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["finetune", "tune", "pretrain", "import"]
    tenant: Optional[str] = None
    base: str = Field(description="a models:/ URI with a version, a named preset, or a directory")
    method: Optional[str] = None
    data_uri: str
    data_hash: str
    split_counts: dict[str, int] = {}
    labels: list[str] = []
    temperature: float = 1.0
    temperature_slope: float = Field(default=0.0, description="per-row T = temperature * exp(slope * logit margin)")
    calibration: Optional[str] = Field(default=None, description="why the version uses its temperature: "
                                       "'fitted: ...' or 'kept T=1: ...' (train._calibration)")
    code_version: str
    attune_version: str

    def tags(self) -> dict[str, str]:
        tags = {
            "attune.kind": self.kind, "attune.base": self.base, "attune.data_uri": self.data_uri,
            "attune.data_hash": self.data_hash, "attune.code_version": self.code_version,
            "attune.version": self.attune_version, TAG_TEMPERATURE: repr(float(self.temperature)),
        }
        if self.temperature_slope:
            tags[TAG_TEMPERATURE_SLOPE] = repr(float(self.temperature_slope))
        if self.tenant:
            tags["attune.tenant"] = self.tenant
        if self.method:
            tags["attune.method"] = self.method
        if self.calibration:
            tags["attune.calibration"] = self.calibration
        if self.labels:
            tags["attune.labels"] = json.dumps(self.labels)
        for split, count in self.split_counts.items():
            tags[f"attune.rows.{split}"] = str(count)
        return tags

    def source_tags(self) -> dict[str, str]:
        """MLflow's standard tags: what ran (``attune finetune``), who, and the git commit when known."""
        tags = {"mlflow.source.type": "LOCAL", "mlflow.source.name": f"attune {self.kind}",
                "mlflow.user": _user()}
        if _COMMIT.fullmatch(self.code_version):
            tags["mlflow.source.git.commit"] = self.code_version
        return tags

    def dataset(self) -> Optional[dict]:
        """The training data as an MLflow dataset (the UI's Dataset column), or None (an import: the data is
        not at hand). ``digest`` is the data hash, cut to what MLflow stores; ``source`` the data's URI."""
        if self.kind == "import" or not self.data_uri or not self.data_hash:
            return None
        name = self.data_uri.rstrip("/").rsplit("/", 1)[-1] or self.data_uri
        source_type = self.data_uri.split("://", 1)[0] if "://" in self.data_uri else "local"
        profile = {"data_hash": self.data_hash, **({"rows": self.split_counts} if self.split_counts else {})}
        return {"name": name, "digest": self.data_hash[:DIGEST_MAX_CHARS], "source_type": source_type,
                "source": json.dumps({"uri": self.data_uri}), "profile": json.dumps(profile)}


class RunRecord(BaseModel):
    """A finished training run: parameters, final metrics, per-epoch history and lineage."""

    model_config = ConfigDict(extra="forbid")

    run_name: str
    params: dict[str, Any] = {}
    metrics: dict[str, float] = {}
    history: list[dict[str, float]] = []
    lineage: Lineage
    extra_tags: dict[str, str] = Field(default={}, description="run tags beyond the lineage (e.g. a tune trial's id)")
    run_id: Optional[str] = Field(default=None, description="the live run (``Registry.open_run``) this record "
                                  "completes; None: registration logs a run of its own")
    figures: list[Path] = Field(default=[], description=f"image files logged as the run's artifacts "
                                                        f"{FIGURES_DIR}/<file name>, which the MLflow UI shows")

    @field_validator("figures")
    @classmethod
    def _figures(cls, paths: list[Path]) -> list[Path]:
        return check_figures(paths)

    @property
    def tags(self) -> dict[str, str]:
        """The run's tags. A label list too long for a run tag (MLflow would cut it into invalid JSON)
        stays on the registered version (``version_tags``) and in the model's ``attune.json``; the run
        gets its count and where to find it."""
        tags = {**self.lineage.source_tags(), **self.lineage.tags(), **self.extra_tags}
        if len(tags.get("attune.labels", "")) > RUN_TAG_MAX_CHARS:
            tags["attune.labels"] = json.dumps({"count": len(self.lineage.labels), "too_long_for_a_run_tag": True,
                                                "see": "the registered version's attune.labels tag, or the "
                                                       "model's attune.json"})
        return tags

    @property
    def version_tags(self) -> dict[str, str]:
        tags = self.lineage.tags()
        tags.update({METRIC_PREFIX + k: repr(float(v)) for k, v in self.metrics.items()})
        return tags


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no user name in this container
        return "unknown"


def check_figures(paths) -> list[Path]:
    """``paths`` as a list, each an existing file with a name of its own (they share one folder)."""
    paths = [Path(p) for p in paths]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise ValueError(f"figure files not found: {missing[:5]}; draw them before logging the run")
    names = [p.name for p in paths]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ValueError(f"figures share the file names {twice}, and {FIGURES_DIR}/ keeps one file per name; "
                         "rename them")
    return paths


@dataclass
class VersionInfo:
    """One registered version, with its aliases and ``attune.*`` tags."""

    tenant: str
    version: str
    source: str
    run_id: Optional[str]
    created_at_ms: int
    aliases: list[str] = field(default_factory=list)
    tags: dict[str, str] = field(default_factory=dict)

    @property
    def metrics(self) -> dict[str, float]:
        return {k[len(METRIC_PREFIX):]: float(v) for k, v in self.tags.items() if k.startswith(METRIC_PREFIX)}

    @property
    def temperature(self) -> float:
        return float(self.tags.get(TAG_TEMPERATURE, "1.0"))

    @property
    def temperature_slope(self) -> float:
        return float(self.tags.get(TAG_TEMPERATURE_SLOPE, "0.0"))

    @property
    def labels(self) -> list[str]:
        return json.loads(self.tags.get("attune.labels", "[]"))

    @property
    def checksum(self) -> Optional[str]:
        return self.tags.get(TAG_CHECKSUM)

    def as_dict(self) -> dict:
        lineage = {k[len("attune."):]: v for k, v in self.tags.items()
                   if k.startswith("attune.") and not k.startswith(METRIC_PREFIX)
                   and k not in (TAG_PROMOTED, TAG_REASON, TAG_PROMOTED_AT)}
        promotion = None
        if TAG_PROMOTED in self.tags:
            promotion = {"promoted": self.tags[TAG_PROMOTED] == "true", "reason": self.tags.get(TAG_REASON, "")}
        return {"version": self.version, "aliases": sorted(self.aliases), "metrics": self.metrics,
                "temperature": self.temperature, "temperature_slope": self.temperature_slope,
                "labels": self.labels, "run_id": self.run_id,
                "source": self.source, "created_at_ms": self.created_at_ms,
                "promoted_at": self.tags.get(TAG_PROMOTED_AT), "promotion": promotion, "lineage": lineage}


def version_info(mv) -> VersionInfo:
    return VersionInfo(tenant=tenant_of(mv.name), version=str(mv.version), source=mv.source, run_id=mv.run_id,
                       created_at_ms=int(mv.creation_timestamp or 0), aliases=list(mv.aliases or []),
                       tags=dict(mv.tags or {}))
