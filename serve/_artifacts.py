"""What serving reads from an exported model directory (``serve`` never imports ``train``).

The directory's format is the registry's artifact contract (``registry._artifact``): ``attune.json``
(labels, base, method, max_seq_len), a tokenizer, and either a full Hugging Face checkpoint
(``method: full``) or a PEFT LoRA adapter with the classification head (``method: lora``). This
module is serving's door to it: the same scores (``softmax``, ``scores``) and parsers, with a bad
directory reported as this tenant's :class:`ModelUnavailableError` (503).
"""
from __future__ import annotations

from pathlib import Path

from registry import InvalidModelDirError, LoraAdapter, model_type, scores, softmax
from registry import read_lora_adapter as registry_read_lora_adapter
from registry import read_manifest as registry_read_manifest
from registry import resolve_base as registry_resolve_base
from serve._errors import ModelUnavailableError

__all__ = ["LoraAdapter", "model_type", "read_lora_adapter", "read_manifest", "resolve_base", "scores", "softmax"]


def read_manifest(model_dir: Path) -> dict:
    """The export's ``attune.json`` by the registry's rules; a bad one is this tenant's 503."""
    try:
        return registry_read_manifest(model_dir)
    except InvalidModelDirError as exc:
        raise ModelUnavailableError(str(exc)) from None


def resolve_base(base: str) -> Path:
    """A LoRA tenant's base on this replica: ``minilm`` (packaged), an installed named base (``mpnet``) or a
    local Hugging Face model directory."""
    if base.startswith("models:/"):  # a registered base: replicas do not fetch bases (yet)
        raise ModelUnavailableError(f"the LoRA base {base!r} is not available on this replica: it is a registered "
                                    "base; serve this tenant as a full fine-tune, or from a base directory")
    try:
        return registry_resolve_base(base)
    except InvalidModelDirError as exc:
        raise ModelUnavailableError(f"the LoRA base {base!r} is not available on this replica: {exc}") from None


def read_lora_adapter(model_dir: Path) -> LoraAdapter:
    """Parse ``adapter_config.json`` and ``adapter_model.safetensors`` of a ``method: lora`` export."""
    try:
        return registry_read_lora_adapter(model_dir)
    except InvalidModelDirError as exc:
        raise ModelUnavailableError(str(exc)) from None
