"""A BERT sequence classifier that mean-pools token states instead of using the [CLS] pooler.

Sentence-embedding encoders such as all-MiniLM-L6-v2 were trained with mean pooling;
their [CLS] pooler was never tuned for sentences, so a head on it learns slowly.
The weights are a standard ``BertForSequenceClassification`` checkpoint (the pooler
is kept but unused), so ``save_pretrained``/``from_pretrained`` work unchanged.
"""
from __future__ import annotations

import torch
from torch import nn
from transformers import BertForSequenceClassification
from transformers.modeling_outputs import SequenceClassifierOutput


class MeanPoolBertForSequenceClassification(BertForSequenceClassification):
    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, labels=None, **kwargs):
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        hidden = self.bert(input_ids=input_ids, attention_mask=attention_mask,
                           token_type_ids=token_type_ids).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)
        logits = self.classifier(self.dropout(pooled))
        loss = nn.functional.cross_entropy(logits, labels) if labels is not None else None
        return SequenceClassifierOutput(loss=loss, logits=logits)
