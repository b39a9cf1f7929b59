"""Predict with an exported tenant model: calibrated label scores for texts."""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from train._metrics import softmax
from train.finetune.export import read_manifest


class Predictor:
    """Loads an exported model directory and returns calibrated label scores."""

    def __init__(self, model_dir: Path, base_dir: Optional[Path] = None, temperature: Optional[float] = None):
        """``temperature`` overrides the manifest's (the registry stores one per version)."""
        from train._base import load_tokenizer
        from train.finetune.model import load_exported_classifier

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
