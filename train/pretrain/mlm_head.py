"""The masked-LM loss, computing vocabulary logits only where a token is predicted.

About 15% of positions carry a label, so projecting every position onto the vocabulary
wastes most of the head's work; for MiniLM (30,522 x 384) the head is half of all the
compute. BERT-family models take this path; other encoders use their own ``labels=`` loss.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from train.pretrain.mlm import IGNORE_INDEX


class MaskedLMLoss(nn.Module):
    """Wraps a ``*ForMaskedLM`` model; ``forward(input_ids, labels)`` returns the mean loss over labelled tokens.

    The wrapped model is ``self.model``, so its state dict keys gain a ``model.`` prefix.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.bert_like = hasattr(model, "bert") and hasattr(model, "cls")

    def forward(self, input_ids: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if not self.bert_like:
            return self.model(input_ids=input_ids, labels=labels).loss
        hidden = self.model.bert(input_ids=input_ids).last_hidden_state
        chosen = labels != IGNORE_INDEX
        logits = self.model.cls(hidden[chosen])  # the head runs on every rank, even with no label (ZeRO-3)
        return F.cross_entropy(logits.float(), labels[chosen])


def unwrap_state_dict(state: dict) -> dict:
    """The wrapped model's own state dict keys (``model.x`` -> ``x``)."""
    return {key.removeprefix("model."): value for key, value in state.items()}
