"""A full fine-tuned tenant model: its own encoder and head, batched per model."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from serve._artifacts import model_type
from serve._lora import encode, mean_pool


class FullModel:
    """A full Hugging Face checkpoint. BERT-family models mean-pool token states over the attention
    mask before the head, as ``attune finetune`` trained them; others use their own classification head."""

    def __init__(self, model_dir: Path, device: str = "cpu"):
        from transformers import AutoModelForSequenceClassification, AutoTokenizer, BertForSequenceClassification

        self.mean_pooled = model_type(model_dir) == "bert"
        cls = BertForSequenceClassification if self.mean_pooled else AutoModelForSequenceClassification
        self.model = cls.from_pretrained(str(model_dir)).to(device).eval()
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
            if not self.mean_pooled:
                logits = self.model(input_ids=input_ids, attention_mask=mask).logits
            else:
                hidden = self.model.bert(input_ids=input_ids, attention_mask=mask).last_hidden_state
                logits = self.model.classifier(mean_pool(hidden, mask))
        return list(logits.float().cpu().numpy())
