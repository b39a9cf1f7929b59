"""Self-describing model directories: weights + tokenizer + ``attune.json``, and loading them.

The directory's format is the registry's artifact contract (``registry._artifact``); this module is
training's door to it.
"""
from __future__ import annotations

from pathlib import Path

from registry import InvalidModelDirError, build_manifest, save_export
from registry import read_manifest as registry_read_manifest
from train._errors import ConfigError

__all__ = ["build_manifest", "export_model", "read_manifest"]


def export_model(model, tokenizer, out_dir: Path, manifest: dict) -> Path:
    """Write the model (full weights, or LoRA adapter + head), its tokenizer and the manifest."""
    return save_export(model, tokenizer, out_dir, manifest)


def read_manifest(model_dir: Path) -> dict:
    """The export's ``attune.json``, checked by the registry's rules (``registry.read_manifest``)."""
    try:
        return registry_read_manifest(model_dir)
    except InvalidModelDirError as exc:
        raise ConfigError(str(exc)) from None
