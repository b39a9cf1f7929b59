"""Helpers for serve tests: tiny exported models that always answer one label, registered without training."""
from __future__ import annotations

import math
from pathlib import Path

from registry import Registry
from tests.registry_helpers import record

LABELS = ["negative", "positive"]
TEMPERATURE = 1.7  # the temperature tests.registry_helpers.record() stores with every version
LOGIT = 5.0


def calibrated_top_score(logit: float = LOGIT, temperature: float = TEMPERATURE) -> float:
    """The winning score of a constant head (logits +-logit) after temperature scaling."""
    return 1.0 / (1.0 + math.exp(-2 * logit / temperature))


def constant_export(tiny_base: Path, directory: Path, answer: str, method: str = "full") -> Path:
    """An ``attune finetune``-shaped export over ``tiny_base`` whose head always answers ``answer``."""
    import torch
    from safetensors.torch import load_file, save_file

    from train._export import build_manifest, export_model
    from train._model import build_classifier, load_tokenizer

    bias = torch.tensor([LOGIT if label == answer else -LOGIT for label in LABELS])
    model = build_classifier(tiny_base, LABELS, method=method)
    if method == "full":
        with torch.no_grad():
            model.classifier.weight.zero_()
            model.classifier.bias.copy_(bias)
    manifest = build_manifest(tenant="t", labels=LABELS, base=str(tiny_base), method=method, data_hash="x",
                              metrics={}, temperature=1.0, max_seq_len=16)
    export_model(model, load_tokenizer(tiny_base), directory, manifest)
    if method == "lora":  # PEFT saved the head beside the adapter: make it constant too
        path = directory / "adapter_model.safetensors"
        weights = load_file(str(path))
        weights["base_model.model.classifier.weight"] = torch.zeros_like(weights["base_model.model.classifier.weight"])
        weights["base_model.model.classifier.bias"] = bias.clone()
        save_file(weights, str(path))
    return directory


def register(reg: Registry, tenant: str, model_dir: Path, promote: bool = True) -> str:
    """Register ``model_dir`` as the tenant's next version (and make it champion); returns the version."""
    version = reg.register_candidate(tenant, model_dir, record(tenant)).version
    if promote:
        reg.promote(tenant, version)
    return version
