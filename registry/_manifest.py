"""The manifest every exported tenant model carries (``attune.json``): read and checked in one place.

``train`` writes it, ``serve`` and ``registry import`` read it; loading never guesses.
"""
from __future__ import annotations

import json
from pathlib import Path

from registry._errors import InvalidModelDirError

MANIFEST = "attune.json"
MANIFEST_KEYS = ("tenant", "labels", "base", "method", "data_hash", "metrics", "temperature",
                 "attune_version", "created_at")
METHODS = ("full", "lora")


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
