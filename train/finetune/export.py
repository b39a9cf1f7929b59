"""Self-describing model directories: weights + tokenizer + ``attune.json``, and loading them."""
from __future__ import annotations

import datetime as _dt
from pathlib import Path

from cluster import attune_version
from registry import InvalidModelDirError
from registry import read_manifest as registry_read_manifest
from train._errors import ConfigError
from train._manifest import write_manifest


def build_manifest(*, tenant: str, labels: list[str], base: str, method: str, data_hash: str,
                   metrics: dict, temperature: float, max_seq_len: int, **extra) -> dict:
    manifest = {
        "tenant": tenant,
        "labels": list(labels),
        "base": base,
        "method": method,
        "data_hash": data_hash,
        "metrics": metrics,
        "temperature": float(temperature),
        "max_seq_len": int(max_seq_len),
        "attune_version": attune_version(),
        "created_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    manifest.update(extra)
    return manifest


def export_model(model, tokenizer, out_dir: Path, manifest: dict) -> Path:
    """Write the model (full weights, or LoRA adapter + head), its tokenizer and the manifest."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out_dir))
    tokenizer.save_pretrained(str(out_dir))
    write_manifest(out_dir, manifest)
    return out_dir


def read_manifest(model_dir: Path) -> dict:
    """The export's ``attune.json``, checked by the registry's rules (``registry.read_manifest``)."""
    try:
        return registry_read_manifest(model_dir)
    except InvalidModelDirError as exc:
        raise ConfigError(str(exc)) from None
