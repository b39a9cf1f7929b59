"""Predict with an exported tenant model: calibrated label scores for texts (the registry's
``ExportedClassifier``, which the MLflow pyfunc of every version uses too)."""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from train._base import resolve_base
from train.finetune.export import read_manifest


class Predictor:
    """Loads an exported model directory and returns calibrated label scores."""

    def __init__(self, model_dir: Path, base_dir: Optional[Path] = None, temperature: Optional[float] = None,
                 temperature_slope: Optional[float] = None):
        """``temperature`` and ``temperature_slope`` override the manifest's (the registry stores them per
        version)."""
        from registry import ExportedClassifier
        from registry import temperature_slope as manifest_slope

        self.model_dir = Path(model_dir)
        self.manifest = read_manifest(self.model_dir)
        if self.manifest["method"] == "lora" and base_dir is None:
            base_dir = resolve_base(self.manifest["base"])  # a missing base is train's BaseModelError
        self.classifier = ExportedClassifier(self.model_dir, base_dir, manifest=self.manifest)
        self.labels: list[str] = self.classifier.labels
        self.temperature = float(self.manifest["temperature"] if temperature is None else temperature)
        slope = manifest_slope(self.manifest) if temperature_slope is None else temperature_slope
        self.temperature_slope = float(slope)
        self.max_seq_len = self.classifier.max_seq_len
        self.tokenizer = self.classifier.tokenizer
        self.model = self.classifier.model

    def logits(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        return self.classifier.logits(texts, batch_size)

    def predict(self, texts: Sequence[str]) -> list[dict]:
        return self.classifier.predict(texts, self.temperature, self.temperature_slope)
