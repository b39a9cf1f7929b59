"""Self-describing model directories: weights + tokenizer + ``attune.json``, and loading them."""
from __future__ import annotations

import datetime as _dt
import json
from pathlib import Path

from cluster import attune_version
from train._errors import TrainError
from train._manifest import MANIFEST, write_manifest

MANIFEST_KEYS = ("tenant", "labels", "base", "method", "data_hash", "metrics", "temperature",
                 "attune_version", "created_at")


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
    path = Path(model_dir) / MANIFEST
    if not path.is_file():
        raise TrainError(
            f"{model_dir} is not an attune model directory: {MANIFEST} is missing. "
            "Pass the model_dir printed by `attune finetune`."
        )
    manifest = json.loads(path.read_text())
    missing = [k for k in MANIFEST_KEYS if k not in manifest]
    if missing:
        raise TrainError(f"{path} lacks the keys {missing}; re-export the model with this attune version")
    return manifest
