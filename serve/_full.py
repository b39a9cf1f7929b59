"""A full fine-tuned tenant model: its own encoder and head, batched per model."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from serve._lora import encode


class FullModel:
    """A full Hugging Face checkpoint, loaded by the artifact contract's class (``registry.classifier_class``):
    attune's BERT and MPNet classifiers mean-pool token states over the attention mask before the head, as
    ``attune finetune`` trained them; others use their own classification head."""

    def __init__(self, model_dir: Path, device: str = "cpu"):
        from transformers import AutoTokenizer

        from registry import classifier_class

        self.model = classifier_class(model_dir).from_pretrained(str(model_dir)).to(device).eval()
        self.tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
        self.device = device
        self.bytes = sum(p.numel() * p.element_size() for p in self.model.parameters())

    def logits(self, texts: Sequence[str], max_seq_lens: Sequence[int], chunk: int = 64) -> list[np.ndarray]:
        out: list[np.ndarray] = []
        for i in range(0, len(texts), chunk):
            out += self._forward(texts[i:i + chunk], max_seq_lens[i:i + chunk])
        return out

    def _forward(self, texts, max_seq_lens) -> list[np.ndarray]:
        import torch

        input_ids, mask = encode(self.tokenizer, texts, max_seq_lens)
        input_ids, mask = input_ids.to(self.device), mask.to(self.device)
        with torch.inference_mode():
            logits = self.model(input_ids=input_ids, attention_mask=mask).logits
        return list(logits.float().cpu().numpy())
