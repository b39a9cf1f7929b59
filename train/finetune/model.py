"""The classifier: a (LoRA) sequence classifier with a fresh head over a base encoder.

Its class (mean-pooled BERT for the BERT family), and writing and loading an export, are the
registry's artifact contract (``registry._artifact``, ``registry._classifier``).
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from train._errors import BaseModelError


def build_classifier(base_dir: Path, labels: list[str], *, method: str = "full", seed: int = 0,
                     lora_rank: int = 16, lora_alpha: int = 32, lora_dropout: float = 0.1,
                     lora_targets: Optional[list[str]] = None):
    """A sequence classifier over ``base_dir`` with a fresh head for ``labels``, drawn from ``seed``.

    ``method="lora"`` wraps the encoder in PEFT LoRA adapters on the attention
    projections; only the adapters and the classification head are trainable.
    """
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # the "newly initialized head" warning is expected here
    model, info = classifier_class(base_dir).from_pretrained(
        str(base_dir),
        num_labels=len(labels),
        id2label=dict(enumerate(labels)),
        label2id={label: i for i, label in enumerate(labels)},
        output_loading_info=True,
    )
    draw_new_weights(model, info["missing_keys"], seed)
    if method == "lora":
        model = _wrap_lora(model, lora_rank, lora_alpha, lora_dropout, lora_targets)
    return model


def classifier_head(model) -> list:
    """The trainable parameters of the classification head (under LoRA, PEFT's trainable copy of it)."""
    return [p for name, p in model.named_parameters() if "classifier" in name.split(".") and p.requires_grad]


def draw_new_weights(model, missing_keys, seed: int) -> list[str]:
    """Redraw the weight matrices ``base_dir`` did not have from a generator seeded with ``seed`` alone.

    Hugging Face draws them from the global random stream, in module order, so the head a
    seed gives would depend on what else the checkpoint lacks: an ``attune pretrain`` export
    has no [CLS] pooler, and drawing one first gave its classifier a different head than
    MiniLM's under the same seed. The head is drawn first, so it depends only on the seed and
    its shape: with one ``seed``, fine-tunes from different bases start from the same head.
    Returns the redrawn names, in drawing order.
    """
    import torch

    params = dict(model.named_parameters())
    names = [n for n in missing_keys if n in params and params[n].ndim >= 2]
    names.sort(key=lambda n: (not n.split(".")[0].endswith("classifier"), n))  # head first
    generator = torch.Generator().manual_seed(seed)
    std = getattr(model.config, "initializer_range", 0.02)
    with torch.no_grad():
        for name in names:
            params[name].normal_(0.0, std, generator=generator)
    return names


def classifier_class(model_dir: Path):
    """Mean-pooled BERT for BERT-family encoders (how all-MiniLM-L6-v2 was trained), else HF's Auto class
    (the artifact contract's choice: ``registry.classifier_class``)."""
    from registry import classifier_class as contract_class

    return contract_class(model_dir)


def lora_target_modules(model) -> list[str]:
    """Attention projection names present in the model (BERT: query/key/value; MPNet: q/k/v)."""
    names = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    for candidates in (["query", "key", "value"], ["q_proj", "k_proj", "v_proj"], ["q_lin", "k_lin", "v_lin"],
                       ["q", "k", "v"]):  # BERT, LLaMA-style, DistilBERT, MPNet
        if all(c in names for c in candidates):
            return candidates
    raise BaseModelError("cannot find attention projections for LoRA in this base model; use --method full")


def _wrap_lora(model, rank: int, alpha: int, dropout: float, targets: Optional[list[str]] = None):
    from peft import LoraConfig, TaskType, get_peft_model

    if targets:
        names = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
        unknown = [t for t in targets if t not in names]
        if unknown:
            raise BaseModelError(f"--lora-targets {','.join(unknown)}: no such module in this base; its linear "
                                 f"layers include {', '.join(sorted(_linear_names(model))[:12])}")

    config = LoraConfig(
        task_type=TaskType.SEQ_CLS,
        r=rank,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=targets or lora_target_modules(model),
    )
    return get_peft_model(model, config)


def _linear_names(model) -> set[str]:
    from torch import nn

    return {name.rsplit(".", 1)[-1] for name, module in model.named_modules() if isinstance(module, nn.Linear)}
