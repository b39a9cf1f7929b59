"""The manifest every exported tenant model carries (``attune.json``): its keys, written and read in one place.

``train`` builds and writes it (``build_manifest``, ``write_manifest``), ``serve``, ``registry import``
and the MLflow pyfunc read it (``read_manifest``); loading never guesses. The rest of the model
directory's contract is ``registry._artifact``.
"""
from __future__ import annotations

import datetime as _dt
import json
from pathlib import Path

from cluster import attune_version
from registry._errors import InvalidModelDirError

MANIFEST = "attune.json"
MANIFEST_KEYS = ("tenant", "labels", "base", "method", "data_hash", "metrics", "temperature",
                 "attune_version", "created_at")
METHODS = ("full", "lora")
DEFAULT_MAX_SEQ_LEN = 128  # an export without ``max_seq_len`` (older attune) was trained at this length


def build_manifest(*, tenant: str, labels: list[str], base: str, method: str, data_hash: str,
                   metrics: dict, temperature: float, max_seq_len: int, temperature_slope: float = 0.0,
                   **extra) -> dict:
    """The manifest of a tenant model: every key of :data:`MANIFEST_KEYS`, ``max_seq_len``,
    ``temperature_slope`` and ``extra`` (``split_counts``, ``history``, ``params``)."""
    manifest = {
        "tenant": tenant,
        "labels": list(labels),
        "base": base,
        "method": method,
        "data_hash": data_hash,
        "metrics": metrics,
        "temperature": float(temperature),
        "temperature_slope": float(temperature_slope),
        "max_seq_len": int(max_seq_len),
        "attune_version": attune_version(),
        "created_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    manifest.update(extra)
    return manifest


def write_manifest(directory: Path, manifest: dict) -> Path:
    """Write ``manifest`` as ``directory/attune.json`` (a tenant model's, or a pretrained base's)."""
    path = Path(directory) / MANIFEST
    path.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return path


def read_manifest(model_dir: Path) -> dict:
    """The manifest of an exported tenant model; :class:`InvalidModelDirError` naming what is wrong."""
    path = Path(model_dir) / MANIFEST
    if not path.is_file():
        raise InvalidModelDirError(f"{model_dir} is not an attune model directory: {MANIFEST} is missing. "
                                   "Pass the model_dir printed by `attune finetune`.")
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise InvalidModelDirError(f"{path} cannot be read as JSON: {exc}") from None
    missing = [k for k in MANIFEST_KEYS if k not in manifest]
    if missing:
        raise InvalidModelDirError(f"{path} lacks the keys {missing}; re-export the model with this attune version")
    if manifest["method"] not in METHODS:
        raise InvalidModelDirError(f"{path}: unknown method {manifest['method']!r}; expected one of {METHODS}")
    return manifest


def max_seq_len(manifest: dict) -> int:
    """The length, in tokens, the model was trained at; longer texts are truncated to it."""
    return int(manifest.get("max_seq_len", DEFAULT_MAX_SEQ_LEN))


def temperature_slope(manifest: dict) -> float:
    """How the model's temperature grows or shrinks with a row's logit margin (``registry.softmax``);
    0 (plain temperature scaling) for an export that does not say, as every one before it did."""
    return float(manifest.get("temperature_slope", 0.0))
