"""Self-describing model directories: weights + tokenizer + ``attune.json``, and loading them."""
from __future__ import annotations

import datetime as _dt
import json
from importlib import metadata
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from train._errors import TrainError
from train._metrics import softmax

MANIFEST = "attune.json"
MANIFEST_KEYS = ("tenant", "labels", "base", "method", "data_hash", "metrics", "temperature",
                 "attune_version", "created_at")


def attune_version() -> str:
    try:
        return metadata.version("attune")
    except metadata.PackageNotFoundError:  # running from a source tree without install
        return "0+unknown"


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
    (out_dir / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
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


class Predictor:
    """Loads an exported model directory and returns calibrated label scores."""

    def __init__(self, model_dir: Path, base_dir: Optional[Path] = None, temperature: Optional[float] = None):
        """``temperature`` overrides the manifest's (the registry stores one per version)."""
        from train._model import load_exported_classifier, load_tokenizer

        self.model_dir = Path(model_dir)
        self.manifest = read_manifest(self.model_dir)
        self.labels: list[str] = self.manifest["labels"]
        self.temperature = float(self.manifest["temperature"] if temperature is None else temperature)
        self.max_seq_len = int(self.manifest.get("max_seq_len", 128))
        self.tokenizer = load_tokenizer(self.model_dir)
        self.model = load_exported_classifier(self.model_dir, self.manifest, base_dir)

    def logits(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        import torch

        out = []
        with torch.no_grad():
            for i in range(0, len(texts), batch_size):
                enc = self.tokenizer(list(texts[i:i + batch_size]), truncation=True, padding=True,
                                     max_length=self.max_seq_len, return_tensors="pt")
                out.append(self.model(**enc).logits.float().numpy())
        return np.concatenate(out) if out else np.zeros((0, len(self.labels)))

    def predict(self, texts: Sequence[str]) -> list[dict]:
        probs = softmax(self.logits(texts), self.temperature)
        return [
            {"label": self.labels[int(row.argmax())],
             "scores": {label: round(float(p), 6) for label, p in zip(self.labels, row)}}
            for row in probs
        ]
